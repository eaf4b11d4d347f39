"""Log-likelihood throughput: the batched scorer against scoring one request at a time.

Requests are the MMLU 0-shot questions (first N per subject) with the four letters, as
``pkt eval --task mmlu`` asks them. "One by one" sends each (context, letter) pair in its own
forward pass, the naive loop; "batched" is :func:`loglikelihoods` as the runner calls it
(shared contexts scored once, left-padded batches, last-position logits only). Both must give
the same numbers; the script checks that before it reports the ratio.

Default model: a Qwen2 of the 0.5B target's shape with random weights and a few layers
(``--layers``), byte-level tokenizer; ``--model NAME`` uses a cached real model instead.

    python benchmarks/bench_eval.py [--model NAME_OR_PATH] [--per-subject 1] [--batch-size 8] [--device cuda]

``--compare-precision``: the same MMLU items evaluated (``evaluate``, result cache off) under
``fp32`` and under ``auto``, each in its own process: wall time and peak RSS per formulation with
the ratio auto / fp32, per-item agreement of the answers, the largest and mean absolute difference
of the gold answer's log-probability, and whether auto's accuracy lies in fp32's bootstrap interval.

    python benchmarks/bench_eval.py --compare-precision [--model NAME] [--per-subject 5] [--formulations mc,rc]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from precision_compare import POLICIES, isolated_environment, item_agreement, run_child, within_interval

from pkt_core.evaluation.loglikelihood import LoglikelihoodRequest, loglikelihoods
from pkt_core.evaluation.prompts import build_prompt, mmlu_continuations, prompt_variant
from pkt_core.evaluation.splits import evaluation_items, limit_subset
from pkt_core.models.loading import load_model, wrap_loaded_model
from pkt_core.models.synthetic import byte_level_tokenizer, random_model_from_config

QWEN_05B_SHAPE = {
    "hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14, "num_key_value_heads": 2,
    "vocab_size": 151_936, "max_position_embeddings": 4096, "tie_word_embeddings": True,
}


def build_model(args, precision: str | None = None):
    dtype = precision or args.dtype
    if args.model:
        return load_model(args.model, dtype=dtype, device=args.device), f"{args.model} (real weights)"
    import transformers

    config = transformers.Qwen2Config(num_hidden_layers=args.layers, **QWEN_05B_SHAPE)
    config._attn_implementation = "sdpa"
    model = random_model_from_config(config).to(args.device)
    label = f"random Qwen2 of the 0.5B shape, {args.layers} layers, byte-level tokenizer"
    return wrap_loaded_model(model, byte_level_tokenizer(), "random-qwen2", device=args.device, precision=dtype), label


def precision_child(args) -> None:
    """Evaluate under one policy in this process; items go to ``args.out/<formulation>``."""
    from pkt_core.evaluation.runner import EvalOptions, evaluate
    from pkt_core.jobs.resource_monitor import PeakMemoryMonitor

    loaded, label = build_model(args, args.precision)
    requests = [LoglikelihoodRequest(build_prompt(prompt_variant("mmlu"), item), letter)
                for item in limit_subset(evaluation_items("mmlu"), 1).items[:1] for letter in mmlu_continuations()]
    loglikelihoods(loaded, requests, batch_size=4)  # warm-up: first-call allocations stay out of timings
    costs = {}
    for formulation in args.formulations.split(","):
        options = EvalOptions(task="mmlu", limit=args.per_subject, batch_size=args.batch_size, use_cache=False,
                              formulation=formulation)
        with PeakMemoryMonitor() as monitor:
            evaluate(loaded, options, out=Path(args.out) / formulation)
        costs[formulation] = monitor.cost.to_record()
    print(json.dumps({"model": label, "precision": loaded.precision.record(), "costs": costs,
                      "process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def compare_precision(args, arguments: list[str]) -> None:
    from pkt_core.evaluation.records import read_items, read_summary

    with tempfile.TemporaryDirectory(prefix="pkt-bench-eval-precision-") as scratch:
        children = {policy: run_child(__file__, ["--child", "precision", "--precision", policy, "--out",
                                                 str(Path(scratch) / policy / "eval"), *arguments],
                                      isolated_environment(Path(scratch) / policy / "home"))
                    for policy in POLICIES}
        auto = children["auto"]["precision"]
        print(f"model: {children['fp32']['model']}; CPU ({torch.get_num_threads()} threads); MMLU, "
              f"{args.per_subject} per subject, batch {args.batch_size}; auto resolved to {auto['policy']} "
              f"({auto['reason']})")
        for formulation in args.formulations.split(","):
            folders = {policy: Path(scratch) / policy / "eval" / formulation for policy in POLICIES}
            reference, other = (children[policy]["costs"][formulation] for policy in POLICIES)
            agreement = item_agreement(read_items(folders["fp32"]), read_items(folders["auto"]))
            accuracy = {policy: read_summary(folders[policy])["metrics"]["acc"] for policy in POLICIES}
            print(f"{formulation}: wall fp32 {reference['wall_seconds']:.2f} s, auto {other['wall_seconds']:.2f} s, "
                  f"auto / fp32 {other['wall_seconds'] / reference['wall_seconds']:.3f}; peak RSS fp32 "
                  f"{reference['peak_rss_mib']:.0f} MiB, auto {other['peak_rss_mib']:.0f} MiB, "
                  f"ratio {other['peak_rss_mib'] / reference['peak_rss_mib']:.3f}")
            print(f"{formulation}: same answer on {agreement['same_prediction']:.1%} of {agreement['items']} items; "
                  f"gold log-prob |auto - fp32| max {agreement['gold_logprob_max_abs']:.4f}, mean "
                  f"{agreement['gold_logprob_mean_abs']:.5f}; acc fp32 {accuracy['fp32']['mean']:.4f} "
                  f"[{accuracy['fp32']['low']:.4f}, {accuracy['fp32']['high']:.4f}], auto {accuracy['auto']['mean']:.4f}, "
                  f"inside: {within_interval(accuracy['fp32'], accuracy['auto'])}")


def timed(function) -> tuple[float, object]:
    started = time.perf_counter()
    result = function()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a cached model name or folder (default: random weights)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--per-subject", type=int, default=1, help="MMLU questions per subject")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compare-precision", action="store_true", help="fp32 against auto on the same items")
    parser.add_argument("--formulations", default="mc", help="precision: mc (letters), rc (cloze) or mc,rc")
    parser.add_argument("--child", choices=["precision"], help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        precision_child(args)
        return
    if args.compare_precision:
        compare_precision(args, sys.argv[1:])
        return
    torch.set_grad_enabled(False)
    loaded, label = build_model(args)
    items = limit_subset(evaluation_items("mmlu"), args.per_subject).items
    requests = [LoglikelihoodRequest(build_prompt(prompt_variant("mmlu"), item), letter)
                for item in items for letter in mmlu_continuations()]
    loglikelihoods(loaded, requests[:4], batch_size=4)  # warm-up: first-call allocations stay out of timings
    batched_seconds, batched = timed(lambda: loglikelihoods(loaded, requests, batch_size=args.batch_size))
    single_seconds, single = timed(lambda: [loglikelihoods(loaded, [request], batch_size=1)[0] for request in requests])
    worst = max(abs(a.logprob - b.logprob) for a, b in zip(batched, single))
    if worst > 1e-2:
        raise SystemExit(f"batched and one-by-one scores differ by {worst:.2e}; not reporting a speed-up")
    print(f"model: {label}; {len(items)} MMLU questions, {len(requests)} requests")
    print(f"one by one : {single_seconds:8.2f} s  {len(requests) / single_seconds:8.1f} requests/s")
    rate = len(requests) / batched_seconds
    print(f"batched ({args.batch_size:>2}): {batched_seconds:8.2f} s  {rate:8.1f} requests/s")
    print(f"speed-up   : {single_seconds / batched_seconds:8.2f}x  (largest score difference {worst:.1e})")


if __name__ == "__main__":
    main()
