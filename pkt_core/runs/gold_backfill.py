"""Gold-answer measures for letter-formulation items scored before those measures existed.

A multiple-choice item in the letter formulation records the log-likelihood of each option's
letter (``details.loglikelihoods``). The continuous measures of
:mod:`pkt_core.evaluation.continuous` are a function of those numbers alone: the gold letter's
log-probability renormalised over the options, ``ll[gold] - logsumexp(ll)``, and its probability.
So a run evaluated before the measures existed gains them exactly, without a model: this module
adds the two columns to each such item table, their bootstrap intervals to the summary and the
manifest, and records the amendment. Cloze items are refused (their measure is the gold text's
summed log-likelihood, which the old records did not tag with a formulation), as is any record
whose stored prediction is not the argmax of its stored log-likelihoods.

    python -m pkt_core.runs.gold_backfill cached_runs/<run> [more runs]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pkt_core.errors import PktError
from pkt_core.evaluation.metrics import bootstrap_interval
from pkt_core.evaluation.prompts import MMLU_CHOICE_LETTERS
from pkt_core.evaluation.records import read_summary, write_items, write_summary
from pkt_core.evaluation.specs import task_of_key
from pkt_core.evaluation.tasks import CHOICE_TASKS
from pkt_core.runs.reader import open_run
from pkt_core.runs.schema import MetricValue
from pkt_core.runs.writer import RunAmender

LETTER_VARIANTS = ("harness-0shot", "harness-5shot")  # the letter prompts' names before formulations were recorded


class GoldBackfillError(PktError):
    """An item table cannot be given gold measures exactly."""


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _letter_rows(rows: list[dict], where: str) -> list[dict]:
    # Parquet gives a null text cell back to pandas as NaN; the writer wants None.
    rows = [{key: None if _missing(value) else value for key, value in row.items()} for row in rows]
    for row in rows:
        details = row["details"] if isinstance(row["details"], dict) else json.loads(row["details"] or "{}")
        lls = np.asarray(details.get("loglikelihoods") or [], dtype=np.float64)
        if len(lls) < 2 or row["target"] not in MMLU_CHOICE_LETTERS[: len(lls)]:
            raise GoldBackfillError(f"{where}: item {row['item_id']} has no per-option log-likelihoods for its gold "
                                    f"letter {row['target']!r}; it cannot be given gold measures")
        if MMLU_CHOICE_LETTERS[int(np.argmax(lls))] != row["prediction"]:
            raise GoldBackfillError(f"{where}: item {row['item_id']} predicts {row['prediction']!r} but its stored "
                                    "log-likelihoods rank another letter first: not a letter-formulation record")
        logprobs = lls - np.logaddexp.reduce(lls)
        gold = MMLU_CHOICE_LETTERS.index(row["target"])
        row["details"] = details
        row["gold_logprob"], row["gold_prob"] = float(logprobs[gold]), float(np.exp(logprobs[gold]))
    return rows


def backfill_run(folder: Path) -> dict:
    """Add the gold measures to every letter-formulation item table of a complete run that lacks them."""
    run = open_run(folder)
    amender = RunAmender(run.folder)
    filled = []
    for key, roles in run.evaluated_tasks().items():
        if task_of_key(key) not in CHOICE_TASKS:
            continue
        for role in roles:
            items = run.evaluation_items(key, role)
            if "gold_prob" in items.columns and items["gold_prob"].notna().all():
                continue
            where = f"{run.run_id} evaluation/{key}/{role}"
            shipped = run.manifest.shipped
            if shipped is not None and f"evaluation/{key}/{role}" in shipped.shared_folders:
                # Other shipped runs read the same shared copy: amending it here would change theirs.
                raise GoldBackfillError(f"{where} is stored in _shared/ for several shipped runs; backfill the "
                                        "unshipped run folder and ship it again")
            role_folder = run.evaluation_folder(key, role)
            summary = read_summary(role_folder)
            variant = (summary.get("variant") or {}).get("name")
            if items.get("formulation") is not None and items["formulation"].notna().any() or \
                    variant not in LETTER_VARIANTS:
                raise GoldBackfillError(f"{where}: scored as {variant!r}, not the letter formulation; only letter "
                                        "records can be given gold measures without the model")
            rows = _letter_rows(items.to_dict("records"), where)
            metrics = {"gold_logprob": bootstrap_interval([r["gold_logprob"] for r in rows]).as_dict(),
                       "gold_prob": bootstrap_interval([r["gold_prob"] for r in rows]).as_dict()}
            summary["metrics"].update(metrics)
            filled.append((key, role, role_folder, rows, summary, metrics))
    # Every table is checked before any is written: a refusal leaves the run exactly as it was.
    for key, role, role_folder, rows, summary, metrics in filled:
        write_items(role_folder, rows)
        write_summary(role_folder, summary)
        evaluation = getattr(amender.manifest.evaluation[key], role)
        evaluation.metrics.update({name: MetricValue.model_validate(value) for name, value in metrics.items()})
        amender.added.extend([f"evaluation/{key}/{role}/items.parquet", f"evaluation/{key}/{role}/summary.json"])
    filled = [f"{key}/{role}" for key, role, *_ in filled]
    if filled:
        amender.commit("gold-letter log-probability and probability mass per item (renormalised over the options), "
                       "computed exactly from the stored per-option log-likelihoods (pkt_core.runs.gold_backfill)",
                       {"evaluations": filled})
    return {"run": run.run_id, "filled": filled}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for folder in args.runs:
        print(json.dumps(backfill_run(folder)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
