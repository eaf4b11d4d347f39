"""The Runs page's table: one row per run with its gains, cost and status, read through the run schema."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd

from pkt_core.evaluation.specs import EvalSpecError, described_identity, formulation_title, task_of_key
from pkt_core.runs.catalogue import RunListing
from pkt_core.runs.schema import Metric, MetricValue, RoleEvaluation, RunManifest, TaskEvaluation, interval_metrics

PRIMARY_METRICS = {"mmlu": "acc", "gsm8k": "exact_match,flexible-extract", "humaneval": "pass@1", "mbpp": "pass@1"}
# A choice task is read by the metric its formulation scores each item by: letters the raw argmax
# (acc), cloze the per-character one (acc_norm, the items' score), CircularEval right under every rotation.
FORMULATION_METRICS = {("mc", False): "acc", ("rc", False): "acc_norm", ("mc", True): "acc_circular"}
RUNS_TABLE_COLUMNS = ["run_id", "pair", "method", "variant", "task", "gain", "gain_of", "shift", "gap_closed",
                      "shift_of", "gains", "wall_s",
                      "peak_rss_mib", "peak_gpu_mib", "trainable_params", "created", "hardware", "status", "problem",
                      "folder"]


def primary_metric(task: str, metrics: dict[str, Metric], formulation: dict | None = None) -> str | None:
    """The metric a task is read by (accuracy, pass@1, ...; for a choice task the one its formulation
    scores by), else its first metric with a value."""
    values = interval_metrics(metrics)
    preferred = preferred_metric(task, formulation)
    if preferred in values:
        return preferred
    return next(iter(values), None)


def preferred_metric(task: str, formulation: dict | None = None) -> str | None:
    """The metric a task asked this way is read by, whether or not an evaluation holds it."""
    name, circular = described_identity(task, formulation)
    return FORMULATION_METRICS.get((name, circular)) if name else PRIMARY_METRICS.get(task)


def evaluation_formulation(evaluation: TaskEvaluation) -> dict | None:
    """The formulation record of an evaluation (its roles were scored alike), None where none was kept."""
    roles: list[RoleEvaluation | None] = [evaluation.target_before, evaluation.target_after, evaluation.source]
    return next((role.formulation for role in roles if role is not None and role.formulation), None)


def interval_text(value: MetricValue | None) -> str:
    if value is None:
        return "-"
    if value.low is not None and value.high is not None:
        return f"{value.mean:.3f} [{value.low:.3f}, {value.high:.3f}]"
    return f"{value.mean:.3f}"


@dataclass(frozen=True)
class TaskGain:
    """An evaluation's primary metric for the target before and after transfer (and the source).
    ``task`` is the evaluation's key (the task, or task-formulation[-circular]: see evaluation/specs.py)."""

    task: str
    metric: str
    before: MetricValue | None
    after: MetricValue | None
    source: MetricValue | None
    # How a plain key's task was asked, where the run holds several evaluations of it ('letters'); a key
    # with a formulation ('mmlu-rc') says it itself.
    title: str = ""

    @property
    def gain(self) -> float | None:
        if self.before is None or self.after is None:
            return None
        return self.after.mean - self.before.mean

    @property
    def label(self) -> str:
        """'mmlu acc', 'mmlu-rc acc_norm'; 'mmlu acc (letters)' beside other evaluations of MMLU."""
        return f"{self.task} {self.metric}" + (f" ({self.title})" if self.title else "")


def run_gains(manifest: RunManifest) -> list[TaskGain]:
    """Per evaluation, in the order the run asked for them: the primary metric of target before and
    after (with intervals) and the gain."""
    gains = []
    tasks = [_task_of(key) for key in manifest.evaluation]
    for key, evaluation in manifest.evaluation.items():
        before, after, source = evaluation.target_before, evaluation.target_after, evaluation.source
        reference = after or before
        if reference is None:
            continue
        task, formulation = _task_of(key), evaluation_formulation(evaluation)
        metric = primary_metric(task, reference.metrics, formulation)
        if metric is None:
            continue
        name, circular = described_identity(task, formulation)
        shown = key == task and name is not None and tasks.count(task) > 1
        title = formulation_title(name, circular, (formulation or {}).get("shots")) if shown else ""

        def value(role_evaluation, metric: str = metric) -> MetricValue | None:
            if role_evaluation is None:
                return None
            found = role_evaluation.metrics.get(metric)
            return found if isinstance(found, MetricValue) else None

        gains.append(TaskGain(key, metric, value(before), value(after), value(source), title))
    return gains


def _task_of(key: str) -> str:
    try:
        return task_of_key(key)
    except EvalSpecError:  # a key of no known task (hand-made): read it by its first metric
        return key


def gain_lines(manifest: RunManifest) -> list[str]:
    """One line per evaluation: 'mmlu acc: target 0.267 -> 0.284 (gain +0.018); source 0.495'."""
    lines = []
    for gain in run_gains(manifest):
        line = f"{gain.label}: target {interval_text(gain.before)} -> {interval_text(gain.after)}"
        if gain.gain is not None:
            line += f" (gain {gain.gain:+.3f})"
        if gain.source is not None:
            line += f"; source {interval_text(gain.source)}"
        lines.append(line)
    return lines or ["not evaluated: no before/after behaviour to show"]


MEASURE_NAMES = {"gold_prob": "gold-option mass", "gold_logprob": "gold log-prob"}


def _peak(manifest: RunManifest, key: str) -> float | None:
    values = [getattr(record, key) for record in manifest.stages.values() if getattr(record, key) is not None]
    return max(values) if values else None


def hardware_text(manifest: RunManifest) -> str:
    hardware = manifest.provenance.hardware
    if hardware.gpus:
        return f"{len(hardware.gpus)} x {hardware.gpus[0]}"
    cpu = f"{hardware.cpu}, " if hardware.cpu else ""
    return f"CPU ({cpu}{hardware.cpu_count} cores)" if hardware.cpu_count else "-"


def continuous_measure(task: str) -> str:
    """The continuous measure a task's cell reports: the probability mass on the gold option for
    choice tasks (bounded, so its mean is not dominated by a few hopeless items), else the gold
    answer's log-probability (a code task's canonical solution, teacher-forced)."""
    from pkt_core.evaluation.specs import EvalSpecError, task_of_key
    from pkt_core.evaluation.tasks import CHOICE_TASKS

    try:
        task = task_of_key(task)
    except EvalSpecError:  # a hand-made key of no known task: read as its own name
        pass
    return "gold_prob" if task in CHOICE_TASKS else "gold_logprob"


def continuous_record(run, key: str) -> dict | None:
    """Paired per item, from the run's item tables: the continuous measure's after - before and
    source - before with bootstrap intervals, and the share of the gap closed; None for a run whose
    items hold no such measure (scored before the measure existed)."""
    from pkt_core.evaluation.continuous import paired_measures

    roles = run.evaluated_tasks().get(key, [])
    if "target_before" not in roles:
        return None
    tables = {role: run.evaluation_items(key, role) for role in ("target_before", "target_after", "source")
              if role in roles}
    measure = continuous_measure(key)
    paired = paired_measures(tables["target_before"], tables.get("target_after"), tables.get("source"), (measure,))
    if measure not in paired:
        return None
    return {"measure": measure, **paired[measure]}


@lru_cache(maxsize=256)
def _continuous(folder: str, key: str, stamp: int) -> dict | None:
    from pkt_core.runs.reader import RunReadError, open_run

    try:
        return continuous_record(open_run(folder), key)
    except RunReadError:
        return None


def continuous_shift(listing: RunListing, key: str) -> dict | None:
    """The continuous measure of evaluation ``key`` paired item by item (gold-option mass for a choice
    task, gold log-prob otherwise): after - before and the share of the gap closed, with intervals;
    None when the run's items hold none. Remembered per (folder, manifest modification time)."""
    manifest_file = Path(listing.path) / "manifest.json"
    stamp = manifest_file.stat().st_mtime_ns if manifest_file.is_file() else 0
    return _continuous(str(listing.path), key, stamp)


def runs_table(listings: list[RunListing]) -> pd.DataFrame:
    """One row per run (complete or not) with pair, method, variant, task, gains, cost, date, hardware."""
    rows = []
    for listing in listings:
        manifest = listing.manifest
        if manifest is None:
            raw = listing.raw or {}
            rows.append({"run_id": listing.run_id, "pair": raw.get("pair") if isinstance(raw.get("pair"), str) else None,
                         "method": raw.get("method") if isinstance(raw.get("method"), str) else None,
                         "gains": "not readable", "status": "unreadable", "problem": listing.problem or "",
                         "folder": str(listing.path)})
            continue
        gains = run_gains(manifest)
        first = gains[0] if gains else None
        continuous = continuous_shift(listing, first.task) if first is not None and listing.complete else None
        shift = (continuous or {}).get("after_minus_before") or {}
        closed = (continuous or {}).get("gap_closed") or {}
        pair = manifest.pair or f"{manifest.source.name} -> {manifest.target.name}"
        variant = manifest.variant
        if manifest.across_tokenizers:
            variant = f"{variant} (two tokenizers, per sequence)"
        rows.append({
            "run_id": manifest.run_id,
            "pair": pair,
            "method": manifest.method,
            "variant": variant,
            "task": manifest.task or manifest.config.get("data_file"),
            "gain": first.gain if first else None,
            "gain_of": first.label if first else None,
            # The continuous measure beside the accuracy: a letter prior moving changes the one, not the other.
            "shift": shift.get("mean"),
            "gap_closed": closed.get("mean"),
            "shift_of": (f"{first.task} {MEASURE_NAMES[continuous['measure']]}, 95% interval "
                         f"{shift['low']:+.3f} to {shift['high']:+.3f}" if shift.get("low") is not None else
                         f"{first.task} {MEASURE_NAMES[continuous['measure']]}" if continuous and shift else
                         "none in this run's items" if first is not None else None),
            "gains": "; ".join(f"{g.label}: {interval_text(g.before)} -> {interval_text(g.after)}"
                               for g in gains) or "not evaluated",
            "wall_s": manifest.wall_seconds,
            "peak_rss_mib": _peak(manifest, "peak_rss_mib"),
            "peak_gpu_mib": _peak(manifest, "peak_gpu_mib"),
            "trainable_params": manifest.trainable_parameters,
            "created": manifest.created_at,
            "hardware": hardware_text(manifest),
            "status": manifest.status,
            "problem": listing.problem or "",
            "folder": str(listing.path),
        })
    return pd.DataFrame(rows, columns=RUNS_TABLE_COLUMNS)
