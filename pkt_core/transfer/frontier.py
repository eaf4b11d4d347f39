"""Frontier schedule (v2): one stage per target layer, shallow to deep; at each stage only the
current (frontier) layer is trainable, earlier layers keep what they learned, later ones are
untouched.

A stage runs ``steps`` optimizer updates, each over all alignment samples (gradient accumulation
over minibatches). When no loss needs the final logits, the forward pass stops right after the
frontier layer, so a stage costs a partial forward and a one-layer backward.

Precision (:mod:`pkt_core.models.precision`): the model's forward runs under the target's policy
(bf16 autocast, say); the frontier block trains in float32 master weights whatever the model
stores (a bf16-stored block is held in float32 for its stage), the optimizer updates float32
tensors, fp16 gets a gradient scaler, and every step checks its loss and gradients are finite.
The stage's delta is float32 and is merged by one rounding (:func:`apply_weight_delta`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from pkt_core.errors import PktError
from pkt_core.models.loading import LoadedModel
from pkt_core.models.placement import on_device_of
from pkt_core.models.precision import (
    check_finite_step,
    frozen_linears_in_compute_dtype,
    grad_scaler,
    merge_delta,
    model_device_type,
)
from pkt_core.transfer import losses as loss_functions
from pkt_core.transfer.alignment_data import TokenisedSamples
from pkt_core.transfer.config import TransferConfig
from pkt_core.transfer.forward import (
    FrontierOutputs,
    answer_loss,
    forward_to_frontier,
    frontier_site_states,
    layer_token_mask,
)
from pkt_core.transfer.frontier_replay import FrontierReplay
from pkt_core.transfer.lora import (
    DEFAULT_LORA_TARGETS,
    LoRALinear,
    attach_lora,
    detach_lora,
)
from pkt_core.transfer.stages import TransferCancelled, frontier_layers
from pkt_core.transfer.supervision import Supervision

if TYPE_CHECKING:
    from pkt_core.transfer.run_skeleton import RunContext

PAPER_VERSION = "v2-reconstructed"
StepCallback = Callable[[str, int, float], None]


def _answer_row_offsets(samples: TokenisedSamples) -> torch.Tensor:
    counts = samples.prediction_mask().sum(dim=1)
    return torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])


def stage_losses(
    loaded: LoadedModel,
    batch: TokenisedSamples,
    indices: list[int],
    layer: int,
    supervision: Supervision,
    config: TransferConfig,
    answer_offsets: torch.Tensor,
    outputs: FrontierOutputs | None = None,
) -> dict[str, torch.Tensor]:
    """Every configured loss term for one minibatch at the frontier ``layer`` (unweighted), from
    ``outputs`` (a :class:`FrontierReplay`'s) or from a forward of the model up to the layer."""
    if outputs is None:
        outputs = forward_to_frontier(loaded, batch, layer, config.needs_final_logits())
    if supervision.level == "sequence":
        from pkt_core.transfer.sequence_alignment import sequence_stage_losses

        return sequence_stage_losses(loaded, outputs, batch, indices, layer, supervision, config)
    device = outputs.resid_post.device
    index = torch.as_tensor(indices)
    length = batch.input_ids.shape[1]
    mask = layer_token_mask(batch, config.drop_first_position).to(device)
    prediction = batch.prediction_mask().to(device)

    def supervised(site: str) -> torch.Tensor:
        return supervision.targets[(layer, site)][index, :length].to(device, torch.float32)

    def site_states(site: str) -> torch.Tensor:
        # The final norm may sit on another GPU than the frontier layer (a sharded model): bring
        # its output back to the layer's device, where the masks and the supervision are.
        return on_device_of(frontier_site_states(loaded, outputs, site, supervision.final_norm_applied),
                            outputs.resid_post)

    terms: dict[str, torch.Tensor] = {}
    weights = {name: weight for name, weight in config.losses.items() if weight}
    if "layer_cosine" in weights:
        site = config.layer_site
        terms["layer_cosine"] = loss_functions.layer_cosine_loss(site_states(site)[mask], supervised(site)[mask])
    if "relation" in weights:
        contributions = site_states("contribution")
        target_blocks = [contributions[row][mask[row]] for row in range(len(indices))]
        source_blocks = [supervised("contribution")[row][mask[row]] for row in range(len(indices))]
        terms["relation"] = loss_functions.relation_geometry_loss(target_blocks, source_blocks)
    if "fisher_logit" in weights:
        head = loaded.adapter.lm_head().weight
        states = site_states("block_output")[prediction]
        terms["fisher_logit"] = loss_functions.fisher_logit_loss(states, supervised("block_output")[prediction], head)
    if "output_cosine" in weights:
        logits = outputs.answer_logits.float()
        answers = batch.next_tokens()[batch.prediction_mask()].to(logits.device)
        terms["output_cosine"] = loss_functions.output_cosine_loss(logits, answers)
    if "answer_ce" in weights:
        terms["answer_ce"] = answer_loss(outputs.answer_logits, batch)
    if "output_kl" in weights:
        logits = outputs.answer_logits.float()
        rows = torch.cat([torch.arange(answer_offsets[i], answer_offsets[i + 1]) for i in indices])
        source = supervision.source_log_probs[rows].to(logits.device)
        terms["output_kl"] = loss_functions.output_kl_loss(logits, source)
    return terms


def block_parameter_prefix(loaded: LoadedModel, layer: int) -> str:
    return f"{loaded.adapter.paths.decoder_layers.split('|')[0]}.{layer}."


def _hold_in_float32(block: torch.nn.Module) -> dict[str, torch.dtype]:
    """Convert a block's low-precision parameters to float32 in place (the stage's master
    weights); returns the dtypes to restore. A float32 block is left as it is."""
    stored = {name: p.dtype for name, p in block.named_parameters()}
    with torch.no_grad():
        for parameter in block.parameters():
            if parameter.dtype != torch.float32:
                parameter.data = parameter.data.to(torch.float32)
    return stored


def _restore_dtypes(block: torch.nn.Module, stored: dict[str, torch.dtype], values: dict[str, torch.Tensor]) -> None:
    """Put every block parameter back to ``values`` (exactly representable: they came from the
    stored dtype) in its stored dtype."""
    with torch.no_grad():
        for name, parameter in block.named_parameters():
            parameter.data = values[name].to(parameter.device, stored[name]).clone()


def train_stage(
    loaded: LoadedModel,
    layer: int,
    samples: TokenisedSamples,
    supervision: Supervision,
    config: TransferConfig,
    on_step: StepCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
    replay: FrontierReplay | None = None,
) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Train the frontier ``layer``; returns per-step loss records and the weight delta of the
    stage (float32 deltas of changed tensors, or the float32 LoRA factors when ``trainable == 'lora'``).

    With a ``replay`` standing at ``layer`` (built on these ``samples`` and ``config.batch_size``),
    each minibatch starts from its recorded input of the layer instead of a forward of the prefix.

    Raises :class:`pkt_core.models.precision.NonFiniteStepError` on a NaN or infinite step."""
    model = loaded.model
    block = loaded.adapter.decoder_layers()[layer]
    prefix = block_parameter_prefix(loaded, layer)
    stored_dtypes = _hold_in_float32(block)
    before = {name: tensor.detach().clone() for name, tensor in block.named_parameters()}
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    torch.manual_seed(config.seed * 1009 + layer)
    if config.trainable == "lora":
        wrappers = attach_lora(block, rank=config.lora_rank, alpha=float(config.lora_rank))
        trainable = [p for w in wrappers for p in (w.lora_a, w.lora_b)]
    else:
        trainable = list(block.parameters())
    for parameter in trainable:
        parameter.requires_grad_(True)
    frozen = contextlib.ExitStack()
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=0.0)
    scaler = grad_scaler(loaded.precision, model_device_type(model))
    offsets = _answer_row_offsets(samples)
    order = list(range(len(samples)))
    records: list[dict] = []
    model.train(False)  # no dropout: alignment is deterministic
    try:
        # The other blocks are frozen for the stage: cast once, not at every forward (same results).
        frozen.enter_context(frozen_linears_in_compute_dtype(
            [b for b in loaded.adapter.decoder_layers() if b is not block], loaded.precision))
        for step in range(config.steps_per_stage):
            if should_cancel is not None and should_cancel():
                raise TransferCancelled(f"cancelled during stage {layer}, step {step}")
            started = time.monotonic()
            optimizer.zero_grad(set_to_none=True)
            totals: dict[str, torch.Tensor] = {}
            for start in range(0, len(order), config.batch_size):
                indices = order[start : start + config.batch_size]
                batch = samples.select(indices)
                outputs = (None if replay is None
                           else replay.outputs(start // config.batch_size, layer, config.needs_final_logits()))
                terms = stage_losses(loaded, batch, indices, layer, supervision, config, offsets, outputs)
                share = len(indices) / len(order)
                # Terms of a sharded model may sit on different GPUs: sum them on the first one's.
                first = next(iter(terms.values()))
                loss = sum(config.losses[name] * on_device_of(value.to(torch.float32), first)
                           for name, value in terms.items()) * share
                scaler.scale(loss).backward()
                for name, value in terms.items():
                    # Kept on the device: the host reads the totals once per step, not per batch.
                    piece = value.detach().to(torch.float32) * share
                    totals[name] = totals[name] + piece if name in totals else piece
            totals = {name: value.cpu() for name, value in totals.items()}
            total = sum(config.losses[name] * value for name, value in totals.items())
            check_finite_step(total, trainable, f"stage {layer}", step, scaler)
            scaler.step(optimizer)
            scaler.update()
            total_value = float(total)
            records.append({"stage_layer": layer, "step": step, "loss": total_value,
                            **{f"loss_{name}": float(value) for name, value in totals.items()},
                            "seconds": round(time.monotonic() - started, 3)})
            if on_step is not None:
                on_step(f"stage {layer}", step, total_value)
    finally:
        frozen.close()
        lora_factors: dict[str, torch.Tensor] = {}
        if config.trainable == "lora":
            for name, module in block.named_modules():
                if isinstance(module, LoRALinear):
                    scaled_b, a = module.scaled_factors()
                    lora_factors[f"{prefix}{name}.weight.lora_b"] = scaled_b
                    lora_factors[f"{prefix}{name}.weight.lora_a"] = a
            detach_lora(block)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
    if config.trainable == "lora":
        _restore_dtypes(block, stored_dtypes, before)
        # Merge with the arithmetic of apply_weight_delta, so that the saved factors re-applied
        # to the untouched target give exactly these weights.
        apply_weight_delta(model, lora_factors)
        return records, lora_factors
    after = dict(block.named_parameters())
    delta = {f"{prefix}{name}": (after[name].detach() - value).clone()
             for name, value in before.items() if not torch.equal(after[name].detach(), value)}
    # Keep the weights a replay of the saved delta gives (``before + (after - before)`` may differ
    # from ``after`` in the last bit, and a bf16-stored block is rounded once), so a run's delta
    # rebuilds its target exactly.
    _restore_dtypes(block, stored_dtypes, before)
    apply_weight_delta(model, delta)
    return records, delta


def run_frontier_schedule(context: "RunContext", supervision: Supervision) -> dict[str, torch.Tensor]:
    """Train every configured target layer, shallow to deep, as one resumable stage each.

    Shared by SemAlign and the controls (kd, finetune), which differ only in ``config.losses``
    and the ``supervision`` they bring. A finished stage of a resumed run is replayed from its
    checkpointed delta. Returns the weight delta of all stages together.

    Block-trained stages run from a :class:`FrontierReplay` (the prefix is computed once, not at
    every step of every stage; same results); LoRA stages run the plain forward.
    """
    config, target, stages, writer = context.config, context.target, context.stages, context.writer
    delta: dict[str, torch.Tensor] = {}
    loss_rows = context.loss_rows()
    replays: list[FrontierReplay] = []

    def run_stage(k: int) -> tuple[list[dict], dict[str, torch.Tensor]]:
        # Recording the block inputs (the first stage) and carrying them to block k count as the stage's time.
        replay = None
        if config.trainable == "block":
            if not replays:
                replays.append(FrontierReplay(target, context.alignment, config.batch_size, k))
            replay = replays[0]
            replay.advance_to(k)
        return train_stage(target, k, context.alignment, supervision, config, context.on_progress,
                           context.should_cancel, replay)

    for k in sorted(frontier_layers(target, config)):
        name = f"stage-{k:03d}"
        if stages.done(name):
            stage_delta = writer.checkpoint(name)
            apply_weight_delta(target.model, stage_delta)
            delta.update(stage_delta)
            continue
        records, stage_delta = stages.run(name, lambda k=k: run_stage(k), lambda result: result[1])
        delta.update(stage_delta)
        loss_rows.extend(records)
        context.save_loss_rows(loss_rows)
    return delta




def frontier_trainable_parameters(target: LoadedModel, config: TransferConfig) -> int:
    """Parameters trainable at any one stage (the largest frontier layer)."""
    layers = target.adapter.decoder_layers()
    chosen = frontier_layers(target, config)
    if config.trainable == "lora":
        total = 0
        for name, module in layers[0].named_modules():
            if name.split(".")[-1] in DEFAULT_LORA_TARGETS and isinstance(module, torch.nn.Linear):
                total += config.lora_rank * (module.in_features + module.out_features)
        return total
    return max(sum(p.numel() for p in layers[k].parameters()) for k in chosen)


def apply_weight_delta(model: torch.nn.Module, delta: dict[str, torch.Tensor]) -> None:
    """Add a saved delta (full tensors, or LoRA factor pairs ``*.lora_b`` / ``*.lora_a``) to ``model``,
    forming each sum in float32 and rounding it once to the weight's dtype."""
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in delta.items():
            if key.endswith(".lora_a"):
                continue
            if key.endswith(".lora_b"):
                name = key[: -len(".lora_b")]
                update = value.to(torch.float32) @ delta[name + ".lora_a"].to(torch.float32)
            else:
                name, update = key, value
            if name not in parameters:
                raise PktError(f"the weight delta names {name!r}, which this model does not have: wrong target model?")
            # One rounding of the float32 sum: a low-precision weight keeps updates smaller than its
            # own step instead of losing them to a rounded update added to a rounded weight.
            merge_delta(parameters[name], update)
