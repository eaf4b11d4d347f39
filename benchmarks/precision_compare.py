"""What a benchmark of two precision policies shares: each policy measured in its own process
with fresh caches, and the checks that the faster one still computes the same thing
(per-item answers and gold log-probabilities, trained weight deltas, stage losses).

Imported by ``bench_transfer.py --compare-precision`` and ``bench_eval.py --compare-precision``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pkt_core.paths import models_dir

POLICIES = ("fp32", "auto")  # the reference, and what a run gets by default on a capable machine


def isolated_environment(folder: Path) -> dict[str, str]:
    """An environment whose ``$PKT_HOME`` is ``folder``: empty result caches (semantic bases,
    evaluations), so each policy really computes, with the real model cache linked in."""
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "models"
    if not link.exists() and models_dir().is_dir():
        link.symlink_to(models_dir().resolve(), target_is_directory=True)
    return {**os.environ, "PKT_HOME": str(folder)}


def run_child(script: str, arguments: list[str], environment: dict[str, str]) -> dict:
    """Run ``script`` with ``arguments`` in a fresh interpreter (a clean peak RSS); its last stdout line is JSON."""
    completed = subprocess.run([sys.executable, script, *arguments], capture_output=True, text=True, env=environment,
                               check=False)
    if completed.returncode != 0:
        sys.exit(f"{' '.join(arguments)} failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def item_agreement(reference: pd.DataFrame, other: pd.DataFrame) -> dict:
    """Per-item agreement of two evaluations of the same items (``items.parquet`` frames)."""
    joined = reference.merge(other, on="item_id", suffixes=("_ref", "_other"), validate="one_to_one")
    if len(joined) != len(reference) or len(joined) != len(other):
        raise SystemExit(f"the two evaluations hold different items ({len(reference)} vs {len(other)}, "
                         f"{len(joined)} shared): not comparable")
    gap = (joined["gold_logprob_ref"] - joined["gold_logprob_other"]).abs()
    return {"items": len(joined), "same_prediction": float((joined["prediction_ref"] == joined["prediction_other"]).mean()),
            "gold_logprob_max_abs": float(gap.max()), "gold_logprob_mean_abs": float(gap.mean())}


def within_interval(reference: dict, other: dict) -> bool:
    """Whether ``other``'s mean lies in ``reference``'s bootstrap interval (metric records with mean, low, high)."""
    return reference["low"] <= other["mean"] <= reference["high"]


def delta_agreement(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> dict:
    """Cosine per trained tensor between two runs' weight deltas, and their norm ratio (other / reference)."""
    missing = sorted(set(reference) ^ set(other))
    if missing:
        raise SystemExit(f"the two runs trained different tensors (only in one: {missing[:5]})")
    cosines, ratios = {}, {}
    for name, value in reference.items():
        a, b = value.reshape(-1).double(), other[name].reshape(-1).double()
        cosines[name] = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
        ratios[name] = float(b.norm() / a.norm().clamp(min=1e-300))
    worst = min(cosines, key=cosines.get)
    return {"tensors": len(cosines), "cosine_min": cosines[worst], "cosine_median": float(np.median(list(cosines.values()))),
            "worst_tensor": worst, "norm_ratio_median": float(np.median(list(ratios.values())))}


def loss_agreement(reference: pd.DataFrame, other: pd.DataFrame) -> dict:
    """Largest relative difference of the stage losses (``stage_losses.parquet``) step by step."""
    joined = reference.merge(other, on=["stage_layer", "step"], suffixes=("_ref", "_other"))
    relative = (joined["loss_ref"] - joined["loss_other"]).abs() / joined["loss_ref"].abs().clip(lower=1e-12)
    first = joined[joined["step"] == 0]
    first_relative = (first["loss_ref"] - first["loss_other"]).abs() / first["loss_ref"].abs().clip(lower=1e-12)
    return {"steps": len(joined), "relative_max": float(relative.max()),
            "first_step_relative_max": float(first_relative.max()) if len(first) else float("nan")}
