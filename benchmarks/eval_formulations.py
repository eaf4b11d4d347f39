"""The numbers of RESULTS.md's "Formulations and continuous measures" section, from `pkt eval` folders.

    python benchmarks/eval_formulations.py ROOT [--runs cached_runs]

ROOT holds one folder per model (``qwen2.5-coder-0.5b``, ``qwen2.5-coder-1.5b``), each with one
``pkt eval`` output folder per task and formulation (``mmlu_mc``, ``mmlu_rc``, ``arc_easy_rc``,
``humaneval``). Prints, per evaluation, the metrics with intervals and the answer-format block;
then, on the items both models share, source - target paired differences of the continuous
measures and the items that flip; then the predicted-letter distribution of every shipped
run's target before and after (``--runs``), which needs no model.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import pandas as pd

from pkt_core.evaluation.continuous import paired_measures
from pkt_core.evaluation.records import read_items, read_summary

MODELS = ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
SHOWN = ("acc", "acc_norm", "acc_pride", "acc_on_pride_items", "acc_circular", "gold_logprob", "gold_prob",
         "gold_logprob_per_char", "gold_logprob_per_token", "pass@1")


def _cell(value: dict) -> str:
    return f"{value['mean']:.3f} ({value['low']:.3f} to {value['high']:.3f})"


def describe(root: Path) -> None:
    evaluations = sorted({folder.name for model in MODELS if (root / model).is_dir()
                          for folder in (root / model).iterdir() if (folder / "summary.json").is_file()})
    for name in evaluations:
        print(f"\n### {name}\n")
        print("| model | n | " + " | ".join(SHOWN) + " | predicted letters | flags |")
        print("|---" * (len(SHOWN) + 4) + "|")
        for model in MODELS:
            folder = root / model / name
            if not (folder / "summary.json").is_file():
                continue
            summary = read_summary(folder)
            metrics = summary["metrics"]
            block = summary.get("answer_format")
            letters = " ".join(f"{k}{v}" for k, v in block["predicted"].items()) if block else "-"
            flags = ", ".join(f for f, on in (("at chance", block and block["at_chance"]),
                                              ("one option dominates", block and block["dominated"])) if on) or "-"
            cells = [_cell(metrics[m]) if m in metrics else "-" for m in SHOWN]
            print(f"| {model} | {summary['subset']['count']} | " + " | ".join(cells) + f" | {letters} | {flags} |")
        source, target = (root / MODELS[1] / name), (root / MODELS[0] / name)
        if (source / "items.parquet").is_file() and (target / "items.parquet").is_file():
            s, t = read_items(source), read_items(target)
            for measure, entry in paired_measures(t, source=s).items():
                print(f"\nsource - target, {measure}: {_cell(entry['source_minus_before'])}")
            merged = pd.merge(t, s, on="item_id", suffixes=("_t", "_s"))
            if merged["score_t"].notna().all():
                gained = merged[(merged.score_s == 1) & (merged.score_t == 0)]
                lost = merged[(merged.score_s == 0) & (merged.score_t == 1)]
                print(f"items right for the source only: {len(gained)}; for the target only: {len(lost)}")
                for _, row in gained.head(3).iterrows():
                    print(f"  {row.item_id}: gold {row.target_t}, target {row.prediction_t}, source {row.prediction_s}; "
                          f"gold log-prob {row.gold_logprob_t:.2f} -> {row.gold_logprob_s:.2f}")


def shipped_letters(runs: Path) -> None:
    print("\n### predicted letters of the shipped MMLU runs (285 items)\n")
    for path in sorted(runs.glob("*/evaluation/mmlu/target_after/items.parquet")):
        items = pd.read_parquet(path)
        counts = collections.Counter(items["prediction"])
        print(f"- {path.parts[-5]}: " + " ".join(f"{k}{counts.get(k, 0)}" for k in "ABCD")
              + f", acc {items['score'].mean():.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--runs", type=Path, default=Path("cached_runs"))
    args = parser.parse_args()
    describe(args.root)
    shipped_letters(args.runs)
    print(json.dumps({"root": str(args.root)}))


if __name__ == "__main__":
    main()
