"""Seeking Neural Nuggets (Zhong et al., ICLR 2024): parametric knowledge transfer by extraction.

1. Sensitivity ``|theta * grad|`` of the source on seed samples (:mod:`pkt_core.peers.sensitivity`).
2. Layer selection: the L_tgt most sensitive source layers, kept in depth order; the i-th kept
   source layer feeds target layer i.
3. For every weight matrix of those layers, the contiguous sub-block of the target matrix's shape
   with the largest summed sensitivity (:mod:`pkt_core.peers.subblock`).
4. Truncated SVD of each sub-block to rank r: ``B = U_r S_r``, ``A = V_r^T``. LoRA on the target
   is initialised with them, so the starting model is the target plus the extracted low-rank
   knowledge (``W_tgt + B A``).
5. LoRA fine-tuning on the task's samples (the paper: r = 16, alpha = 16, dropout 0.05, LR 3e-4,
   3 epochs). Here the samples are the run's alignment samples, as for every method.

Where the paper leaves room, the choices made (and recorded in the manifest): the sensitivity
loss is the answer cross-entropy (the project's task loss, as in SemAlign's attribution); a
layer's score is the summed sensitivity of all its parameters; LoRA wraps every linear weight
of every target block (the matrices that receive extracted knowledge); biases and norms are not
transferred. The run's weight delta is the trained LoRA factors, which include the injected
knowledge (the delta is relative to the untouched target).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from pkt_core.errors import PktError
from pkt_core.models.loading import LoadedModel
from pkt_core.peers.sensitivity import (
    decoder_parameter_sensitivity,
    layer_sensitivity,
    select_layers,
)
from pkt_core.peers.subblock import SubBlock, max_sum_subblock
from pkt_core.peers.sublayers import block_layout, find_submodule, replace_submodule
from pkt_core.peers.training import StepCallback, answer_ce, train_minibatches
from pkt_core.transfer.alignment_data import TokenisedSamples
from pkt_core.transfer.config import TransferConfig
from pkt_core.transfer.frontier import apply_weight_delta, block_parameter_prefix
from pkt_core.transfer.lora import LoRALinear
from pkt_core.transfer.run_skeleton import (
    LORA_DELTA_FORMAT,
    RunContext,
    TrainedTransfer,
    read_table,
)

PAPER_VERSION = "Zhong et al. ICLR 2024"
LAYERS_TABLE = "seeking_layers.parquet"
MATRICES_TABLE = "seeking_extraction.parquet"


class SeekingError(PktError):
    """The pair does not fit Seeking Neural Nuggets (a shallower or narrower source)."""


@dataclass(frozen=True)
class ExtractedMatrix:
    """One target weight matrix's share of the extracted knowledge, as LoRA factors."""

    target_layer: int
    source_layer: int
    matrix: str  # path inside the block, e.g. "self_attn.q_proj"
    block: SubBlock
    scaled_b: torch.Tensor  # rows x r: U_r S_r
    a: torch.Tensor  # r x cols: V_r^T
    energy_kept: float  # share of the sub-block's squared singular values in the top r

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])

    def record(self) -> dict:
        return {"target_layer": self.target_layer, "source_layer": self.source_layer, "matrix": self.matrix,
                **self.block.record(), "svd_rank": self.rank, "svd_energy_kept": self.energy_kept}


def low_rank_factors(block: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Truncated SVD in float64: ``(U_r S_r, V_r^T, energy kept)``; r is capped by the block's shape."""
    u, s, vh = torch.linalg.svd(block.detach().to("cpu", torch.float64), full_matrices=False)
    r = min(rank, s.numel())
    energy = float(s[:r].square().sum() / s.square().sum().clamp(min=1e-300))
    # float32 whatever the source stores: the factors become trained float32 LoRA weights.
    return (u[:, :r] * s[:r]).to(torch.float32), vh[:r].to(torch.float32), energy


def check_pair(source: LoadedModel, target: LoadedModel, config=None) -> None:
    """Refuse a pair without known block layouts, a shallower source, or a narrower source matrix."""
    num_target = target.adapter.num_layers
    if source.adapter.num_layers < num_target:
        raise SeekingError(f"Seeking Neural Nuggets keeps the {num_target} most sensitive source layers, but the "
                           f"source has only {source.adapter.num_layers}")
    source_layout, target_layout = block_layout(source.adapter), block_layout(target.adapter)
    if source_layout.weight_matrices != target_layout.weight_matrices:
        raise SeekingError("source and target blocks hold different weight matrices; Seeking Neural Nuggets "
                           "pairs them by name")
    source_block, target_block = source.adapter.decoder_layers()[0], target.adapter.decoder_layers()[0]
    for path in target_layout.weight_matrices:
        source_shape = tuple(find_submodule(source_block, path).weight.shape)
        target_shape = tuple(find_submodule(target_block, path).weight.shape)
        if any(t > s for t, s in zip(target_shape, source_shape)):
            raise SeekingError(f"{path}: the target matrix {target_shape} is larger than the source's {source_shape} "
                               "in some dimension; no sub-block of the target's shape exists")


def extract_knowledge(
    source: LoadedModel, target: LoadedModel, sensitivity: dict[str, torch.Tensor], rank: int
) -> tuple[np.ndarray, list[int], list[ExtractedMatrix]]:
    """Layer scores, the selected source layers (in order), and every matrix's sub-block factors."""
    check_pair(source, target)
    target_layout = block_layout(target.adapter)
    num_target = target.adapter.num_layers
    scores = layer_sensitivity(source, sensitivity)
    selected = select_layers(scores, num_target)
    source_blocks, target_blocks = source.adapter.decoder_layers(), target.adapter.decoder_layers()
    extracted = []
    for target_layer, source_layer in enumerate(selected):
        for path in target_layout.weight_matrices:
            source_weight = find_submodule(source_blocks[source_layer], path).weight
            target_weight = find_submodule(target_blocks[target_layer], path).weight
            name = f"{block_parameter_prefix(source, source_layer)}{path}.weight"
            window = max_sum_subblock(sensitivity[name].double().cpu().numpy(), tuple(target_weight.shape))
            rows, cols = window.slices()
            scaled_b, a, energy = low_rank_factors(source_weight.detach()[rows, cols], rank)
            extracted.append(ExtractedMatrix(target_layer, source_layer, path, window,
                                             scaled_b, a, energy))
    return scores, selected, extracted


def inject_extracted_knowledge(target: LoadedModel, extracted: list[ExtractedMatrix],
                               dropout: float) -> dict[str, LoRALinear]:
    """Wrap every extracted target matrix in LoRA of the factors' rank (alpha = rank, as the
    paper's r = alpha = 16) starting from the extracted factors; returns the wrappers by weight name."""
    blocks = target.adapter.decoder_layers()
    wrappers: dict[str, LoRALinear] = {}
    for item in extracted:
        base = find_submodule(blocks[item.target_layer], item.matrix)
        wrapper = LoRALinear(base, rank=item.rank, alpha=float(item.rank), dropout=dropout)
        wrapper.initialise_from(item.scaled_b.to(base.weight.device), item.a.to(base.weight.device))
        replace_submodule(blocks[item.target_layer], item.matrix, wrapper)
        wrappers[f"{block_parameter_prefix(target, item.target_layer)}{item.matrix}.weight"] = wrapper
    return wrappers


def remove_lora(target: LoadedModel, wrappers: dict[str, LoRALinear]) -> dict[str, torch.Tensor]:
    """Put the untouched linear layers back; returns the factors as a run's weight delta."""
    factors: dict[str, torch.Tensor] = {}
    blocks = target.adapter.decoder_layers()
    prefix = target.adapter.paths.decoder_layers.split("|")[0] + "."
    for name, wrapper in wrappers.items():
        scaled_b, a = wrapper.scaled_factors()
        factors[f"{name}.lora_b"], factors[f"{name}.lora_a"] = scaled_b, a
        layer, _, path = name[len(prefix):].partition(".")
        replace_submodule(blocks[int(layer)], path.removesuffix(".weight"), wrapper.base)
    return factors


def _factor_checkpoint(extracted: list[ExtractedMatrix]) -> dict[str, torch.Tensor]:
    tensors = {}
    for index, item in enumerate(extracted):
        tensors[f"{index}.scaled_b"], tensors[f"{index}.a"] = item.scaled_b, item.a
    return tensors


def fine_tune_extracted(target: LoadedModel, extracted: list[ExtractedMatrix], samples: TokenisedSamples,
                        config: TransferConfig, on_step: StepCallback | None = None,
                        should_cancel: Callable[[], bool] | None = None) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Step 5: LoRA fine-tuning of the target from the extracted factors; returns the loss records and
    the trained factors (the run's delta), which are left applied to the target's weights."""
    model = target.model
    requires = {name: p.requires_grad for name, p in model.named_parameters()}
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    torch.manual_seed(config.seed)  # the LoRA dropout masks
    wrappers = inject_extracted_knowledge(target, extracted, config.seeking_lora_dropout)
    model.train(False)  # the base model's own dropout stays off, as in SemAlign's stages
    for wrapper in wrappers.values():
        wrapper.train(True)  # LoRA dropout, as in the paper
    try:
        records = train_minibatches(
            samples, [p for w in wrappers.values() for p in (w.lora_a, w.lora_b)],
            lambda batch: {"answer_ce": answer_ce(target, batch)}, config.losses, config.learning_rate,
            config.batch_size, config.epochs, config.seed, "seeking", on_step, should_cancel,
            precision=target.precision)
    finally:
        factors = remove_lora(target, wrappers)
        model.train(False)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(requires[name])
    # The same arithmetic as re-applying the saved delta to an untouched target: exact.
    apply_weight_delta(model, factors)
    return records, factors


def train_seeking(context: RunContext) -> TrainedTransfer:
    config, source, target, writer, stages = (context.config, context.source, context.target,
                                              context.writer, context.stages)
    seeds = context.alignment.select(list(range(min(config.seeking_seed_samples, len(context.alignment)))))

    if stages.done("extraction"):
        saved = writer.checkpoint("extraction")
        rows = read_table(writer.path(MATRICES_TABLE))
        extracted = [ExtractedMatrix(r["target_layer"], r["source_layer"], r["matrix"],
                                     SubBlock(r["row_start"], r["col_start"], r["rows"], r["cols"], r["block_score"],
                                              r["matrix_score"]),
                                     saved[f"{i}.scaled_b"], saved[f"{i}.a"], r["svd_energy_kept"])
                     for i, r in enumerate(rows)]
        layer_rows = read_table(writer.path(LAYERS_TABLE))
        selected = [r["source_layer"] for r in layer_rows if r["selected"]]
    else:
        def extract():
            sensitivity = decoder_parameter_sensitivity(source, seeds, context.should_cancel)
            return extract_knowledge(source, target, sensitivity, config.lora_rank)

        scores, selected, extracted = stages.run("extraction", extract, lambda result: _factor_checkpoint(result[2]))
        writer.save_table(LAYERS_TABLE, [
            {"source_layer": layer, "sensitivity": float(score), "selected": layer in selected,
             "target_layer": selected.index(layer) if layer in selected else -1}
            for layer, score in enumerate(scores)])
        writer.save_table(MATRICES_TABLE, [item.record() for item in extracted])

    trainable = sum(item.rank * (item.scaled_b.shape[0] + item.a.shape[1]) for item in extracted)
    steps_per_epoch = -(-len(context.alignment) // config.batch_size)
    context.set_method_details({
        "paper_version": PAPER_VERSION,
        "seed_samples": len(seeds),
        "sensitivity": "sum over seed samples of |theta * grad| of the answer cross-entropy, taken per sample",
        "layer_score": "summed sensitivity of all the layer's parameters",
        "selected_source_layers": list(selected),
        "layer_pairs": [{"target_layer": k, "source_layer": l} for k, l in enumerate(selected)],
        "sub_block": "contiguous window of the target matrix's shape with the largest summed sensitivity",
        "svd_rank": config.lora_rank,  # capped per matrix by its shape (the matrices table has each rank)
        "lora": {"rank": config.lora_rank, "alpha": config.lora_rank, "dropout": config.seeking_lora_dropout,
                 "matrices": sorted({item.matrix for item in extracted}), "init": "B = U_r S_r, A = V_r^T"},
        "matrices": len(extracted),
        "epochs": config.epochs,
        "optimizer_steps": steps_per_epoch * config.epochs,
        "tables": {"layers": LAYERS_TABLE, "matrices": MATRICES_TABLE},
    })

    if stages.done("training"):
        delta = writer.checkpoint("training")
        apply_weight_delta(target.model, delta)
        return TrainedTransfer(delta, LORA_DELTA_FORMAT, trainable)

    def fine_tune():
        return fine_tune_extracted(target, extracted, context.alignment, config, context.on_progress,
                                   context.should_cancel)

    records, delta = stages.run("training", fine_tune, lambda result: result[1])
    context.save_loss_rows(context.loss_rows() + records)
    return TrainedTransfer(delta, LORA_DELTA_FORMAT, trainable)
