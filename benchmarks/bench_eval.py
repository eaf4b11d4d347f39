"""Log-likelihood throughput: the batched scorer against scoring one request at a time.

Requests are the MMLU 0-shot questions (first N per subject) with the four letters, as
``pkt eval --task mmlu`` asks them. "One by one" sends each (context, letter) pair in its own
forward pass, the naive loop; "batched" is :func:`loglikelihoods` as the runner calls it
(shared contexts scored once, left-padded batches, last-position logits only). Both must give
the same numbers; the script checks that before it reports the ratio.

Default model: a Qwen2 of the 0.5B target's shape with random weights and a few layers
(``--layers``), byte-level tokenizer; ``--model NAME`` uses a cached real model instead.

    python benchmarks/bench_eval.py [--model NAME_OR_PATH] [--per-subject 1] [--batch-size 8] [--device cuda]
"""

from __future__ import annotations

import argparse
import time

import torch

from pkt_core.evaluation.loglikelihood import LoglikelihoodRequest, loglikelihoods
from pkt_core.evaluation.prompts import build_prompt, mmlu_continuations, prompt_variant
from pkt_core.evaluation.splits import evaluation_items, limit_subset
from pkt_core.models.loading import load_model, wrap_loaded_model
from pkt_core.models.synthetic import byte_level_tokenizer, random_model_from_config

QWEN_05B_SHAPE = dict(
    hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2,
    vocab_size=151_936, max_position_embeddings=4096, tie_word_embeddings=True,
)


def build_model(args):
    if args.model:
        return load_model(args.model, dtype=args.dtype, device=args.device), f"{args.model} (real weights)"
    import transformers

    config = transformers.Qwen2Config(num_hidden_layers=args.layers, **QWEN_05B_SHAPE)
    config._attn_implementation = "sdpa"
    model = random_model_from_config(config).to(args.device)
    label = f"random Qwen2 of the 0.5B shape, {args.layers} layers, byte-level tokenizer"
    return wrap_loaded_model(model, byte_level_tokenizer(), "random-qwen2", device=args.device), label


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
    args = parser.parse_args()
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
