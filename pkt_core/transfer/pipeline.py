"""Transfer runs: the one entry point, and SemAlign's trainer.

:func:`run_transfer` is the one entry point (the CLI and the app call it) for every method:
SemAlign and its peers (``config.method``: semalign, seeking, laten, kd, finetune). The shared
run (pair, data, manifest, probes, CKA before/after, evaluation, weight delta, finish / fail /
resume) is :mod:`pkt_core.transfer.run_skeleton`; a method brings its trainer (and, optionally, a
check of the pair and a preparation step: :class:`~pkt_core.transfer.run_skeleton.TransferMethod`). It reports
progress as (stage, step, loss) and checks ``should_cancel`` between steps. Every step writes its
artefact and is recorded as finished, so ``resume=True`` continues from the last finished stage
of an interrupted run.

SemAlign's trainer: semantic bases and the cross-model map -> gradient x activation attribution
on the source -> every layer map -> source supervision mapped into the target -> frontier stages.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pkt_core.models.loading import LoadedModel
from pkt_core.models.vocabulary import compare_vocabularies
from pkt_core.runs.reader import Run
from pkt_core.runs.schema import CHECKPOINTS_FOLDER, CROSS_MAP_FILE, ChosenMapping, LayerMap, LayerMaps
from pkt_core.runs.writer import RunWriter
from pkt_core.transfer import semantic_bases
from pkt_core.transfer.alignment_data import AlignmentSample, TokenisedSamples
from pkt_core.transfer.attribution import LayerAttribution, layer_gradient_x_activation
from pkt_core.transfer.config import TransferConfig
from pkt_core.transfer.frontier import apply_weight_delta, frontier_trainable_parameters, run_frontier_schedule
from pkt_core.transfer.layer_mapping import (
    LayerMapping,
    attribution_monotone_map,
    cka_monotone_map,
    critical_layers_from_attribution,
    depth_map,
    interpolated_map,
    relocate_critical_layers,
)
from pkt_core.transfer.model_cache import COMPUTED, HIT, cached_tensors, inputs_digest
from pkt_core.transfer.run_skeleton import (  # noqa: F401  (re-exported: the pipeline's public names)
    CKA_MAX_ROWS,
    FULL_DELTA_FORMAT,
    LORA_DELTA_FORMAT,
    ProgressCallback,
    RunContext,
    RunStages,
    TrainedTransfer,
    TransferMethod,
    default_run_folder,
    probe_rows,
    probe_token_mask,
    read_table,
    record_reuse,
    run_with_skeleton,
    transferred_view,
)
from pkt_core.transfer.sequence_alignment import (
    SEQUENCE_LEVEL,
    build_sequence_supervision,
)
from pkt_core.transfer.stages import frontier_layers
from pkt_core.transfer.supervision import (
    LayerStateBuffers,
    LayerStates,
    Supervision,
    _final_norm_cpu,
    build_supervision,
    collect_layer_states,
)

# Attribution keeps every layer's activations of the source for the backward pass: small
# batches keep that peak near a forward pass (16 x 256 tokens through a 1.5B model in one
# batch of 8 peaked at 21.8 GB on the CPU).
ATTRIBUTION_BATCH_SIZE = 2
# Resume state of the supervision stage (removed when the run finishes, like every checkpoint).
SUPERVISION_FILE = f"{CHECKPOINTS_FOLDER}/supervision-targets.safetensors"


def method_for(name: str) -> TransferMethod:
    """A method by its config name (the peers live in :mod:`pkt_core.peers`, imported on demand)."""
    if name == "semalign":
        return TransferMethod(train=train_semalign, prepare=prepare_semalign)
    if name == "seeking":
        from pkt_core.peers import seeking

        return TransferMethod(train=seeking.train_seeking, check_pair=seeking.check_pair)
    if name == "laten":
        from pkt_core.peers import laten

        return TransferMethod(train=laten.train_laten, check_pair=laten.check_pair)
    if name in {"kd", "finetune"}:
        from pkt_core.peers.distillation import train_control

        return TransferMethod(train=train_control)
    raise ValueError(f"no transfer method {name!r}")


def run_transfer(
    config: TransferConfig,
    out_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_progress: ProgressCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
    source: LoadedModel | None = None,
    target: LoadedModel | None = None,
    samples: tuple[list[AlignmentSample], list[AlignmentSample], str] | None = None,
) -> Path:
    """Run the configured method (``config.method``) and return the finished run folder."""
    return run_with_skeleton(config, method_for(config.method), out_dir=out_dir, resume=resume,
                             overwrite=overwrite, on_progress=on_progress, should_cancel=should_cancel,
                             source=source, target=target, samples=samples)


def _sites_for(config: TransferConfig) -> set[str]:
    sites = set()
    if config.losses.get("layer_cosine"):
        sites.add(config.layer_site)
    if config.losses.get("relation"):
        sites.add("contribution")
    if config.losses.get("fisher_logit"):
        sites.add("block_output")
    return sites or {"block_output"}


def shared_token_pairs(source: LoadedModel, target: LoadedModel) -> torch.Tensor | None:
    """(k x 2) (source id, target id) of the strings both vocabularies hold; None for one vocabulary."""
    vocabulary = compare_vocabularies(source.tokenizer, target.tokenizer)
    return None if vocabulary.identical else torch.from_numpy(vocabulary.shared_pairs)


def prepare_semalign(stages: RunStages, writer: RunWriter, source: LoadedModel, target: LoadedModel) -> None:
    """Semantic bases and the cross-model map (bases cached on disk per model fingerprint and
    token subset: every token for one vocabulary, the index-aligned shared strings for two)."""
    pairs = shared_token_pairs(source, target)
    source_ids, target_ids = (None, None) if pairs is None else (pairs[:, 0], pairs[:, 1])
    writer.manifest.semantic_bases = {"columns": "every token" if pairs is None
                                      else f"{len(pairs)} shared token strings (index-aligned)"}

    def bases() -> torch.Tensor:
        cross_map, status = semantic_bases.pair_cross_model_map(target, source, target_ids, source_ids)
        record_reuse(writer, "cross-model map", status)
        return cross_map

    cross_map = stages.run("bases", bases, lambda m: {"cross_map": m})
    writer.save_tensors(CROSS_MAP_FILE, {"cross_map": cross_map})


def source_pass_states(source: LoadedModel, samples: TokenisedSamples, layers: list[int], sites: set[str],
                       with_answer_log_probs: bool) -> LayerStates:
    """The source's states for the supervision when the attribution's pass did not keep them (a resumed
    run, an attribution read from the cache): in the same batches as the attribution's
    (ATTRIBUTION_BATCH_SIZE samples, trimmed to their longest), so the numbers are the ones that pass
    gives."""
    return collect_layer_states(source, samples, layers, sites, ATTRIBUTION_BATCH_SIZE, with_answer_log_probs,
                                trim_batches=True)


def cached_attribution(source: LoadedModel, samples: TokenisedSamples, states: LayerStateBuffers | None
                       ) -> tuple[LayerAttribution, str]:
    """Gradient x activation on the source, read from the per-model cache when this source (fingerprint and
    precision) has scored these samples in these batches before; ``states`` is filled only when it is
    computed here."""
    key = f"{source.fingerprint}-{inputs_digest(samples.input_ids, samples.attention_mask, samples.answer_mask, ATTRIBUTION_BATCH_SIZE)}"

    def compute() -> dict[str, torch.Tensor]:
        result = layer_gradient_x_activation(source, samples, ATTRIBUTION_BATCH_SIZE, states)
        return {"abs": torch.from_numpy(result.abs_scores), "signed": torch.from_numpy(result.signed_scores)}

    tensors, status = cached_tensors("attribution", key, compute)
    return LayerAttribution(tensors["abs"].numpy(), tensors["signed"].numpy(), len(samples)), status


def train_semalign(context: RunContext) -> TrainedTransfer:
    config, source, target = context.config, context.source, context.target
    writer, stages, tokenised = context.writer, context.stages, context.alignment
    num_target, num_source = target.adapter.num_layers, source.adapter.num_layers
    target_layers = frontier_layers(target, config)
    cross_map = writer.load_tensors(CROSS_MAP_FILE)["cross_map"]

    sites = _sites_for(config)
    answer_log_probs = bool(config.losses.get("output_kl"))  # the source's, for the output KL
    # The attribution's forward over the alignment samples is the source pass the supervision needs:
    # when it runs here, it keeps every source layer's states for it (the map, still to be chosen,
    # says which are used).
    shared: LayerStateBuffers | None = None
    if stages.done("attribution"):
        table = read_table(writer.path("attribution.parquet"))
        attribution = LayerAttribution(np.array([r["abs"] for r in table]), np.array([r["signed"] for r in table]), len(tokenised))
    else:
        if not stages.done("supervision"):
            shared = LayerStateBuffers(list(range(num_source)), sites, context.source_samples.input_ids.shape[1],
                                       with_answer_log_probs=answer_log_probs)
        attribution, status = stages.run("attribution", lambda: cached_attribution(source, context.source_samples, shared))
        record_reuse(writer, "attribution", status)
        if status == HIT:
            shared = None
        writer.save_table("attribution.parquet", attribution.table())

    mappings = _all_mappings(config, attribution, context.cka_before, num_source, num_target)
    chosen = mappings[config.mapping]
    writer.save_layer_maps(LayerMaps(chosen=config.mapping,
                                     mappings={n: LayerMap.model_validate(m.to_record()) for n, m in mappings.items()}))
    writer.manifest.mapping = ChosenMapping(chosen=config.mapping, paper_version=chosen.paper_version,
                                            table=chosen.table(), notes=list(chosen.notes))
    writer.write_manifest()

    if stages.done("supervision"):
        supervision = Supervision.from_tensors(writer.load_tensors(SUPERVISION_FILE), config.apply_final_norm)
    else:
        needed = sorted({layer for k in target_layers for layer in chosen.sources_of(k)[0]})

        def supervise():
            if shared is not None:
                source_states = shared.result(needed)
                record_reuse(writer, "supervision source states", "attribution pass")
            else:
                source_states = source_pass_states(source, context.source_samples, needed, sites, answer_log_probs)
                record_reuse(writer, "supervision source states", COMPUTED)
            if context.alignment_level == SEQUENCE_LEVEL:
                return build_sequence_supervision(
                    source, target, context.source_samples, tokenised, chosen, cross_map, sites, target_layers,
                    config.apply_final_norm, _final_norm_cpu(source), _final_norm_cpu(target), config.batch_size,
                    config.drop_first_position, shared_token_pairs(source, target),
                    with_anchor_log_probs=answer_log_probs,
                    with_anchor_states=bool(config.losses.get("fisher_logit")), source_states=source_states)
            before = collect_layer_states(target, tokenised, target_layers, sites, config.batch_size)
            return build_supervision(source, before, tokenised, chosen, cross_map, sites, target_layers,
                                     config.apply_final_norm, _final_norm_cpu(target), config.batch_size,
                                     with_answer_log_probs=answer_log_probs, source_states=source_states)
        supervision = stages.run("supervision", supervise)
        shared = None
        writer.save_tensors(SUPERVISION_FILE, supervision.tensors())

    # Frontier schedule: shallow to deep, one stage per target layer.
    delta = run_frontier_schedule(context, supervision)
    writer.path(SUPERVISION_FILE).unlink(missing_ok=True)
    return TrainedTransfer(delta, LORA_DELTA_FORMAT if config.trainable == "lora" else FULL_DELTA_FORMAT,
                           frontier_trainable_parameters(target, config))


def _all_mappings(config, attribution: LayerAttribution, cka_before: np.ndarray, num_source: int, num_target: int) -> dict[str, LayerMapping]:
    scores = attribution.scores(config.attribution_aggregation)
    base = depth_map(num_source, num_target)
    return {
        "depth": base,
        "depth+critical": relocate_critical_layers(base, critical_layers_from_attribution(scores, config.critical_fraction)),
        "interpolated": interpolated_map(num_source, num_target),
        "attribution-monotone": attribution_monotone_map(scores, num_target),
        "cka-monotone": cka_monotone_map(cka_before),
    }


def apply_run_to_model(model: torch.nn.Module, run: Run) -> None:
    """Turn the run's untouched target into its transferred target, in place."""
    apply_weight_delta(model, run.weight_delta())
