"""The Runs page's table: one row per run with its gains, cost and status, read through the run schema."""

from __future__ import annotations

import pandas as pd

# -- runs table -------------------------------------------------------------------------------

PRIMARY_METRICS = {"mmlu": "acc", "gsm8k": "exact_match,flexible-extract", "humaneval": "pass@1", "mbpp": "pass@1"}


def primary_metric(task: str, metrics: dict) -> str | None:
    preferred = PRIMARY_METRICS.get(task)
    if preferred in metrics:
        return preferred
    for name, value in metrics.items():
        if isinstance(value, dict) and "mean" in value:
            return name
    return None


def _interval_text(value: dict | None) -> str:
    if not value or "mean" not in value:
        return "-"
    if value.get("low") is not None and value.get("high") is not None:
        return f"{value['mean']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"
    return f"{value['mean']:.3f}"


def run_gains(manifest: dict) -> list[dict]:
    """Per evaluated task: the primary metric of target before and after (with intervals) and the gain."""
    rows = []
    for task, roles in (manifest.get("evaluation") or {}).items():
        if not isinstance(roles, dict):
            continue
        before, after = roles.get("target_before") or {}, roles.get("target_after") or {}
        metric = primary_metric(task, after or before)
        if metric is None:
            continue
        b, a = before.get(metric), after.get(metric)
        gain = (a["mean"] - b["mean"]) if (a and b and "mean" in a and "mean" in b) else None
        rows.append({"task": task, "metric": metric, "before": b, "after": a, "gain": gain,
                     "source": (roles.get("source") or {}).get(metric)})
    return rows


def _peak(stages: dict, key: str) -> float | None:
    values = [record.get(key) for record in (stages or {}).values() if isinstance(record, dict)]
    values = [v for v in values if isinstance(v, (int, float))]
    return max(values) if values else None


def _hardware(manifest: dict) -> str:
    environment = manifest.get("environment") or {}
    gpus = environment.get("gpus") or []
    if gpus:
        return f"{len(gpus)} x {gpus[0]}"
    cpus = environment.get("cpu_count")
    return f"CPU ({cpus} cores)" if cpus else (manifest.get("hardware") or "-")


def runs_table(listings) -> pd.DataFrame:
    """One row per run (complete or not) with pair, method, variant, task, gains, cost, date, hardware."""
    rows = []
    for listing in listings:
        manifest = listing.manifest or {}
        source, target = manifest.get("source") or {}, manifest.get("target") or {}
        pair = manifest.get("pair") or (
            f"{source.get('name', '?')} -> {target.get('name', '?')}" if source or target else None)
        gains = run_gains(manifest)
        first = gains[0] if gains else None
        rows.append({
            "run_id": manifest.get("run_id") or listing.path.name,
            "pair": pair,
            "method": manifest.get("method"),
            "variant": (f"{manifest.get('variant')} (two tokenizers, per sequence)"
                        if (manifest.get("alignment_level") or {}).get("level") == "sequence" else manifest.get("variant")),
            "task": manifest.get("task") or (manifest.get("config") or {}).get("data_file"),
            "gain": first["gain"] if first else None,
            "gains": "; ".join(f"{g['task']} {g['metric']}: {_interval_text(g['before'])} -> {_interval_text(g['after'])}"
                               for g in gains) or "not evaluated",
            "wall_s": manifest.get("wall_seconds"),
            "peak_rss_mib": _peak(manifest.get("stages"), "peak_rss_mib"),
            "peak_gpu_mib": _peak(manifest.get("stages"), "peak_gpu_mib"),
            "trainable_params": manifest.get("trainable_parameters"),
            "created": manifest.get("created_at"),
            "hardware": _hardware(manifest) if manifest else None,
            "status": manifest.get("status", "unreadable") if listing.manifest else "unreadable",
            "problem": listing.problem or "",
            "folder": str(listing.path),
        })
    return pd.DataFrame(rows, columns=["run_id", "pair", "method", "variant", "task", "gain", "gains", "wall_s",
                                       "peak_rss_mib", "peak_gpu_mib", "trainable_params", "created", "hardware",
                                       "status", "problem", "folder"])


