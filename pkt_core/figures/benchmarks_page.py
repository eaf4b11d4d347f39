"""The Benchmarks page's tables and figures: scores per role with intervals, per subject, paired items."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pkt_core.evaluation.specs import EvalSpecError, described_identity, formulation_title, task_of_key
from pkt_core.figures.runs_page import evaluation_formulation, preferred_metric
from pkt_core.figures.spec import ROLES, FigureError, FigureSpec
from pkt_core.runs.reader import Run
from pkt_core.runs.schema import interval_metrics

# -- benchmarks -------------------------------------------------------------------------------
# Functions below that take ``key`` take an evaluation's key: its folder under ``evaluation/`` and
# its manifest key, the task itself or task-formulation[-circular] (pkt_core.evaluation.specs).


def evaluation_folders(run: Run) -> dict[str, dict[str, Path]]:
    """key -> role -> folder, for the evaluations stored under ``<run>/evaluation/``."""
    return {key: {role: run.evaluation_folder(key, role) for role in roles}
            for key, roles in run.evaluated_tasks().items()}


def _task_of(key: str) -> str:
    try:
        return task_of_key(key)
    except EvalSpecError:  # a folder named for no task: shown as a task of its own
        return key


@dataclass(frozen=True)
class EvaluationChoice:
    """One evaluation of a task in a run, as the Benchmarks page offers it."""

    key: str
    task: str
    title: str  # how it was asked: 'letters', 'cloze', 'letters, CircularEval', 'as scored'
    formulation: dict | None  # the formulation record (Formulation.describe()), where one was kept


def evaluation_choices(run: Run) -> dict[str, list[EvaluationChoice]]:
    """task -> its evaluations, in the order the run asked for them (the manifest's), then any stored
    folder the manifest does not name."""
    stored = run.evaluated_tasks()
    recorded = run.manifest.evaluation
    choices: dict[str, list[EvaluationChoice]] = {}
    for key in [*recorded, *(k for k in stored if k not in recorded)]:
        task = _task_of(key)
        formulation = evaluation_formulation(recorded[key]) if key in recorded else None
        if formulation is None and stored.get(key):
            formulation = getattr(run.evaluation_summary(key, stored[key][0]), "formulation", None)
        name, circular = described_identity(task, formulation)
        title = formulation_title(name, circular, (formulation or {}).get("shots"))
        choices.setdefault(task, []).append(EvaluationChoice(key, task, title, formulation))
    for task, entries in choices.items():
        titles = [entry.title for entry in entries]
        if len(set(titles)) < len(titles):  # two evaluations asked alike (hand-made): tell them apart by key
            choices[task] = [EvaluationChoice(e.key, e.task, f"{e.title} ({e.key})", e.formulation) for e in entries]
    return dict(sorted(choices.items()))


def default_metric(choice: EvaluationChoice, metrics: list[str]) -> str:
    """The metric an evaluation is read by (its formulation's), else the first one it holds."""
    preferred = preferred_metric(choice.task, choice.formulation)
    return preferred if preferred in metrics else metrics[0]


def benchmark_summary(run: Run) -> pd.DataFrame:
    """evaluation (key), task, role, metric, mean, low, high: from each evaluation's summary.json, else the manifest."""
    rows = []
    stored = run.evaluated_tasks()
    recorded = run.manifest.evaluation
    for key in sorted(set(stored) | set(recorded)):
        for role in ROLES:
            if role in stored.get(key, []):
                metrics, origin = run.evaluation_summary(key, role).metrics, "summary.json"
            else:
                evaluation = recorded[key].role(role) if key in recorded else None
                if evaluation is None:
                    continue
                metrics, origin = evaluation.metrics, "manifest"
            for name, value in interval_metrics(metrics).items():
                rows.append({"evaluation": key, "task": _task_of(key), "role": role, "metric": name,
                             "mean": value.mean, "low": value.low, "high": value.high, "from": origin})
    return pd.DataFrame(rows, columns=["evaluation", "task", "role", "metric", "mean", "low", "high", "from"])


def benchmark_bars(run, key: str, metric: str) -> FigureSpec:
    summary = benchmark_summary(run)
    data = summary[(summary["evaluation"] == key) & (summary["metric"] == metric)][["role", "mean", "low", "high"]]
    data = data.copy()
    if data.empty:
        raise FigureError(f"run {run.run_id} has no {metric} for {key}")
    data["low"] = data["low"].fillna(data["mean"])
    data["high"] = data["high"].fillna(data["mean"])
    data["model"] = data["role"]
    caption = {"run_id": run.run_id, "task": _task_of(key), "evaluation": key, "measure": metric,
               "interval": "bootstrap 95% (as evaluated)"}
    return FigureSpec(f"{key}-{metric}", "bars", f"{key}: {metric}", data, caption,
                      {"x": "role", "y": "mean", "series": "model", "low": "low", "high": "high", "x_label": "model",
                       "y_label": metric})


def per_subject(run, task: str = "mmlu") -> pd.DataFrame:
    """subject, role, n, acc (and acc_norm) from each role's summary (MMLU)."""
    rows = []
    for role in run.evaluated_tasks().get(task, []):
        for entry in getattr(run.evaluation_summary(task, role), "per_subject", None) or []:
            rows.append({"role": role, **entry})
    return pd.DataFrame(rows)


def per_subject_bars(run, task: str = "mmlu", metric: str = "acc", subjects: list[str] | None = None) -> FigureSpec:
    table = per_subject(run, task)
    if table.empty:
        raise FigureError(f"run {run.run_id} has no per-subject results for {task}")
    if subjects:
        table = table[table["subject"].isin(subjects)]
    data = table[["subject", "role", "n", metric]].rename(columns={metric: "value"})
    caption = {"run_id": run.run_id, "task": task, "measure": metric, "subjects": subjects or "all"}
    return FigureSpec(f"{task}-{metric}-per-subject", "bars", f"{task}: {metric} per subject", data, caption,
                      {"x": "subject", "y": "value", "series": "role", "x_label": "subject", "y_label": metric})


def paired_items(run, task: str) -> tuple[Any, pd.DataFrame]:
    """The paired comparison target before -> after and one row per item with every model's answer."""
    from pkt_core.evaluation.runner import compare_evaluations

    roles = run.evaluated_tasks().get(task, [])
    if "target_before" not in roles or "target_after" not in roles:
        raise FigureError(f"run {run.run_id} has no per-item {task} evaluation of the target before and after")
    comparison = compare_evaluations(run.evaluation_folder(task, "target_before"),
                                     run.evaluation_folder(task, "target_after"))
    merged = None
    for role in ROLES:
        if role not in roles:
            continue
        items = run.evaluation_items(task, role)
        keep = items[["item_id", "prediction", "score", "outcome"]].rename(
            columns={c: f"{c}_{role}" for c in ("prediction", "score", "outcome")})
        if merged is None:
            merged = items[["item_id", "subject", "prompt", "target"]].merge(keep, on="item_id")
        else:
            merged = merged.merge(keep, on="item_id", how="left")
    gained, lost = set(comparison.wrong_to_right_ids), set(comparison.right_to_wrong_ids)
    merged["flip"] = [("gained" if i in gained else "lost" if i in lost else
                       ("both right" if s == 1 else "both wrong"))
                      for i, s in zip(merged["item_id"].astype(str), merged["score_target_after"])]
    return comparison, merged.rename(columns={"target": "gold"})




# -- answer format (choice tasks) ---------------------------------------------------------------

CHOICE_OPTIONS = {"mmlu": "ABCD"}


def answer_formats(run: Run, task: str) -> dict[str, dict]:
    """role -> the answer-format diagnostics of a choice task's evaluation ``task`` (a key: predicted vs
    gold options, entropy, distance, dominance, chance), as the evaluation summary stores them, or
    counted from the stored items for evaluations written before summaries held them."""
    from pkt_core.evaluation.diagnostics import answer_format

    options = CHOICE_OPTIONS.get(_task_of(task))
    found: dict[str, dict] = {}
    for role in run.evaluated_tasks().get(task, []):
        summary = run.evaluation_summary(task, role)
        stored = getattr(summary, "answer_format", None)
        if isinstance(stored, dict) and "predicted" in stored:
            found[role] = stored
            continue
        if options is None:
            continue
        items = run.evaluation_items(task, role)
        accuracy = summary.metrics.get("acc")
        if accuracy is None or not hasattr(accuracy, "low"):
            continue
        found[role] = answer_format(list(items["prediction"].astype(str)), list(items["target"].astype(str)),
                                    list(options), accuracy.model_dump(), 1.0 / len(options))
    return found


def letter_distribution_bars(run: Run, task: str) -> FigureSpec:
    """How often each model picks each option, next to how often each option is the gold answer."""
    formats = answer_formats(run, task)
    if not formats:
        raise FigureError(f"run {run.run_id} has no choice-task predictions for {task}")
    rows = []
    first = next(iter(formats.values()))
    for option, count in first["gold"].items():
        rows.append({"option": option, "model": "gold answers", "count": count})
    for role, record in formats.items():
        for option, count in record["predicted"].items():
            rows.append({"option": option, "model": role, "count": count})
    notes = [f"{role.replace('_', ' ')}: " + "; ".join(record["statements"]) for role, record in formats.items()]
    caption = {"run_id": run.run_id, "task": task, "measure": "predicted option counts"}
    return FigureSpec(f"{task}-answer-format", "bars", f"{task}: predicted options per model vs the gold answers",
                      pd.DataFrame(rows), caption, {"x": "option", "y": "count", "series": "model",
                                                    "x_label": "option", "y_label": "items"}, notes)


def calibrated_item_scores(items: pd.DataFrame) -> tuple[dict[str, float], dict[str, float]] | None:
    """Per item of a letter evaluation: the raw letter score and the batch-calibrated one (1 right,
    0 wrong; :func:`pkt_core.evaluation.diagnostics.batch_calibrated_predictions`), from the stored
    option log-likelihoods; None when the items are not plain letter items (cloze, CircularEval, or
    written without log-likelihoods)."""
    import json

    from pkt_core.evaluation.diagnostics import batch_calibrated_predictions

    details = [json.loads(d) if isinstance(d, str) else d for d in items["details"]] if "details" in items else []
    if not details or any(not isinstance(d, dict) or "-mc-" not in str(d.get("formulation", ""))
                          or "circular" in str(d.get("formulation", "")) or not d.get("loglikelihoods")
                          for d in details):
        return None
    loglikelihoods = np.array([d["loglikelihoods"] for d in details], dtype=np.float64)
    letters = [chr(ord("A") + i) for i in range(loglikelihoods.shape[1])]
    if loglikelihoods.ndim != 2 or any(t not in letters for t in items["target"]):
        return None
    gold = np.array([letters.index(t) for t in items["target"]])
    ids = list(items["item_id"])
    raw = (loglikelihoods.argmax(axis=1) == gold).astype(float)
    calibrated = (batch_calibrated_predictions(loglikelihoods) == gold).astype(float)
    return dict(zip(ids, raw)), dict(zip(ids, calibrated))


def calibrated_accuracy(run: Run, task: str) -> pd.DataFrame:
    """Letter accuracy with each model's own letter prior removed (label-free), per model, and the
    paired change of the target; empty unless ``task`` is a plain letter evaluation."""
    from pkt_core.evaluation.metrics import bootstrap_interval

    scores = {}
    for role in ("source", "target_before", "target_after"):
        if role in run.evaluated_tasks().get(task, []):
            found = calibrated_item_scores(run.evaluation_items(task, role))
            if found is None:
                return pd.DataFrame()
            scores[role] = found
    rows = []
    for role, (raw, calibrated) in scores.items():
        interval = bootstrap_interval(list(calibrated.values()))
        rows.append({"model": role, "letter accuracy": float(np.mean(list(raw.values()))),
                     "calibrated accuracy": interval.mean, "95% interval": f"[{interval.low:.3f}, {interval.high:.3f}]"})
    if {"target_before", "target_after"} <= set(scores):
        before, after = scores["target_before"][1], scores["target_after"][1]
        ids = sorted(set(before) & set(after))
        change = bootstrap_interval([after[i] - before[i] for i in ids])
        raw_change = float(np.mean([scores["target_after"][0][i] - scores["target_before"][0][i] for i in ids]))
        rows.append({"model": "after - before (paired)", "letter accuracy": raw_change,
                     "calibrated accuracy": change.mean, "95% interval": f"[{change.low:+.3f}, {change.high:+.3f}]"})
    return pd.DataFrame(rows)


# -- continuous, paired measures --------------------------------------------------------------

MEASURE_TITLES = {"gold_logprob": "gold answer log-probability", "gold_prob": "probability mass on the gold option"}


def continuous_measures(run: Run, task: str) -> pd.DataFrame:
    """Per continuous measure: each model's mean, after - before and source - before with their
    paired bootstrap intervals, and the share of the source-target gap closed, from the stored
    items (empty for evaluations written before items held the measures)."""
    from pkt_core.evaluation.continuous import CONTINUOUS_MEASURES, paired_measures

    roles = run.evaluated_tasks().get(task, [])
    if "target_before" not in roles:
        return pd.DataFrame()
    tables = {role: run.evaluation_items(task, role) for role in roles}
    paired = paired_measures(tables["target_before"], tables.get("target_after"), tables.get("source"))
    rows = []
    for measure in CONTINUOUS_MEASURES:
        if measure not in paired:
            continue
        row = {"measure": MEASURE_TITLES.get(measure, measure)}
        for role, items in tables.items():
            if measure in items:
                row[role] = float(items[measure].astype(float).mean())
        for key, label in (("after_minus_before", "after - before"), ("source_minus_before", "source - before"),
                           ("gap_closed", "gap closed")):
            value = paired[measure].get(key) or {}
            if "mean" in value:
                row[label] = value["mean"]
                row[f"{label} 95% interval"] = f"[{value['low']:+.3f}, {value['high']:+.3f}]"
            if value.get("note"):
                row["note"] = value["note"]
        rows.append(row)
    return pd.DataFrame(rows)


def items_by_gold_change(run: Run, task: str) -> pd.DataFrame:
    """The paired items sorted by how much the gold answer's log-probability moved, target before -> after."""
    roles = run.evaluated_tasks().get(task, [])
    if "target_before" not in roles or "target_after" not in roles:
        return pd.DataFrame()
    before, after = (run.evaluation_items(task, role) for role in ("target_before", "target_after"))
    if "gold_logprob" not in before or "gold_logprob" not in after:
        return pd.DataFrame()
    merged = before[["item_id", "target", "prediction", "gold_logprob"]].merge(
        after[["item_id", "prediction", "gold_logprob"]], on="item_id", suffixes=("_before", "_after"))
    merged["change"] = merged["gold_logprob_after"] - merged["gold_logprob_before"]
    return merged.rename(columns={"target": "gold"}).sort_values("change", ascending=False).reset_index(drop=True)
