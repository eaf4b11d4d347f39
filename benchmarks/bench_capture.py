"""Capture overhead: time of `capture_batch` (hooks + row selection + copies) over a plain forward
of the same batches. Goal: ratio under 1.05.

Default model: the cached real target (qwen2.5-coder-0.5b) when present, else a model of its
config shape with random weights (``--random``, also what runs on a GPU machine without the
real files). Prints one line per setting and the ratio; timings are medians of interleaved runs.

    python benchmarks/bench_capture.py [--model NAME_OR_PATH | --random] [--device cuda] [--layers 6]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pkt_core.capture.hooks import CaptureOptions, capture_batch, position_ids_from_mask
from pkt_core.models.loading import load_model, wrap_loaded_model
from pkt_core.models.provisioning import is_cached
from pkt_core.models.synthetic import byte_level_tokenizer, random_model_from_config

QWEN_05B_SHAPE = dict(
    hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2,
    vocab_size=151_936, max_position_embeddings=4096, tie_word_embeddings=True,
)


def build_model(args):
    if not args.random and is_cached(args.model):
        return load_model(args.model, dtype=args.dtype, device=args.device), f"{args.model} (real weights)"
    import transformers

    config = transformers.Qwen2Config(num_hidden_layers=args.layers, **QWEN_05B_SHAPE)
    config._attn_implementation = "sdpa"
    model = random_model_from_config(config, dtype=torch.float32 if args.dtype == "fp32" else torch.bfloat16)
    model.to(args.device)
    label = f"random Qwen2 of the 0.5B shape with {args.layers} layers"
    return wrap_loaded_model(model, byte_level_tokenizer(), "random-qwen2-0.5b-shape", device=args.device), label


def synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--random", action="store_true", help="random weights of the 0.5B shape")
    parser.add_argument("--layers", type=int, default=6, help="layers of the random model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    loaded, label = build_model(args)
    model = loaded.model
    generator = torch.Generator().manual_seed(0)
    vocab = min(loaded.adapter.vocab_size, 5000)
    ids = torch.randint(0, vocab, (args.batch, args.tokens), generator=generator).to(loaded.input_device)
    mask = torch.ones_like(ids)
    mask[: args.batch // 2, : args.tokens // 4] = 0  # half the batch left-padded, as in real batches
    positions = position_ids_from_mask(mask)
    settings = {
        "all tokens, 3 sites": CaptureOptions(),
        "all tokens, resid_post": CaptureOptions(sites=("resid_post",)),
        "mean per sequence, 3 sites": CaptureOptions(token_selection="mean"),
    }

    def plain() -> None:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)

    runners = {"plain forward": plain}
    for name, options in settings.items():
        runners[name] = lambda options=options: capture_batch(model, ids, mask, options)
    for runner in runners.values():  # warm-up
        runner()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, runner in runners.items():  # interleaved, so drift hits every setting alike
            synchronise(args.device)
            started = time.perf_counter()
            runner()
            synchronise(args.device)
            times[name].append(time.perf_counter() - started)
    baseline = statistics.median(times["plain forward"])
    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"model: {label}; {loaded.adapter.num_layers} layers captured; batch {args.batch} x {args.tokens} tokens; "
          f"{args.dtype}; {device_name}")
    print(f"{'setting':<30} {'median s':>9} {'ratio':>7}")
    for name, values in times.items():
        ratio = statistics.median(values) / baseline
        print(f"{name:<30} {statistics.median(values):>9.3f} {ratio:>7.3f}")
    worst = max(statistics.median(v) for n, v in times.items() if n != "plain forward") / baseline
    print(f"capture overhead ratio (worst setting): {worst:.3f}  (goal < 1.05)")


if __name__ == "__main__":
    main()
