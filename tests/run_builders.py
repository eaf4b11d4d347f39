"""A run holding every kind of file the run format knows, written through the library's own writers.

The numbers are seeded random values; tests compare what the readers and page functions return
with these inputs (a round trip) or with formulas applied to them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pkt_core.evaluation.records import read_items, read_summary, write_items, write_summary
from pkt_core.runs.schema import (
    COMPARISON_FILE,
    EVALUATION_FOLDER,
    ROLES,
    LayerMap,
    LayerMaps,
    MapEntry,
    PairedComparison,
    RoleEvaluation,
    SimilarityMatrixFile,
    TaskEvaluation,
    WeightDelta,
    record_json,
)
from pkt_core.runs.writer import RunWriter

N_SOURCE, N_TARGET = 4, 3
ITEM_IDS = [f"anatomy/test/{i}" for i in range(6)] + [f"astronomy/test/{i}" for i in range(6)]
GOLD = ["A", "B", "C", "D"] * 3


def model_record(name: str, layers: int, width: int) -> dict:
    return {"name": name, "family": "qwen2", "model_type": "qwen2", "num_layers": layers, "width": width,
            "vocab_size": 256, "parameters": 1000 * layers, "dtype": "fp32", "device": "cpu", "fingerprint": name}


def base_manifest(run_id: str, method: str = "semalign") -> dict:
    return {
        "run_id": run_id, "method": method, "variant": "v1", "paper_version": "v1", "pair": None,
        "source": model_record("src", N_SOURCE, 16), "target": model_record("tgt", N_TARGET, 8), "task": "mmlu",
        "config": {"method": method, "mapping": "depth", "stages": None, "drop_first_position": True,
                   "steps_per_stage": 2, "critical_fraction": 0.2},
        "losses": {"layer_cosine": {"weight": 1.0, "paper_version": "v1"}},
        "data": {"description": "test", "alignment_ids": ["a0", "a1"], "probe_ids": ITEM_IDS[:4],
                 "probe_labels": ["anatomy"] * 4, "cka_rows": 40},
        "seeds": {"seed": 0}, "vocabulary": {"identical": True},
        "alignment_level": {"level": "token", "note": "token by token (one tokenizer)"},
    }


def item_rows(scores: list[float], predictions: list[str], gold_probs: list[float] | None = None) -> list[dict]:
    rows = [{"task": "mmlu", "item_id": item, "subject": item.split("/")[0], "prompt": f"Q {item}\nAnswer:",
             "target": gold, "prediction": prediction, "score": score,
             "outcome": "correct" if score == 1 else "incorrect", "details": {"loglikelihoods": [0.0] * 4},
             "cached": False}
            for item, gold, prediction, score in zip(ITEM_IDS, GOLD, predictions, scores)]
    for row, prob in zip(rows, gold_probs or []):
        row["gold_prob"], row["gold_logprob"] = prob, float(np.log(prob))
    return rows


def role_scores(seed: int) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    return {role: [float(x) for x in rng.integers(0, 2, len(ITEM_IDS))] for role in ROLES}


def _linear_probe(writer: RunWriter, rng: np.random.Generator) -> list[dict]:
    """linear_probe.parquet and its manifest record: seeded accuracies per model and layer."""
    from pkt_core.runs.schema import LinearProbeRecord, LinearProbeRoleRecord
    from pkt_core.transfer.linear_probe import LayerProbe, probe_table_rows

    rows, roles = [], {}
    for role, layers in (("source", N_SOURCE), ("target_before", N_TARGET), ("target_after", N_TARGET)):
        results = []
        for layer in range(layers):
            accuracy = float(rng.uniform(0.2, 0.6))
            results.append(LayerProbe(layer=layer, accuracy=accuracy, ci_low=accuracy - 0.05, ci_high=accuracy + 0.05,
                                      fold_accuracies=(accuracy - 0.02, accuracy + 0.02), log_loss=1.3, chance=0.3,
                                      chance_log_loss=1.38, n_items=40, n_classes=4, folds=2, iterations=12,
                                      converged=True, seconds=0.01))
        rows += probe_table_rows(role, results, layers, "block output at the last prompt token")
        roles[role] = LinearProbeRoleRecord(layers=layers, cache="off", capture_seconds=0.1, fit_seconds=0.01)
    writer.save_table("linear_probe.parquet", rows)
    writer.manifest.linear_probe = LinearProbeRecord(status="computed", task="mmlu", items=40, item_rule="test items",
                                                     items_digest="abc", label="gold option index (0 = A)",
                                                     state="block output at the last prompt token", chance=0.3,
                                                     roles=roles)
    return rows


def write_full_run(folder: Path, seed: int = 0, method: str = "semalign",
                   cross_map_shape: tuple[int, int] = (8, 16), config: dict | None = None) -> tuple[Path, dict]:
    """Every file kind of the run format, through RunWriter and the evaluation records; returns
    (run folder, the values written) for the assertions. ``config`` adds to the manifest's config."""
    rng = np.random.default_rng(seed)
    manifest = base_manifest(folder.name, method)
    manifest["config"].update(config or {})
    writer = RunWriter(folder, manifest)
    written: dict = {"similarity": {}, "scores": role_scores(seed)}
    for metric in ("linear_cka", "svcca"):
        for view, shape in (("target_source_before", (N_TARGET, N_SOURCE)), ("target_source_after", (N_TARGET, N_SOURCE)),
                            ("target_before_after", (N_TARGET, N_TARGET))):
            values = rng.uniform(0.05, 0.95, shape)
            written["similarity"][(metric, view)] = values
            writer.save_similarity(SimilarityMatrixFile(metric=metric, view=view, values=values.tolist(), n_rows=40,
                                                        notes=[f"{metric} note"], rows="probe tokens", kind="score"))
    depth = LayerMap(name="depth", paper_version="v1", source_layers=N_SOURCE, target_layers=N_TARGET,
                     table=[MapEntry(target_layer=t, source_layers=[s], weights=[1.0]) for t, s in ((0, 0), (1, 2), (2, 3))])
    spread = LayerMap(name="interpolated", paper_version="v2", source_layers=N_SOURCE, target_layers=N_TARGET,
                      table=[MapEntry(target_layer=t, source_layers=[t, t + 1], weights=[0.25, 0.75]) for t in range(3)])
    writer.save_layer_maps(LayerMaps(chosen="depth", mappings={"depth": depth, "interpolated": spread}))
    writer.manifest.mapping = {"chosen": "depth", "paper_version": "v1", "table": [e.model_dump() for e in depth.table]}
    writer.save_table("attribution.parquet", [{"source_layer": l, "abs": float(a), "signed": float(-a / 2)}
                                              for l, a in enumerate(rng.uniform(0, 1, N_SOURCE))])
    writer.save_table("fidelity.parquet", [
        {"model": model, "layer": layer, "bases": bases, "coefficients": "cosine", "final_norm": True,
         "mean_cosine": float(rng.uniform(0.3, 0.9)), "std_cosine": 0.05, "rows": 40,
         "head_and_embedding_tied": False, "head_embedding_relative_difference": 0.5}
        for model, layers in (("source", N_SOURCE), ("target", N_TARGET)) for layer in range(layers)
        for bases in ("output", "input")])
    written["losses"] = [{"stage_layer": layer, "step": step, "loss": float(rng.uniform(0.1, 1.0)),
                          "loss_layer_cosine": float(rng.uniform(0.1, 1.0)), "seconds": 0.1}
                         for layer in range(N_TARGET) for step in range(2)]
    writer.save_table("stage_losses.parquet", written["losses"])
    written["linear_probe"] = _linear_probe(writer, rng)
    writer.save_tensors("probe_activations.safetensors", {
        f"{role}.layer.{l}": torch.randn(4, 16 if role == "source" else 8, generator=torch.Generator().manual_seed(l))
        for role, layers in (("source", N_SOURCE), ("target_before", N_TARGET), ("target_after", N_TARGET))
        for l in range(layers)})
    written["cross_map"] = torch.randn(*cross_map_shape, generator=torch.Generator().manual_seed(seed))
    writer.save_tensors("cross_map.safetensors", {"cross_map": written["cross_map"]})
    predictions = {"source": GOLD, "target_before": ["B"] * 12, "target_after": ["A"] * 12}
    # A generator of its own, so the values drawn above stay what they were before gold mass existed.
    gold_rng = np.random.default_rng(seed + 1000)
    written["gold_prob"] = {role: [float(x) for x in gold_rng.uniform(low, low + 0.4, len(ITEM_IDS))]
                            for role, low in (("source", 0.5), ("target_before", 0.1), ("target_after", 0.2))}
    evaluation = TaskEvaluation()
    for role in ROLES:
        scores = written["scores"][role]
        folder_role = writer.path(f"{EVALUATION_FOLDER}/mmlu/{role}")
        write_items(folder_role, item_rows(scores, predictions[role], written["gold_prob"][role]))
        mean = float(np.mean(scores))
        summary = {"task": "mmlu", "model": model_record("src" if role == "source" else "tgt", 3, 8),
                   "metrics": {"acc": {"mean": mean, "low": mean - 0.1, "high": mean + 0.1, "n": len(scores)}},
                   "subset": {"rule": "test", "count": len(scores), "ids_digest": "abc"},
                   "per_subject": [{"subject": s, "n": 6, "acc": float(np.mean(scores[i * 6:(i + 1) * 6]))}
                                   for i, s in enumerate(("anatomy", "astronomy"))]}
        write_summary(folder_role, summary)
        setattr(evaluation, role, RoleEvaluation(metrics=summary["metrics"], items=len(scores), subset=summary["subset"],
                                                 model=summary["model"]["name"]))
    from pkt_core.evaluation.runner import compare_evaluations

    comparison = PairedComparison.model_validate(compare_evaluations(
        writer.path(f"{EVALUATION_FOLDER}/mmlu/target_before"), writer.path(f"{EVALUATION_FOLDER}/mmlu/target_after")
    ).as_dict())
    writer.save_json(f"{EVALUATION_FOLDER}/mmlu/{COMPARISON_FILE}", record_json(comparison))
    evaluation.comparison_target_before_after = comparison
    writer.manifest.evaluation = {"mmlu": evaluation}
    writer.save_tensors("target_delta.safetensors", {"model.layers.0.mlp.weight": torch.ones(2, 2)})
    writer.manifest.weights_delta = WeightDelta(file="target_delta.safetensors", format="full tensor deltas", tensors=1)
    writer.manifest.wall_seconds = 1.5
    writer.manifest.trainable_parameters = 123
    writer.manifest.artefacts = sorted(str(p.relative_to(writer.partial)) for p in writer.partial.rglob("*")
                                       if p.is_file() and p.name not in ("manifest.json", "progress.json")
                                       and "checkpoints" not in p.parts)
    writer.write_manifest()
    return writer.finish(), written


def as_first_edition_items(folder: Path, rng: np.random.Generator) -> dict:
    """Rewrite the run's items as the first edition wrote them: per-option log-likelihoods, no gold columns."""
    stored = {}
    for role in ("source", "target_before", "target_after"):
        role_folder = folder / "evaluation" / "mmlu" / role
        rows = read_items(role_folder).to_dict("records")
        for row in rows:
            row["formulation"] = None
            lls = rng.normal(-2.0, 1.0, 4)
            row["prediction"] = "ABCD"[int(np.argmax(lls))]
            row["score"] = float(row["prediction"] == row["target"])
            row["details"] = {"loglikelihoods": lls.tolist()}
            row["gold_logprob"] = row["gold_prob"] = None
            stored[(role, row["item_id"])] = (lls, "ABCD".index(row["target"]))
        write_items(role_folder, rows)
        summary = read_summary(role_folder)
        summary["variant"] = {"name": "harness-0shot"}
        for name in ("gold_logprob", "gold_prob"):
            summary["metrics"].pop(name, None)
        write_summary(role_folder, summary)
    return stored


def evaluation_folder(run_folder: Path, task: str, role: str) -> Path:
    """Where a run's evaluation of one role is: in the run, or (a shipped run's source and untouched
    target) in the shipped folder's ``_shared/``, as the reader resolves it."""
    from pkt_core.runs.reader import open_run

    return open_run(run_folder).evaluation_folder(task, role)
