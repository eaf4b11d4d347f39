"""What the CKA / CCA family costs inside a run, on the real pair's shapes.

Every run computes eight measures for three views on its probe rows (up to 1024 tokens): target
(24 layers x 896) against source (28 x 1536), twice, and target against target after. This times
each measure on random rows of exactly those shapes (the cost does not depend on the values) and
prints each as a share of a run's wall time, the floor being the shipped SemAlign MMLU run's
measured wall time on this machine (read from its manifest, same hardware).

    python benchmarks/bench_probe_similarity.py [--rows 1024]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pkt_core.transfer.probe_similarity import probe_similarity_records  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--run", default=str(ROOT / "cached_runs" / "semalign-acl-fisher-mmlu-a32-s2-lr3e-5"),
                        help="the run whose wall time is the reference")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    target = {l: torch.randn(args.rows, 896, generator=generator) for l in range(24)}
    source = {l: torch.randn(args.rows, 1536, generator=generator) for l in range(28)}
    started = time.perf_counter()
    records, skipped = probe_similarity_records(target, source, "target_source_before", "random rows")
    cross = time.perf_counter() - started
    started = time.perf_counter()
    probe_similarity_records(target, {l: t.clone() for l, t in target.items()}, "target_before_after", "random rows")
    within = time.perf_counter() - started
    per_run = 2 * cross + within  # before and after against the source, and target before x after
    from pkt_core.runs.reader import open_run

    reference = open_run(args.run).manifest.wall_seconds
    print(f"probe similarity on {args.rows} rows, 24 x 896 vs 28 x 1536; {os.cpu_count()} CPU(s), "
          f"{torch.get_num_threads()} threads")
    for record in records:
        print(f"  {record.metric:<22} {record.seconds:8.1f} s per target x source view")
    if skipped:
        print("  skipped: " + "; ".join(f"{m}: {why}" for m, why in skipped.items()))
    print(f"per run (3 views): {per_run:.0f} s; the reference run {Path(args.run).name} took {reference:.0f} s: "
          f"ratio {per_run / reference:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
