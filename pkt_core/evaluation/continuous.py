"""Continuous, paired measures: how far the gold answer's probability moved, item by item.

An accuracy moves only when an item crosses a decision boundary; the log-probability of the gold
answer moves with every change of the model, so a small transfer effect shows in it on far fewer
items. Each item record holds ``gold_logprob`` (and, for choice tasks, ``gold_prob``):

- letter formulation: log P(gold letter), renormalised over the option letters;
- cloze formulation: log P(gold answer text | context), summed over its tokens;
- HumanEval / MBPP: log P(canonical solution | prompt), teacher-forced; GSM8K: of the gold solution.

:func:`paired_measures` compares two or three evaluations on their common items: the paired
difference ``after - before`` and ``source - before`` with bootstrap intervals, and the share of
the source-target gap closed, ``(after - before) / (source - before)``. Its interval resamples
items jointly for the three models (a ratio of means per resample), so it is honest about a gap
that is itself uncertain: when the gap's interval reaches zero the share is not interpretable
and the record says so.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pkt_core.evaluation.metrics import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    MetricInputError,
    bootstrap_interval,
)

CONTINUOUS_MEASURES = ("gold_logprob", "gold_prob")


def _common(*maps: Mapping[str, float]) -> list[str]:
    ids = [item_id for item_id in maps[0] if all(item_id in other for other in maps[1:])]
    ids = [item_id for item_id in ids if all(np.isfinite(other[item_id]) for other in maps)]
    if not ids:
        raise MetricInputError("the evaluations share no items with a finite value; score the same subset")
    return ids


def paired_difference(before: Mapping[str, float], after: Mapping[str, float]) -> dict:
    """Mean of ``after - before`` over common items, with a bootstrap interval."""
    ids = _common(before, after)
    return bootstrap_interval([after[i] - before[i] for i in ids]).as_dict()


def gap_closed(before: Mapping[str, float], after: Mapping[str, float], source: Mapping[str, float],
               confidence: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict:
    """(mean after - mean before) / (mean source - mean before), with a joint percentile bootstrap."""
    ids = _common(before, after, source)
    b = np.asarray([before[i] for i in ids], dtype=np.float64)
    a = np.asarray([after[i] for i in ids], dtype=np.float64)
    s = np.asarray([source[i] for i in ids], dtype=np.float64)
    gap = s.mean() - b.mean()
    if gap == 0:
        raise MetricInputError("source and target score the same on average: there is no gap to close")
    rng = np.random.default_rng(seed)
    ratios = np.empty(resamples)
    for start in range(0, resamples, 100):
        count = min(100, resamples - start)
        picks = rng.integers(0, len(ids), size=(count, len(ids)))
        gaps = s[picks].mean(axis=1) - b[picks].mean(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios[start:start + count] = (a[picks].mean(axis=1) - b[picks].mean(axis=1)) / gaps
    tail = (1 - confidence) / 2
    finite = ratios[np.isfinite(ratios)]
    low, high = np.quantile(finite, [tail, 1 - tail]) if finite.size else (float("nan"), float("nan"))
    gap_interval = bootstrap_interval(s - b, confidence, resamples, seed)
    record = {"mean": float((a.mean() - b.mean()) / gap), "low": float(low), "high": float(high), "n": len(ids),
              "confidence": confidence, "resamples": resamples}
    if gap_interval.low <= 0 <= gap_interval.high:
        record["note"] = (f"the source-target gap itself ({gap_interval.mean:.4f}, interval {gap_interval.low:.4f} to "
                          f"{gap_interval.high:.4f}) reaches zero: the share closed is not interpretable")
    return record


def values_by_item(items, measure: str) -> dict[str, float]:
    """item id -> a continuous measure, from an items table (see :mod:`pkt_core.evaluation.records`)."""
    if measure not in items.columns:
        raise MetricInputError(f"these records have no {measure!r} column; re-run the evaluation with this version")
    values = items[measure].astype(float)
    return {str(i): float(v) for i, v in zip(items["item_id"], values) if np.isfinite(v)}


def paired_measures(before, after=None, source=None, measures: tuple[str, ...] = CONTINUOUS_MEASURES) -> dict:
    """Paired records between evaluations' item tables: target before vs after, and vs the source.

    Returns ``{measure: {"after_minus_before": ..., "source_minus_before": ..., "gap_closed": ...}}``
    with whatever of those the given tables allow.
    """
    out: dict[str, dict] = {}
    for measure in measures:
        if measure not in before.columns or before[measure].isna().all():
            continue
        b = values_by_item(before, measure)
        entry: dict[str, dict] = {}
        if after is not None:
            entry["after_minus_before"] = paired_difference(b, values_by_item(after, measure))
        if source is not None:
            entry["source_minus_before"] = paired_difference(b, values_by_item(source, measure))
        if after is not None and source is not None:
            try:
                entry["gap_closed"] = gap_closed(b, values_by_item(after, measure), values_by_item(source, measure))
            except MetricInputError as error:
                entry["gap_closed"] = {"note": str(error)}
        out[measure] = entry
    return out
