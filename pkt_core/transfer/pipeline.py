"""SemAlign end to end: pair -> bases -> attribution -> mapping -> supervision -> frontier
training -> analysis artefacts -> a run folder.

:func:`run_transfer` is the one entry point (the CLI and the app call it). It reports progress
as (stage, step, loss) and checks ``should_cancel`` between steps. Every pre-training step
writes its artefact and is recorded as finished, so ``resume=True`` continues from the last
finished stage of an interrupted run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pkt_core.capture import position_ids_from_mask, record_residuals
from pkt_core.errors import PktError
from pkt_core.loading import LoadedModel, load_model
from pkt_core.paths import pkt_home
from pkt_core.resource_monitor import PeakMemoryMonitor
from pkt_core.run_store import RunWriter
from pkt_core.similarity import layer_similarity_matrix
from pkt_core.transfer import semantic_bases
from pkt_core.transfer.alignment_data import AlignmentSample, TokenisedSamples, tokenise_samples
from pkt_core.transfer.attribution import LayerAttribution, layer_gradient_x_activation
from pkt_core.transfer.config import TransferConfig
from pkt_core.transfer.frontier import TransferCancelled, apply_weight_delta, train_stage
from pkt_core.transfer.layer_mapping import (
    LayerMapping,
    attribution_monotone_map,
    cka_monotone_map,
    critical_layers_from_attribution,
    depth_map,
    interpolated_map,
    relocate_critical_layers,
)
from pkt_core.transfer.losses import LOSS_PAPER_VERSIONS
from pkt_core.transfer.supervision import Supervision, _final_norm_cpu, build_supervision, collect_layer_states
from pkt_core.transfer.task_samples import load_alignment_and_probes
from pkt_core.vocabulary import compare_vocabularies

ProgressCallback = Callable[[str, int, float], None]
CKA_MAX_ROWS = 1024
# Attribution keeps every layer's activations of the source for the backward pass: small
# batches keep that peak near a forward pass (16 x 256 tokens through a 1.5B model in one
# batch of 8 peaked at 21.8 GB on the CPU).
ATTRIBUTION_BATCH_SIZE = 2


def default_run_folder(config: TransferConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    what = config.task or Path(config.data_file or "data").stem
    return pkt_home() / "runs" / f"{stamp}-{config.method}-{config.variant}-{what}"


def _sites_for(config: TransferConfig) -> set[str]:
    sites = set()
    if config.losses.get("layer_cosine"):
        sites.add(config.layer_site)
    if config.losses.get("relation"):
        sites.add("contribution")
    if config.losses.get("fisher_logit"):
        sites.add("block_output")
    return sites or {"block_output"}


class _Stages:
    """Runs named pipeline stages once each, timing them and recording them in the manifest."""

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


def _row_subset(count: int, seed: int) -> torch.Tensor:
    if count <= CKA_MAX_ROWS:
        return torch.arange(count)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(count, generator=generator)[:CKA_MAX_ROWS].sort().values


def _cka(rows_a: dict[int, torch.Tensor], rows_b: dict[int, torch.Tensor]) -> dict:
    layers_a = [rows_a[l].double().numpy() for l in sorted(rows_a)]
    layers_b = [rows_b[l].double().numpy() for l in sorted(rows_b)]
    matrix = layer_similarity_matrix(layers_a, layers_b, "linear_cka")
    return {"metric": matrix.metric, "values": matrix.values.tolist(), "n_rows": int(matrix.n_rows),
            "notes": list(matrix.notes), "rows": "probe tokens, position 0 and padding dropped"}


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
    """Run SemAlign as configured and return the finished run folder."""
    started = time.monotonic()
    folder = Path(out_dir) if out_dir is not None else default_run_folder(config)
    if source is None:
        source = load_model(config.source, dtype=config.dtype, device=config.source_device)
    if target is None:
        target = load_model(config.target, dtype=config.dtype, device=config.target_device)
    vocabulary = compare_vocabularies(source.tokenizer, target.tokenizer)
    vocabulary_mode = vocabulary.require_compatible("SemAlign", allow_shared_subset=config.allow_shared_subset)
    if vocabulary_mode != "full":
        raise PktError(
            "SemAlign aligns token by token and needs one tokenizer; the shared-token subset is supported "
            "for the pair check and the semantic bases only so far (pkt_core.transfer.semantic_bases)."
        )
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
    }
    writer = RunWriter(folder, manifest, resume=resume, overwrite=overwrite)
    stages = _Stages(writer, on_progress, should_cancel)
    try:
        _run_stages(config, source, target, alignment, probes, writer, stages, on_progress, should_cancel)
        writer.manifest["wall_seconds"] = round(time.monotonic() - started, 3)
        writer.manifest["trainable_parameters"] = _trainable_parameter_count(target, config)
        return writer.finish()
    except (TransferCancelled, KeyboardInterrupt) as error:
        writer.fail("cancelled", error)
        raise
    except BaseException as error:
        writer.fail("failed", error)
        raise


def _trainable_parameter_count(target: LoadedModel, config: TransferConfig) -> int:
    """Parameters trainable at any one stage (the largest frontier layer)."""
    layers = target.adapter.decoder_layers()
    chosen = config.stages if config.stages is not None else range(len(layers))
    if config.trainable == "lora":
        total = 0
        for name, module in layers[0].named_modules():
            if name.split(".")[-1] in ("up_proj", "down_proj", "v_proj", "o_proj") and isinstance(module, torch.nn.Linear):
                total += config.lora_rank * (module.in_features + module.out_features)
        return total
    return max(sum(p.numel() for p in layers[k].parameters()) for k in chosen)


def _run_stages(config, source, target, alignment, probes, writer, stages, on_progress, should_cancel) -> None:
    tokenised = tokenise_samples(target.tokenizer, alignment, config.max_tokens)
    probe_tokens = tokenise_samples(target.tokenizer, probes, config.max_tokens)
    num_target, num_source = target.adapter.num_layers, source.adapter.num_layers
    target_layers = config.stages if config.stages is not None else list(range(num_target))
    bad = [k for k in target_layers if not 0 <= k < num_target]
    if bad:
        raise PktError(f"stages {bad} are not target layers (0..{num_target - 1})")

    # Semantic bases and the cross-model map (cached on disk per model fingerprint).
    source_basis = semantic_bases.cached_semantic_basis(source.adapter.lm_head().weight, source.fingerprint, "output")
    target_basis = semantic_bases.cached_semantic_basis(target.adapter.lm_head().weight, target.fingerprint, "output")
    cross_map = stages.run("bases", lambda: semantic_bases.cross_model_map(target_basis, source_basis),
                           lambda m: {"cross_map": m})
    writer.save_tensors("cross_map.safetensors", {"cross_map": cross_map})

    # Probe activations before training: projections, CKA and fidelity read them. CKA uses at
    # most CKA_MAX_ROWS probe tokens, a seeded subset fixed for the whole run.
    subset = _row_subset(int(probe_token_mask(probe_tokens).sum()), config.seed)
    writer.manifest["data"]["cka_rows"] = int(subset.numel())
    def probe_before():
        source_tokens, source_means = probe_rows(source, probe_tokens, config.batch_size, subset)
        target_tokens, target_means = probe_rows(target, probe_tokens, config.batch_size, subset)
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

    if not stages.done("fidelity"):
        stages.run("fidelity", lambda: writer.save_table("fidelity.parquet", _fidelity_rows(
            config, source, target, source_tokens, target_tokens)))
    if not stages.done("cka_before"):
        stages.run("cka_before", lambda: writer.save_json("cka_target_source_before.json",
                                                          _cka(target_tokens, source_tokens)))

    if stages.done("attribution"):
        table = _read_table(writer.path("attribution.parquet"))
        attribution = LayerAttribution(np.array([r["abs"] for r in table]), np.array([r["signed"] for r in table]), len(tokenised))
    else:
        attribution = stages.run("attribution", lambda: layer_gradient_x_activation(source, tokenised, ATTRIBUTION_BATCH_SIZE))
        writer.save_table("attribution.parquet", attribution.table())

    import json
    cka_before = np.array(json.loads(writer.path("cka_target_source_before.json").read_text())["values"])
    mappings = _all_mappings(config, attribution, cka_before, num_source, num_target)
    chosen = mappings[config.mapping]
    writer.save_json("mappings.json", {"chosen": config.mapping, "mappings": {n: m.to_record() for n, m in mappings.items()}})
    writer.manifest["mapping"] = {"chosen": config.mapping, "paper_version": chosen.paper_version,
                                  "table": chosen.table(), "notes": list(chosen.notes)}
    writer.write_manifest()

    sites = _sites_for(config)
    if stages.done("supervision"):
        supervision = Supervision.from_tensors(writer.load_tensors("supervision.safetensors"), config.apply_final_norm)
    else:
        def supervise():
            before = collect_layer_states(target, tokenised, target_layers, sites, config.batch_size)
            return build_supervision(source, before, tokenised, chosen, cross_map, sites, target_layers,
                                     config.apply_final_norm, _final_norm_cpu(target), config.batch_size,
                                     with_answer_log_probs=bool(config.losses.get("output_kl")))
        supervision = stages.run("supervision", supervise)
        writer.save_tensors("supervision.safetensors", supervision.tensors())

    for task in config.eval_tasks:
        _evaluate_role(stages, writer, source, task, "source", config.eval_limit)
        _evaluate_role(stages, writer, target, task, "target_before", config.eval_limit)

    # Frontier schedule: shallow to deep, one stage per target layer.
    delta: dict[str, torch.Tensor] = {}
    loss_rows: list[dict] = list(_read_table(writer.path("stage_losses.parquet"))) if writer.has("stage_losses.parquet") else []
    for k in sorted(target_layers):
        name = f"stage-{k:03d}"
        if stages.done(name):
            stage_delta = writer.checkpoint(name)
            apply_weight_delta(target.model, stage_delta)
            delta.update(stage_delta)
            continue
        records, stage_delta = stages.run(
            name, lambda k=k: train_stage(target, k, tokenised, supervision, config, on_progress, should_cancel),
            lambda result: result[1])
        delta.update(stage_delta)
        loss_rows.extend(records)
        writer.save_table("stage_losses.parquet", loss_rows)

    def probe_after():
        after_tokens, after_means = probe_rows(target, probe_tokens, config.batch_size, subset)
        writer.save_json("cka_target_source_after.json", _cka(after_tokens, source_tokens))
        writer.save_json("cka_target_before_after.json", _cka(target_tokens, after_tokens))
        pooled = {f"source.layer.{l}": v for l, v in source_means.items()}
        pooled.update({f"target_before.layer.{l}": v for l, v in target_means.items()})
        pooled.update({f"target_after.layer.{l}": v for l, v in after_means.items()})
        writer.save_tensors("probe_activations.safetensors", {k: v.to(torch.float16) for k, v in pooled.items()})

    stages.run("probe_after", probe_after)
    if config.eval_tasks:
        transferred = transferred_view(target, delta, writer.manifest["run_id"])
        for task in config.eval_tasks:
            _evaluate_role(stages, writer, transferred, task, "target_after", config.eval_limit)
            _record_comparison(writer, task)
    if config.save_weights_delta:
        writer.save_tensors("target_delta.safetensors", delta)
    writer.manifest["weights_delta"] = {
        "file": "target_delta.safetensors" if config.save_weights_delta else None,
        "format": "lora factors (name.lora_b @ name.lora_a)" if config.trainable == "lora" else "full tensor deltas",
        "tensors": len(delta),
    }
    for leftover in ("supervision.safetensors",):
        writer.path(leftover).unlink(missing_ok=True)


def transferred_view(target: LoadedModel, delta: dict[str, torch.Tensor], run_id: str) -> LoadedModel:
    """The trained target under its own identity: result caches must never mistake it for the
    untouched target, so its fingerprint folds in a digest of the weight delta."""
    import dataclasses
    import hashlib

    digest = hashlib.sha256(target.fingerprint.encode())
    for key in sorted(delta):
        digest.update(key.encode())
        digest.update(delta[key].detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    location = dataclasses.replace(target.location, display_name=f"{target.name} after {run_id}")
    return dataclasses.replace(target, fingerprint=f"{target.fingerprint}+{digest.hexdigest()[:16]}", location=location)


def _evaluate_role(stages: _Stages, writer: RunWriter, loaded: LoadedModel, task: str, role: str, limit: int | None) -> None:
    """Score one model on one task into ``evaluation/<task>/<role>/`` (items.parquet, summary.json)."""
    from pkt_core.evaluation.runner import EvalOptions, evaluate

    name = f"eval-{task}-{role}"
    if stages.done(name):
        return
    folder = writer.path(f"evaluation/{task}/{role}")

    def work():
        result = evaluate(loaded, EvalOptions(task=task, limit=limit), out=folder)
        evaluation = writer.manifest.setdefault("evaluation", {}).setdefault(task, {})
        evaluation[role] = {"metrics": result.summary["metrics"], "items": int(len(result.items)),
                            "subset": result.summary["subset"], "model": loaded.name}
        writer.write_manifest()

    stages.run(name, work)


def _record_comparison(writer: RunWriter, task: str) -> None:
    from pkt_core.evaluation.runner import compare_evaluations

    comparison = compare_evaluations(writer.path(f"evaluation/{task}/target_before"),
                                     writer.path(f"evaluation/{task}/target_after"))
    writer.save_json(f"evaluation/{task}/comparison_target_before_after.json", comparison.as_dict())
    writer.manifest["evaluation"][task]["comparison_target_before_after"] = comparison.as_dict()
    writer.write_manifest()


def _read_table(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


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


def _fidelity_rows(config, source, target, source_tokens, target_tokens) -> list[dict]:
    """Per model and layer: fidelity with output-side (LM head) and input-side (embedding) bases."""
    rows = []
    for role, loaded, tokens in (("source", source, source_tokens), ("target", target, target_tokens)):
        head = loaded.adapter.lm_head().weight
        embedding = loaded.adapter.input_embeddings().weight
        tied, relative = semantic_bases.heads_are_tied(head, embedding)
        norm = _final_norm_cpu(loaded) if config.apply_final_norm else (lambda x: x)
        operators = {
            "output": semantic_bases.recomposition_operator(
                semantic_bases.cached_semantic_basis(head, loaded.fingerprint, "output"), config.coefficients),
            "input": semantic_bases.recomposition_operator(
                semantic_bases.cached_semantic_basis(embedding, loaded.fingerprint, "input"), config.coefficients),
        }
        for layer, states in tokens.items():
            normed = norm(states)
            for side, operator in operators.items():
                result = semantic_bases.decomposition_fidelity(normed, operator)
                rows.append({"model": role, "layer": layer, "bases": side, "coefficients": config.coefficients,
                             "final_norm": config.apply_final_norm, "mean_cosine": result.mean_cosine,
                             "std_cosine": result.std_cosine, "rows": result.rows,
                             "head_and_embedding_tied": tied, "head_embedding_relative_difference": relative})
    return rows
