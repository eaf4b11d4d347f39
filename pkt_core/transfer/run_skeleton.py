"""The run every transfer method shares, so that methods differ only in how they train.

One skeleton for SemAlign and its peers (docs/method.md section 6): load the pair, draw the
alignment samples and probes, write the manifest, take probe activations and target x source
CKA before training (and, optionally, SemAlign's decomposition fidelity), score the source and
the untouched target, hand over to the method's trainer, then take probe activations and CKA
after training, score the transferred target, and write the weight delta. Every step is a
timed, resumable stage (:class:`RunStages`), so every method reports wall time and peak memory
per stage, and the manifest carries the same fields whatever the method.

A method is a :class:`TransferMethod`: a trainer ``(RunContext) -> TrainedTransfer``, and
optionally a check of the pair (before any work) and a preparation step (before the probes).
The trainer may add stages and artefacts of its own; when it returns, the target in memory
holds the transferred weights and ``TrainedTransfer.delta`` turns the untouched target into them
(:func:`pkt_core.transfer.frontier.apply_weight_delta`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pkt_core.capture.hooks import position_ids_from_mask
from pkt_core.errors import VocabularyMismatchError
from pkt_core.evaluation.specs import EvalSpec, parse_eval_specs
from pkt_core.jobs.resource_monitor import PeakMemoryMonitor
from pkt_core.models.loading import LoadedModel, load_model
from pkt_core.models.precision import precision_record
from pkt_core.models.vocabulary import compare_vocabularies
from pkt_core.paths import pkt_home
from pkt_core.runs.schema import (
    CHECKPOINTS_FOLDER,
    COMPARISON_FILE,
    EVALUATION_FOLDER,
    MANIFEST_FILE,
    PROGRESS_FILE,
    WEIGHT_DELTA_FILE,
    PairedComparison,
    RoleEvaluation,
    RunCost,
    RunManifest,
    SimilarityMatrixFile,
    TaskEvaluation,
    WeightDelta,
    read_json_record,
    record_json,
    similarity_file_name,
)
from pkt_core.runs.writer import RunWriter
from pkt_core.transfer.alignment_data import (
    AlignmentSample,
    TokenisedSamples,
    tokenise_samples,
)
from pkt_core.transfer.config import TransferConfig
from pkt_core.transfer.fidelity import fidelity_rows
from pkt_core.transfer.linear_probe_stage import linear_probe_after, linear_probe_before
from pkt_core.transfer.losses import LOSS_PAPER_VERSIONS
from pkt_core.transfer.model_cache import cached_tensors, inputs_digest
from pkt_core.transfer.probe_similarity import probe_similarity_records
from pkt_core.transfer.sequence_alignment import LEVEL_NOTE, SEQUENCE_LEVEL
from pkt_core.transfer.stages import TransferCancelled, frontier_layers
from pkt_core.transfer.supervision import collect_layer_states
from pkt_core.transfer.task_samples import load_alignment_and_probes

ProgressCallback = Callable[[str, int, float], None]
CKA_MAX_ROWS = 1024
STAGE_LOSSES = "stage_losses.parquet"
WEIGHT_DELTA = WEIGHT_DELTA_FILE
LORA_DELTA_FORMAT = "lora factors (name.lora_b @ name.lora_a)"
FULL_DELTA_FORMAT = "full tensor deltas"
METHOD_NAMES = {"semalign": "SemAlign", "seeking": "Seeking Neural Nuggets", "laten": "LaTen",
                "kd": "Logit distillation", "finetune": "Fine-tuning"}


class RunStages:
    """Runs named stages once each, timing them and recording them in the manifest."""

    def __init__(self, writer: RunWriter, on_progress: ProgressCallback | None, should_cancel) -> None:
        self.writer = writer
        self.on_progress = on_progress
        self.should_cancel = should_cancel

    def done(self, name: str) -> bool:
        return name in self.writer.finished_stages()

    def run(self, name: str, work: Callable[[], object], checkpoint: Callable[[object], dict] | None = None):
        if self.should_cancel is not None and self.should_cancel():
            raise TransferCancelled(f"cancelled before stage {name}")
        if self.on_progress:
            self.on_progress(name, 0, float("nan"))
        with PeakMemoryMonitor() as monitor:
            result = work()
        self.writer.record_stage(name, monitor.cost.to_record())
        self.writer.finish_stage(name, checkpoint(result) if checkpoint else None)
        return result


@dataclass
class RunContext:
    """What a method's trainer gets: the pair, the tokenised data and the run being written."""

    config: TransferConfig
    source: LoadedModel
    target: LoadedModel
    alignment: TokenisedSamples  # tokenised with the target's tokenizer
    probes: TokenisedSamples
    writer: RunWriter
    stages: RunStages
    on_progress: ProgressCallback | None
    should_cancel: Callable[[], bool] | None
    cka_before: np.ndarray  # target layers x source layers, linear CKA on probe tokens
    # The alignment samples in the source's own tokens (the same object as ``alignment`` when the
    # pair shares one tokenizer), and "token" or "sequence" (sequence_alignment.py).
    source_alignment: TokenisedSamples | None = None
    alignment_level: str = "token"

    @property
    def source_samples(self) -> TokenisedSamples:
        return self.source_alignment if self.source_alignment is not None else self.alignment

    def loss_rows(self) -> list[dict]:
        """Per-step loss rows written so far (a resumed run continues them)."""
        return read_table(self.writer.path(STAGE_LOSSES)) if self.writer.has(STAGE_LOSSES) else []

    def save_loss_rows(self, rows: list[dict]) -> None:
        self.writer.save_table(STAGE_LOSSES, rows)

    def set_method_details(self, details: dict) -> None:
        """The method's own record in the manifest (selected layers, shapes, sizes, ...)."""
        self.writer.manifest.method_details = details
        self.writer.write_manifest()


@dataclass
class TrainedTransfer:
    delta: dict[str, torch.Tensor]
    delta_format: str  # FULL_DELTA_FORMAT or LORA_DELTA_FORMAT
    trainable_parameters: int  # what the optimizer updates at once (per stage for the frontier methods)


Trainer = Callable[[RunContext], TrainedTransfer]
# Refuses a pair the method cannot handle (raises a PktError) before any work is done.
PairCheck = Callable[[LoadedModel, LoadedModel, TransferConfig], None]
# Work of the method's own that runs (as stages) before the probes, e.g. SemAlign's bases.
Preparation = Callable[[RunStages, RunWriter, LoadedModel, LoadedModel], None]


@dataclass(frozen=True)
class TransferMethod:
    train: Trainer
    check_pair: PairCheck | None = None
    prepare: Preparation | None = None


def default_run_folder(config: TransferConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    what = config.task or Path(config.data_file or "data").stem
    return pkt_home() / "runs" / f"{stamp}-{config.method}-{config.variant}-{what}"


def probe_token_mask(probes: TokenisedSamples) -> torch.Tensor:
    """Probe tokens that count for CKA: not padding, not position 0 (massive activations)."""
    return probes.attention_mask.bool() & (position_ids_from_mask(probes.attention_mask) > 0)


def probe_rows(
    loaded: LoadedModel, probes: TokenisedSamples, batch_size: int, subset: torch.Tensor
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Per layer: the ``subset`` of probe token rows and the per-sequence means of resid_post."""
    layers = list(range(loaded.adapter.num_layers))
    states = collect_layer_states(loaded, probes, layers, {"block_output"}, batch_size)
    keep = probe_token_mask(probes)
    tokens = {l: states.states[(l, "block_output")][keep][subset] for l in layers}
    weights = keep.float().unsqueeze(-1)
    means = {l: (states.states[(l, "block_output")] * weights).sum(1) / weights.sum(1).clamp(min=1) for l in layers}
    return tokens, means


def cached_probe_rows(loaded: LoadedModel, probes: TokenisedSamples, batch_size: int, subset: torch.Tensor
                      ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], str]:
    """:func:`probe_rows` of an untouched model, read from the per-model cache when this model (fingerprint,
    precision included) has read these probes in these batches with this row subset before; and where
    the rows came from (model_cache.HIT or COMPUTED)."""
    key = f"{loaded.fingerprint}-{inputs_digest(probes.input_ids, probes.attention_mask, subset, batch_size)}"

    def compute() -> dict[str, torch.Tensor]:
        tokens, means = probe_rows(loaded, probes, batch_size, subset)
        return {**{f"tokens.{l}": v for l, v in tokens.items()}, **{f"means.{l}": v for l, v in means.items()}}

    tensors, status = cached_tensors("probe_states", key, compute)
    layers = range(loaded.adapter.num_layers)
    return {l: tensors[f"tokens.{l}"] for l in layers}, {l: tensors[f"means.{l}"] for l in layers}, status


def record_reuse(writer: RunWriter, what: str, how: str) -> None:
    """Say in the manifest where a set-up result came from: the per-model cache, a pass it shared, or computed."""
    writer.manifest.setup_reuse[what] = how
    writer.write_manifest()


def row_subset(count: int, seed: int) -> torch.Tensor:
    if count <= CKA_MAX_ROWS:
        return torch.arange(count)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(count, generator=generator)[:CKA_MAX_ROWS].sort().values


def _save_similarity(writer: RunWriter, records: list[SimilarityMatrixFile], skipped: dict[str, str], view: str) -> None:
    """The view's matrices into the run, and the measures left out with why into the manifest."""
    for record in records:
        writer.save_similarity(record)
    if skipped:
        writer.manifest.similarity_skipped.update({f"{metric} {view}": why for metric, why in skipped.items()})
        writer.write_manifest()


def read_table(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def run_with_skeleton(
    config: TransferConfig,
    method: TransferMethod,
    out_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_progress: ProgressCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
    source: LoadedModel | None = None,
    target: LoadedModel | None = None,
    samples: tuple[list[AlignmentSample], list[AlignmentSample], str] | None = None,
) -> Path:
    """Run ``method`` inside the shared skeleton and return the finished run folder."""
    started = time.monotonic()
    folder = Path(out_dir) if out_dir is not None else default_run_folder(config)
    if source is None:
        source = load_model(config.source, dtype=config.dtype, device=config.source_device)
    if target is None:
        target = load_model(config.target, dtype=config.dtype, device=config.target_device)
    vocabulary = compare_vocabularies(source.tokenizer, target.tokenizer)
    method_name = METHOD_NAMES[config.method]
    vocabulary_mode = vocabulary.require_compatible(method_name, allow_shared_subset=config.allow_shared_subset)
    alignment_level = "token" if vocabulary_mode == "full" else SEQUENCE_LEVEL
    if alignment_level == SEQUENCE_LEVEL and config.method != "semalign":
        raise VocabularyMismatchError(
            f"{method_name} runs source and target on the same token ids and needs one tokenizer, but these "
            f"tokenizers differ ({vocabulary.shared_tokens} of {vocabulary.target_size} target tokens shared). "
            "Only SemAlign aligns across tokenizers (per sequence, over the shared tokens): use "
            "--method semalign --allow-shared-subset, or pick a pair with one tokenizer."
        )
    if method.check_pair is not None:
        method.check_pair(source, target, config)
    alignment, probes, data_description = samples or load_alignment_and_probes(
        config.task, config.data_file, config.align_samples, config.probe_samples, config.seed)
    torch.manual_seed(config.seed)
    manifest = {
        "run_id": folder.name,
        "kind": "transfer",
        "method": config.method,
        "variant": config.variant,
        "paper_version": config.paper_version,
        "pair": config.pair,
        "source": source.describe(),
        "target": target.describe(),
        "task": config.task,
        "config": config.to_record(),
        "losses": {name: {"weight": w, "paper_version": LOSS_PAPER_VERSIONS[name]} for name, w in config.losses.items()},
        "data": {"description": data_description,
                 "alignment_ids": [s.sample_id for s in alignment],
                 "probe_ids": [s.sample_id for s in probes],
                 "probe_labels": [s.label for s in probes]},
        "seeds": {"seed": config.seed},
        "vocabulary": vocabulary.summary(),
        "alignment_level": {"level": alignment_level,
                            "note": "token by token (one tokenizer)" if alignment_level == "token" else LEVEL_NOTE},
        "precision": precision_record(config.dtype, source.precision, target.precision),
    }
    writer = RunWriter(folder, manifest, resume=resume, overwrite=overwrite)
    stages = RunStages(writer, on_progress, should_cancel)
    try:
        _run(config, method, source, target, alignment, probes, writer, stages, on_progress, should_cancel,
             alignment_level)
        writer.manifest.wall_seconds = round(time.monotonic() - started, 3)
        writer.manifest.cost = _cost_summary(writer.manifest)
        writer.manifest.artefacts = _artefact_list(writer)
        return writer.finish()
    except (TransferCancelled, KeyboardInterrupt) as error:
        writer.fail("cancelled", error)
        raise
    except BaseException as error:
        writer.fail("failed", error)
        raise


def _run(config, method: TransferMethod, source, target, alignment, probes, writer, stages, on_progress,
         should_cancel, alignment_level: str = "token") -> None:
    if config.uses_frontier_schedule:
        frontier_layers(target, config)  # refuse bad --stages before any work
    tokenised = tokenise_samples(target.tokenizer, alignment, config.max_tokens)
    probe_tokens = tokenise_samples(target.tokenizer, probes, config.max_tokens)
    across_tokenizers = alignment_level == SEQUENCE_LEVEL
    # Two tokenizers: each model reads the same texts in its own tokens.
    source_tokenised = tokenise_samples(source.tokenizer, alignment, config.max_tokens) if across_tokenizers else tokenised
    source_probe_tokens = tokenise_samples(source.tokenizer, probes, config.max_tokens) if across_tokenizers else probe_tokens
    if method.prepare is not None:
        method.prepare(stages, writer, source, target)

    # Probe activations before training: projections, CKA and fidelity read them. CKA uses at
    # most CKA_MAX_ROWS probe tokens, a seeded subset fixed for the whole run. Across tokenizers
    # no token of one model has a partner in the other: target x source CKA compares the probe
    # sequences' mean states instead.
    subset = row_subset(int(probe_token_mask(probe_tokens).sum()), config.seed)
    source_subset = row_subset(int(probe_token_mask(source_probe_tokens).sum()), config.seed) if across_tokenizers else subset
    writer.manifest.data.cka_rows = len(probes) if across_tokenizers else int(subset.numel())
    cross_rows = ("probe sequence means (two tokenizers), position 0 and padding dropped" if across_tokenizers
                  else "probe tokens, position 0 and padding dropped")

    def probe_before():
        # Both models are untouched here: their probe states come from the per-model cache when they have
        # read these probes before (another run on the same pair and probes).
        source_tokens, source_means, status = cached_probe_rows(source, source_probe_tokens, config.batch_size,
                                                                source_subset)
        record_reuse(writer, "probe states source", status)
        target_tokens, target_means, status = cached_probe_rows(target, probe_tokens, config.batch_size, subset)
        record_reuse(writer, "probe states target", status)
        return source_tokens, source_means, target_tokens, target_means

    if stages.done("probe_before"):
        saved = writer.checkpoint("probe_before")
        unpack = lambda prefix: {int(k.split(".")[-1]): v for k, v in saved.items() if k.startswith(prefix + ".")}
        source_tokens, source_means = unpack("source_tokens"), unpack("source_means")
        target_tokens, target_means = unpack("target_tokens"), unpack("target_means")
    else:
        source_tokens, source_means, target_tokens, target_means = stages.run(
            "probe_before", probe_before,
            lambda r: {**{f"source_tokens.{l}": v for l, v in r[0].items()}, **{f"source_means.{l}": v for l, v in r[1].items()},
                       **{f"target_tokens.{l}": v for l, v in r[2].items()}, **{f"target_means.{l}": v for l, v in r[3].items()}})

    if config.fidelity and not stages.done("fidelity"):
        stages.run("fidelity", lambda: _save_fidelity(config, writer, source, target, source_tokens, target_tokens))
    if not stages.done("similarity_before"):
        stages.run("similarity_before", lambda: _save_similarity(writer, *probe_similarity_records(
            *((target_means, source_means) if across_tokenizers else (target_tokens, source_tokens)),
            "target_source_before", cross_rows, config.similarity_measures), "target_source_before"))
    cka_before = np.array(read_json_record(
        SimilarityMatrixFile, writer.path(similarity_file_name("linear_cka", "target_source_before"))).values)
    linear_probe_before(config, source, target, writer, stages)  # the untouched pair; after training: below

    evaluations = parse_eval_specs(config.eval_tasks, config.eval_settings)
    for spec in evaluations:
        _evaluate_role(stages, writer, source, spec, "source", config.eval_limit, config.eval_settings)
        _evaluate_role(stages, writer, target, spec, "target_before", config.eval_limit, config.eval_settings)

    context = RunContext(config, source, target, tokenised, probe_tokens, writer, stages, on_progress, should_cancel,
                         cka_before, source_tokenised, alignment_level)
    trained = method.train(context)
    writer.manifest.trainable_parameters = int(trained.trainable_parameters)

    def probe_after():
        after_tokens, after_means = probe_rows(target, probe_tokens, config.batch_size, subset)
        _save_similarity(writer, *probe_similarity_records(
            *((after_means, source_means) if across_tokenizers else (after_tokens, source_tokens)),
            "target_source_after", cross_rows, config.similarity_measures), "target_source_after")
        _save_similarity(writer, *probe_similarity_records(
            target_tokens, after_tokens, "target_before_after", "probe tokens, position 0 and padding dropped",
            config.similarity_measures), "target_before_after")
        pooled = {f"source.layer.{l}": v for l, v in source_means.items()}
        pooled.update({f"target_before.layer.{l}": v for l, v in target_means.items()})
        pooled.update({f"target_after.layer.{l}": v for l, v in after_means.items()})
        writer.save_tensors("probe_activations.safetensors", {k: v.to(torch.float16) for k, v in pooled.items()})

    stages.run("probe_after", probe_after)
    linear_probe_after(config, target, writer, stages)
    if evaluations:
        transferred = transferred_view(target, trained.delta, writer.manifest.run_id)
        for spec in evaluations:
            _evaluate_role(stages, writer, transferred, spec, "target_after", config.eval_limit, config.eval_settings)
            _record_comparison(writer, spec.key)
    if config.save_weights_delta:
        writer.save_tensors(WEIGHT_DELTA, trained.delta)
    writer.manifest.weights_delta = WeightDelta(file=WEIGHT_DELTA if config.save_weights_delta else None,
                                                format=trained.delta_format, tensors=len(trained.delta))


def _cost_summary(manifest: RunManifest) -> RunCost:
    """Wall time, peak memory and trainable parameters in one place, for cost-next-to-gain views."""
    records = list(manifest.stages.values())
    rss = [r.peak_rss_mib for r in records if r.peak_rss_mib is not None]
    gpu = [r.peak_gpu_mib for r in records if r.peak_gpu_mib is not None]
    return RunCost(wall_seconds=manifest.wall_seconds, stage_wall_seconds=round(sum(r.wall_seconds for r in records), 3),
                   peak_rss_mib=max(rss) if rss else None, peak_gpu_mib=max(gpu) if gpu else None,
                   trainable_parameters=manifest.trainable_parameters)


def _artefact_list(writer: RunWriter) -> list[str]:
    """Files of the finished run (what a reader may open), relative to its folder."""
    skip = {MANIFEST_FILE, PROGRESS_FILE}
    return sorted(str(p.relative_to(writer.partial)) for p in writer.partial.rglob("*")
                  if p.is_file() and p.name not in skip and not p.name.endswith(".tmp")
                  and p.relative_to(writer.partial).parts[0] != CHECKPOINTS_FOLDER)


def transferred_view(target: LoadedModel, delta: dict[str, torch.Tensor], run_id: str) -> LoadedModel:
    """The trained target under its own identity: result caches must never mistake it for the
    untouched target, so its fingerprint folds in a digest of the weight delta."""
    digest = hashlib.sha256(target.fingerprint.encode())
    for key in sorted(delta):
        digest.update(key.encode())
        digest.update(delta[key].detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    location = dataclasses.replace(target.location, display_name=f"{target.name} after {run_id}")
    return dataclasses.replace(target, fingerprint=f"{target.fingerprint}+{digest.hexdigest()[:16]}", location=location)


def _evaluate_role(stages: RunStages, writer: RunWriter, loaded: LoadedModel, spec: EvalSpec, role: str,
                   limit: int | None, settings: dict | None = None) -> None:
    """Score one model on one evaluation into ``evaluation/<key>/<role>/`` (items.parquet, summary.json);
    the key is the task for a plain spec (as before specs existed), else task-formulation[-circular]."""
    from pkt_core.evaluation.runner import evaluate
    from pkt_core.evaluation.settings import EvalSettings

    name = f"eval-{spec.key}-{role}"
    if stages.done(name):
        return
    folder = writer.path(f"{EVALUATION_FOLDER}/{spec.key}/{role}")

    def work():
        result = evaluate(loaded, spec.options(EvalSettings.from_dict(settings), limit), out=folder)
        evaluation = writer.manifest.evaluation.setdefault(spec.key, TaskEvaluation(spec=spec.text))
        setattr(evaluation, role, RoleEvaluation(metrics=result.summary["metrics"], items=len(result.items),
                                                 subset=result.summary["subset"], model=loaded.name,
                                                 formulation=result.summary.get("formulation")))
        writer.write_manifest()

    stages.run(name, work)


def _record_comparison(writer: RunWriter, key: str) -> None:
    from pkt_core.evaluation.runner import compare_evaluations

    comparison = compare_evaluations(writer.path(f"{EVALUATION_FOLDER}/{key}/target_before"),
                                     writer.path(f"{EVALUATION_FOLDER}/{key}/target_after"))
    record = PairedComparison.model_validate(comparison.as_dict())
    writer.save_json(f"{EVALUATION_FOLDER}/{key}/{COMPARISON_FILE}", record_json(record))
    writer.manifest.evaluation[key].comparison_target_before_after = record
    writer.write_manifest()


def _save_fidelity(config, writer: RunWriter, source, target, source_tokens, target_tokens) -> None:
    """The decomposition-fidelity table (transfer/fidelity.py), its scope in the manifest."""
    rows, record, reuse = fidelity_rows(config, {"source": source, "target": target},
                                        {"source": source_tokens, "target": target_tokens})
    writer.save_table("fidelity.parquet", rows)
    writer.manifest.fidelity = record
    writer.manifest.setup_reuse.update({f"fidelity {what}": how for what, how in reuse.items()})
    writer.write_manifest()
