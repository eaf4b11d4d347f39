"""Greedy generation: dropping finished rows from the batch against keeping every row to the end.

HumanEval asks for up to 1,024 new tokens; in a batch of 8, one completion that never meets a
stop sequence used to drag the seven finished rows (and their KV cache) through every step.
Both modes must give the same completions; the script checks that before it reports the ratio.

Default model: the cached ``qwen2.5-coder-0.5b`` (real completions stop at different lengths,
which is the case that matters); ``--model`` names another, ``--random`` uses a Qwen2 of the
0.5B shape with random weights (its rows rarely stop, so the ratio is near 1: the floor).

    python benchmarks/bench_generation.py [--model NAME] [--random] [--problems 8] [--max-new-tokens 256]
"""

from __future__ import annotations

import argparse
import time

import torch

from pkt_core.evaluation.generation import generate_until
from pkt_core.evaluation.prompts import build_prompt, prompt_variant
from pkt_core.evaluation.splits import evaluation_items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--random", action="store_true", help="random weights of the 0.5B shape, 4 layers")
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    if args.random:
        import argparse as _argparse

        from bench_eval import build_model

        loaded, label = build_model(_argparse.Namespace(model=None, layers=4, device=args.device, dtype="fp32"))
    else:
        from pkt_core.models.loading import load_model

        loaded, label = load_model(args.model, device=args.device), args.model
    variant = prompt_variant("humaneval", max_new_tokens=args.max_new_tokens)
    items = evaluation_items("humaneval").items[: args.problems]
    prompts = [build_prompt(variant, item) for item in items]
    run = lambda compact: generate_until(loaded, prompts, variant.stop_sequences, args.max_new_tokens,  # noqa: E731
                                         batch_size=args.batch_size, compact=compact)
    started = time.perf_counter()
    whole = run(False)
    whole_seconds = time.perf_counter() - started
    started = time.perf_counter()
    compacted = run(True)
    compact_seconds = time.perf_counter() - started
    if [(g.text, g.num_tokens) for g in whole] != [(g.text, g.num_tokens) for g in compacted]:
        raise SystemExit("the two modes gave different completions; not reporting a speed-up")
    lengths = sorted(g.num_tokens for g in compacted)
    print(f"model: {label}; {len(prompts)} HumanEval prompts, batch {args.batch_size}, "
          f"max {args.max_new_tokens} new tokens; completion lengths {lengths}")
    print(f"whole batch to the end : {whole_seconds:8.2f} s")
    print(f"finished rows dropped  : {compact_seconds:8.2f} s")
    print(f"speed-up               : {whole_seconds / compact_seconds:8.2f}x (identical completions)")


if __name__ == "__main__":
    main()
