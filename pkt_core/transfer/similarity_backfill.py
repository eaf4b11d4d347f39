"""Bring a finished run's before-transfer similarity up to the full CKA / CCA family, without
retraining: capture the run's own probe texts with the untouched source and target, check the
rows reproduce the linear CKA the run already holds, then add every other measure.

The probes are drawn again from the run's recorded task and seed and must match its recorded ids;
the row subset is the run's own (:func:`~pkt_core.transfer.run_skeleton.row_subset`). The check
compares the recomputed linear CKA with the stored one and refuses to write anything when they
differ by more than :data:`REPRODUCTION_TOLERANCE` (different models, code or data): new
numbers are only added next to old ones they agree with. The views after transfer need the
transferred target, which a shipped run does not carry: they come when the run is recomputed.

``python -m pkt_core.transfer.similarity_backfill RUN [RUN ...]`` (runs sharing a probe set share
one capture).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from pkt_core.errors import PktError
from pkt_core.models.loading import LoadedModel, load_model
from pkt_core.runs.reader import open_run
from pkt_core.runs.writer import RunAmender
from pkt_core.transfer.alignment_data import tokenise_samples
from pkt_core.transfer.config import DEFAULT_SIMILARITY_MEASURES
from pkt_core.transfer.probe_similarity import probe_similarity_records
from pkt_core.transfer.run_skeleton import probe_rows, probe_token_mask, row_subset
from pkt_core.transfer.task_samples import load_alignment_and_probes

VIEW = "target_source_before"
REPRODUCTION_TOLERANCE = 1e-4


class BackfillError(PktError):
    """The run cannot be extended as asked (its probes or its stored numbers do not reproduce)."""


def probe_key(run) -> tuple:
    config = run.manifest.config
    return (config.get("task"), config.get("data_file"), config.get("probe_samples"), config.get("seed"),
            config.get("max_tokens"), tuple(run.manifest.data.probe_ids))


def before_rows(run, source: LoadedModel, target: LoadedModel):
    """The run's probe token rows (its own subset) of the untouched source and target, per layer."""
    config = run.manifest.config
    if run.manifest.across_tokenizers:
        raise BackfillError(f"{run.run_id}: a two-tokenizer run compares probe means; backfill handles one tokenizer")
    _, probes, _ = load_alignment_and_probes(config["task"], config.get("data_file"), config["align_samples"],
                                             config["probe_samples"], config["seed"])
    if [p.sample_id for p in probes] != run.manifest.data.probe_ids:
        raise BackfillError(f"{run.run_id}: the probes drawn again differ from the run's recorded probe ids")
    tokens = tokenise_samples(target.tokenizer, probes, config["max_tokens"])
    subset = row_subset(int(probe_token_mask(tokens).sum()), config["seed"])
    source_rows, _ = probe_rows(source, tokens, config["batch_size"], subset)
    target_rows, _ = probe_rows(target, tokens, config["batch_size"], subset)
    return target_rows, source_rows


def family_records(target_rows, source_rows, rows: str, measures=DEFAULT_SIMILARITY_MEASURES):
    """The family for the before view, linear CKA first (runs sharing a probe set share these)."""
    return probe_similarity_records(target_rows, source_rows, VIEW, rows,
                                    ["linear_cka", *[m for m in measures if m != "linear_cka"]])


def backfill_run(folder: Path, target_rows, source_rows, measures=DEFAULT_SIMILARITY_MEASURES,
                 computed=None) -> dict:
    """Add the family to one run; ``computed`` (records, skipped) from :func:`family_records` when
    another run of the same probe set already computed them."""
    run = open_run(folder)
    stored = run.similarity("linear_cka", VIEW)
    records, skipped = computed or family_records(target_rows, source_rows, stored.record.rows or "probe tokens",
                                                  measures)
    recomputed = np.asarray(records[0].values)
    difference = float(np.abs(recomputed - stored.values).max())
    if difference > REPRODUCTION_TOLERANCE:
        raise BackfillError(f"{run.run_id}: recomputed linear CKA differs from the stored one by {difference:.2e} "
                            f"(> {REPRODUCTION_TOLERANCE}); nothing written")
    amender = RunAmender(folder)
    for record in records[1:]:
        if (folder / f"similarity_{record.metric}_{VIEW}.json").exists():
            continue
        amender.save_similarity(record)
    amender.manifest.similarity_skipped.update({f"{m} {VIEW}": why for m, why in skipped.items()})
    amender.commit(f"CKA / CCA family for {VIEW}, from captures of the run's probes with the untouched models",
                   {"linear_cka_max_difference_to_stored": difference})
    return {"run": run.run_id, "added": amender.added, "linear_cka_max_difference": difference}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pkt_core.transfer.similarity_backfill",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--dtype", default=None, help="default: each run's own (its linear CKA must reproduce)")
    args = parser.parse_args(argv)
    groups: dict[tuple, list] = {}
    for folder in args.runs:
        run = open_run(folder)
        groups.setdefault(probe_key(run) + (run.manifest.source.reference, run.manifest.target.reference), []).append(run)
    for runs in groups.values():
        first = runs[0]
        dtype = args.dtype or first.manifest.config.get("dtype", "fp32")
        source = load_model(first.manifest.source.reference or first.manifest.source.name, dtype=dtype)
        target = load_model(first.manifest.target.reference or first.manifest.target.name, dtype=dtype)
        target_rows, source_rows = before_rows(first, source, target)
        del source, target
        started = time.perf_counter()
        computed = family_records(target_rows, source_rows,
                                  first.similarity("linear_cka", VIEW).record.rows or "probe tokens")
        print(f"{first.run_id} and {len(runs) - 1} run(s) sharing its probes: the family took "
              f"{time.perf_counter() - started:.0f} s (" + ", ".join(f"{r.metric} {r.seconds:.0f} s" for r in computed[0])
              + ")", flush=True)
        for run in runs:
            try:
                result = backfill_run(run.folder, target_rows, source_rows, computed=computed)
            except BackfillError as error:
                print(f"{run.run_id}: {error}", file=sys.stderr)
                continue
            print(f"{result['run']}: added {len(result['added'])} matrices (linear CKA reproduced to "
                  f"{result['linear_cka_max_difference']:.1e})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
