"""Letter accuracy with each model's own letter prior removed (Batch Calibration), for shipped runs.

    python benchmarks/letter_calibration.py [RUN ...]      (default: every run in cached_runs/ with MMLU letters)

Reads only the run folders (the option log-likelihoods stored per item), no model. For each run:
the raw letter accuracy of the target before and after, the batch-calibrated accuracy of both
(:func:`pkt_core.evaluation.diagnostics.batch_calibrated_predictions`: label-free, each model's
mean option probability over the items divided out), the paired change of the calibrated score
with a bootstrap interval and McNemar's p, and the source's calibrated accuracy. An accuracy gain
that disappears here was the target's letter prior moving; one that stays is in the content.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pkt_core.figures.benchmarks_page import calibrated_item_scores
from pkt_core.evaluation.metrics import bootstrap_interval, mcnemar_exact_p
from pkt_core.runs.reader import RunReadError, open_run

ROOT = Path(__file__).resolve().parents[1]
TASK = "mmlu"


def row(folder: Path) -> str | None:
    try:
        run = open_run(folder)
    except RunReadError:
        return None
    roles = run.evaluated_tasks().get(TASK, [])
    if not {"target_before", "target_after", "source"} <= set(roles):
        return None
    scores = {role: calibrated_item_scores(run.evaluation_items(TASK, role)) for role in ("target_before",
                                                                                          "target_after", "source")}
    (raw_before, cal_before), (raw_after, cal_after), (_, cal_source) = (scores[r] for r in (
        "target_before", "target_after", "source"))
    ids = sorted(set(cal_before) & set(cal_after))
    change = bootstrap_interval([cal_after[i] - cal_before[i] for i in ids])
    lost = sum(cal_before[i] == 1 and cal_after[i] == 0 for i in ids)
    gained = sum(cal_before[i] == 0 and cal_after[i] == 1 for i in ids)
    mean = lambda values: float(np.mean(list(values.values())))  # noqa: E731
    return (f"| `{run.run_id}` | {mean(raw_before):.3f} -> {mean(raw_after):.3f} | {mean(cal_before):.3f} -> "
            f"{mean(cal_after):.3f} | {change.mean:+.3f} ({change.low:+.3f} to {change.high:+.3f}); {lost} / {gained}, "
            f"p = {mcnemar_exact_p(lost, gained):.2f} | {mean(cal_source):.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path)
    args = parser.parse_args()
    folders = args.runs or sorted(p for p in (ROOT / "cached_runs").iterdir() if (p / "manifest.json").is_file())
    print("| run | letters: target before -> after | batch-calibrated: before -> after | calibrated change "
          "(95% interval); lost / gained, McNemar p | source, calibrated |")
    print("|---|---|---|---|---|")
    for folder in folders:
        line = row(folder)
        if line:
            print(line)


if __name__ == "__main__":
    main()
