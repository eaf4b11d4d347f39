"""Frontier schedule vs. a plain full-model fine-tune of the same number of optimizer steps:
wall time and peak memory of the training phase, each in its own process (clean peaks).
Goal: the frontier schedule's peak memory under 0.6x of the full fine-tune's.

Model: the cached real target (qwen2.5-coder-0.5b) with the real source for supervision when
both are present, else random models of the real pair's shapes (``--random``, e.g. on a GPU
machine without the real files). MMLU alignment samples.

    python benchmarks/bench_transfer.py [--random] [--stages 0-3] [--steps 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch

QWEN_SHAPES = {
    "source": dict(hidden_size=1536, intermediate_size=8960, num_attention_heads=12, num_key_value_heads=2, num_hidden_layers=28),
    "target": dict(hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2, num_hidden_layers=24),
}


def _models(args):
    from pkt_core.models.loading import load_model, wrap_loaded_model
    from pkt_core.models.provisioning import is_cached

    if not args.random and is_cached("qwen2.5-coder-0.5b") and is_cached("qwen2.5-coder-1.5b"):
        return (load_model("qwen2.5-coder-1.5b", device=args.device), load_model("qwen2.5-coder-0.5b", device=args.device),
                "real pair (Qwen2.5-Coder 1.5B -> 0.5B)")
    import transformers

    from pkt_core.models.synthetic import random_model_from_config

    tokenizer = _qwen_like_tokenizer()
    loaded = []
    for role, seed in (("source", 1), ("target", 2)):
        config = transformers.Qwen2Config(vocab_size=151_936, tie_word_embeddings=True, **QWEN_SHAPES[role])
        model = random_model_from_config(config, seed=seed).to(args.device)
        loaded.append(wrap_loaded_model(model, tokenizer, f"random-{role}", device=args.device))
    return loaded[0], loaded[1], "random weights, real pair shapes"


def _qwen_like_tokenizer():
    from pkt_core.models.synthetic import byte_level_tokenizer

    return byte_level_tokenizer()


def child(args) -> None:
    from pkt_core.capture.hooks import position_ids_from_mask
    from pkt_core.cli.arguments import parse_layer_list
    from pkt_core.jobs.resource_monitor import PeakMemoryMonitor
    from pkt_core.transfer.alignment_data import tokenise_samples
    from pkt_core.transfer.config import TransferConfig
    from pkt_core.transfer.forward import answer_loss
    from pkt_core.transfer.frontier import train_stage
    from pkt_core.transfer.layer_mapping import depth_map
    from pkt_core.transfer.semantic_bases import cross_model_map, semantic_basis
    from pkt_core.transfer.supervision import (
        _final_norm_cpu,
        build_supervision,
        collect_layer_states,
    )
    from pkt_core.transfer.task_samples import load_alignment_and_probes

    source, target, label = _models(args)
    stages = list(parse_layer_list(args.stages))
    samples, _, _ = load_alignment_and_probes("mmlu", None, args.samples, 0, seed=0)
    tokenised = tokenise_samples(target.tokenizer, samples, args.max_tokens)
    config = TransferConfig(source="s", target="t", variant=args.variant, task="mmlu", steps_per_stage=args.steps,
                            batch_size=args.batch_size, align_samples=args.samples)
    if args.child == "frontier":
        sites = {"contribution", "block_output"}
        before = collect_layer_states(target, tokenised, stages, sites, args.batch_size)
        cross = cross_model_map(semantic_basis(target.adapter.lm_head().weight), semantic_basis(source.adapter.lm_head().weight))
        supervision = build_supervision(source, before, tokenised, depth_map(source.adapter.num_layers, target.adapter.num_layers),
                                        cross, sites, stages, True, _final_norm_cpu(target), args.batch_size,
                                        with_answer_log_probs=bool(config.losses.get("output_kl")))
        del source, before
        import gc
        gc.collect()
        with PeakMemoryMonitor() as monitor:
            for k in stages:
                train_stage(target, k, tokenised, supervision, config)
    else:
        del source
        import gc
        gc.collect()
        model = target.model
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        with PeakMemoryMonitor() as monitor:
            for _ in range(len(stages) * args.steps):
                optimizer.zero_grad(set_to_none=True)
                for start in range(0, len(tokenised), args.batch_size):
                    batch = tokenised.select(list(range(start, min(start + args.batch_size, len(tokenised)))))
                    ids, mask = batch.input_ids.to(target.input_device), batch.attention_mask.to(target.input_device)
                    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
                    (answer_loss(logits, batch) * len(batch) / len(tokenised)).backward()
                optimizer.step()
    print(json.dumps({"mode": args.child, "model": label, **monitor.cost.to_record(),
                      "process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--random", action="store_true")
    parser.add_argument("--stages", default="0-3", help="target layers trained (the full fine-tune takes as many steps)")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--variant", default="v1")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", choices=["frontier", "full"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    results = {}
    for mode in ("frontier", "full"):
        command = [sys.executable, __file__, "--child", mode, *sys.argv[1:]]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode != 0:
            sys.exit(f"{mode} failed:\n{completed.stderr[-3000:]}")
        results[mode] = json.loads(completed.stdout.strip().splitlines()[-1])
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"model: {results['frontier']['model']}; {device}; stages {args.stages}, {args.steps} step(s) each, "
          f"{args.samples} samples x <= {args.max_tokens} tokens; variant {args.variant}")
    key = "peak_gpu_mib" if args.device.startswith("cuda") else "peak_rss_mib"
    for mode, record in results.items():
        print(f"{mode:<9} wall {record['wall_seconds']:>8.1f} s   peak {record[key]:>9.1f} MiB")
    ratio = results["frontier"][key] / results["full"][key]
    print(f"peak memory ratio frontier / full fine-tune: {ratio:.3f}  (goal < 0.6)")
    print(f"wall time ratio frontier / full fine-tune: {results['frontier']['wall_seconds'] / results['full']['wall_seconds']:.3f}")


if __name__ == "__main__":
    main()
