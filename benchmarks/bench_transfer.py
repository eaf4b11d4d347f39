"""Frontier schedule vs. a plain full-model fine-tune of the same number of optimizer steps:
wall time and peak memory of the training phase, each in its own process (clean peaks).
Goal: the frontier schedule's peak memory under 0.6x of the full fine-tune's.

Model: the cached real target (qwen2.5-coder-0.5b) with the real source for supervision when
both are present, else random models of the real pair's shapes (``--random``, e.g. on a GPU
machine without the real files). MMLU alignment samples.

    python benchmarks/bench_transfer.py [--random] [--stages 0-3] [--steps 1] [--device cpu]

``--compare-precision``: the standard SemAlign MMLU run (``pkt transfer --variant v1 --task mmlu
--align-samples 16 --probe-samples 32 --steps 1 --batch-size 8``, on ``--stages``; with
``--eval-limit N`` also its MMLU evaluation of source, target before and after) under ``fp32`` and
under ``auto``, each in its own process with empty result caches. It reports per stage wall time
and peak RSS with the ratio auto / fp32 (goal: the whole run at most 0.5), the set-up stages
(bases, probe capture, fidelity, attribution, supervision; cold caches) against the frontier
stages they serve (goal under 1), each frontier stage's achieved FLOP rate against this machine's
GEMM floor for its dtype (``gemm_floor.py``; goal 50 % or more), and whether the two precisions agree: weight deltas
(cosine per tensor), stage losses, per-item answers, and target-after accuracy inside the fp32
run's bootstrap interval.

    python benchmarks/bench_transfer.py --compare-precision [--random [--random-layers 24:28]] \
        [--stages all] [--eval-limit 5] [--work-dir DIR]

``--compare-replay``: the frontier stages of one process, on one supervision, trained twice from
the same target weights: the plain schedule (every step forwards the prefix 0..k) and the
replayed one (``pkt_core.transfer.frontier_replay``, what runs use). Per stage: wall time of
each, the ratio, and whether the two deltas are equal bit for bit.

    python benchmarks/bench_transfer.py --compare-replay --variant acl-fisher --samples 32 --steps 2 \
        --stages 0,8,16,23 [--precision auto]

``--compare-frozen-cast``: the replayed stages under ``auto`` twice, once with autocast casting
the frozen blocks' float32 weights at every forward, once with them cast once per stage
(``pkt_core.models.precision.frozen_linears_in_compute_dtype``, what runs use). Per stage: both
wall times (the mean of two passes in ABBA order), the ratio, the achieved GFLOP/s, and whether
the deltas are equal bit for bit.

    python benchmarks/bench_transfer.py --compare-frozen-cast --variant acl-fisher --samples 32 --steps 2 \
        --stages 0,8,16,23 [--random]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from precision_compare import (
    POLICIES,
    delta_agreement,
    isolated_environment,
    item_agreement,
    loss_agreement,
    run_child,
    within_interval,
)

QWEN_SHAPES = {
    "source": {"hidden_size": 1536, "intermediate_size": 8960, "num_attention_heads": 12, "num_key_value_heads": 2,
               "num_hidden_layers": 28},
    "target": {"hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14, "num_key_value_heads": 2,
               "num_hidden_layers": 24},
}


def _models(args, precision: str = "fp32"):
    from pkt_core.models.loading import load_model, wrap_loaded_model
    from pkt_core.models.provisioning import is_cached

    if not args.random and is_cached("qwen2.5-coder-0.5b") and is_cached("qwen2.5-coder-1.5b"):
        return (load_model("qwen2.5-coder-1.5b", dtype=precision, device=args.device),
                load_model("qwen2.5-coder-0.5b", dtype=precision, device=args.device),
                "real pair (Qwen2.5-Coder 1.5B -> 0.5B)")
    import transformers

    from pkt_core.models.synthetic import random_model_from_config

    tokenizer = _qwen_like_tokenizer()
    target_layers, source_layers = (int(n) for n in args.random_layers.split(":"))
    layers = {"source": source_layers, "target": target_layers}
    loaded = []
    for role, seed in (("source", 1), ("target", 2)):
        shape = {**QWEN_SHAPES[role], "num_hidden_layers": layers[role]}
        config = transformers.Qwen2Config(vocab_size=151_936, tie_word_embeddings=True, **shape)
        model = random_model_from_config(config, seed=seed).to(args.device)
        loaded.append(wrap_loaded_model(model, tokenizer, f"random-{role}", device=args.device, precision=precision))
    return loaded[0], loaded[1], f"random weights, real pair shapes ({target_layers} target / {source_layers} source layers)"


def _qwen_like_tokenizer():
    from pkt_core.models.synthetic import byte_level_tokenizer

    return byte_level_tokenizer()


def _stage_supervision(source, target, tokenised, stages, config, batch_size):
    """SemAlign's supervision of ``stages`` from the real (or random) source, as a run builds it."""
    from pkt_core.transfer.layer_mapping import depth_map
    from pkt_core.transfer.semantic_bases import cross_model_map, semantic_basis
    from pkt_core.transfer.supervision import _final_norm_cpu, build_supervision, collect_layer_states

    sites = {"contribution", "block_output"}
    before = collect_layer_states(target, tokenised, stages, sites, batch_size)
    cross = cross_model_map(semantic_basis(target.adapter.lm_head().weight), semantic_basis(source.adapter.lm_head().weight))
    return build_supervision(source, before, tokenised, depth_map(source.adapter.num_layers, target.adapter.num_layers),
                             cross, sites, stages, True, _final_norm_cpu(target), batch_size,
                             with_answer_log_probs=bool(config.losses.get("output_kl")))


def child(args) -> None:
    from pkt_core.capture.hooks import position_ids_from_mask
    from pkt_core.cli.arguments import parse_layer_list
    from pkt_core.jobs.resource_monitor import PeakMemoryMonitor
    from pkt_core.transfer.alignment_data import tokenise_samples
    from pkt_core.transfer.config import TransferConfig
    from pkt_core.transfer.forward import answer_loss
    from pkt_core.transfer.frontier import train_stage
    from pkt_core.transfer.frontier_replay import FrontierReplay
    from pkt_core.transfer.task_samples import load_alignment_and_probes

    source, target, label = _models(args)
    stages = list(parse_layer_list(args.stages))
    samples, _, _ = load_alignment_and_probes("mmlu", None, args.samples, 0, seed=0)
    tokenised = tokenise_samples(target.tokenizer, samples, args.max_tokens)
    config = TransferConfig(source="s", target="t", variant=args.variant, task="mmlu", steps_per_stage=args.steps,
                            batch_size=args.batch_size, align_samples=args.samples)
    if args.child == "frontier":
        supervision = _stage_supervision(source, target, tokenised, stages, config, args.batch_size)
        del source
        import gc
        gc.collect()
        with PeakMemoryMonitor() as monitor:
            replay = FrontierReplay(target, tokenised, config.batch_size, stages[0])
            for k in stages:  # as run_frontier_schedule trains them
                replay.advance_to(k)
                train_stage(target, k, tokenised, supervision, config, replay=replay)
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


# The standard SemAlign MMLU run (the shipped runs' settings), the precision comparison's default.
STANDARD_RUN = {"samples": 16, "probe_samples": 32, "max_tokens": 256}
# What prepares the frontier stages (issue 16's list, as benchmarks/bench_pipeline.py counts it).
SETUP_STAGES = ("bases", "probe_before", "fidelity", "attribution", "supervision")


def _frontier_stage(name: str) -> bool:
    return name.startswith("stage-")


def precision_child(args) -> None:
    """One policy's standard run, in this process; prints what the parent cannot read from the run folder."""
    from pkt_core.cli.arguments import parse_layer_list
    from pkt_core.transfer.alignment_data import tokenise_samples
    from pkt_core.transfer.config import TransferConfig
    from pkt_core.transfer.pipeline import run_transfer
    from pkt_core.transfer.stage_flops import block_shape, frontier_stage_flops
    from pkt_core.transfer.stages import frontier_layers
    from pkt_core.transfer.task_samples import load_alignment_and_probes

    started = time.monotonic()
    source, target, label = _models(args, args.precision)
    load_seconds = time.monotonic() - started
    stages = parse_layer_list(args.stages)
    config = TransferConfig(source=source.name, target=target.name, variant=args.variant, task="mmlu",
                            align_samples=args.samples, probe_samples=args.probe_samples, steps_per_stage=args.steps,
                            batch_size=args.batch_size, max_tokens=args.max_tokens,
                            stages=None if stages is None else list(stages), dtype=args.precision,
                            eval_tasks=["mmlu"] if args.eval_limit else [], eval_limit=args.eval_limit or None,
                            fidelity=args.fidelity, linear_probe_items=args.probe_items,
                            similarity_measures=args.similarity.split(","))
    samples = load_alignment_and_probes("mmlu", None, config.align_samples, config.probe_samples, config.seed)
    tokenised = tokenise_samples(target.tokenizer, samples[0], config.max_tokens)
    # The schedule replays its stages (pkt_core.transfer.frontier_replay): the first records, each
    # next one carries the recorded states from the previous stage's block.
    layers = sorted(frontier_layers(target, config))
    flops = {f"stage-{k:03d}": frontier_stage_flops(target, tokenised, k, config,
                                                    carried_from=layers[i - 1] if i else None)
             for i, k in enumerate(layers)}
    batch_tokens = [int(tokenised.select(list(range(i, min(i + config.batch_size, len(tokenised))))).input_ids.numel())
                    for i in range(0, len(tokenised), config.batch_size)]
    run_transfer(config, out_dir=args.out, overwrite=True, source=source, target=target, samples=samples)
    print(json.dumps({"model": label, "precision": target.precision.record(), "load_seconds": round(load_seconds, 2),
                      "flops": {name: {"blocks": f.blocks, "head_and_losses": f.head_and_losses}
                                for name, f in flops.items()},
                      "batch_tokens": batch_tokens, "linears": [list(shape) for shape in block_shape(target, 0).linears],
                      "process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _stage_table(runs: dict) -> list[str]:
    reference, other = (runs[policy].manifest.stages for policy in POLICIES)
    lines = [f"{'stage':<26}{'fp32 s':>9}{'auto s':>9}{'ratio':>7}{'fp32 MiB':>10}{'auto MiB':>10}{'ratio':>7}"]
    for name, cost in reference.items():
        if name not in other:
            continue
        mine = other[name]
        lines.append(f"{name:<26}{cost.wall_seconds:>9.2f}{mine.wall_seconds:>9.2f}"
                     f"{mine.wall_seconds / max(cost.wall_seconds, 1e-9):>7.2f}{cost.peak_rss_mib:>10.0f}"
                     f"{mine.peak_rss_mib:>10.0f}{mine.peak_rss_mib / max(cost.peak_rss_mib, 1e-9):>7.2f}")
    return lines


def _group_seconds(stages: dict) -> dict[str, float]:
    groups = {"set-up": 0.0, "frontier": 0.0, "measurement and evaluation": 0.0}
    for name, cost in stages.items():
        group = "frontier" if _frontier_stage(name) else "set-up" if name in SETUP_STAGES else "measurement and evaluation"
        groups[group] += cost.wall_seconds
    return groups


def _floor_lines(children: dict, runs: dict, repeats: int) -> list[str]:
    from gemm_floor import measure_floor

    from pkt_core.transfer.stage_flops import FORMULA

    tokens = round(sum(children["fp32"]["batch_tokens"]) / len(children["fp32"]["batch_tokens"]))
    linears = [tuple(shape) for shape in children["fp32"]["linears"]]
    compute = {policy: children[policy]["precision"]["compute"] for policy in POLICIES}
    floors = {dtype: measure_floor(linears, tokens, dtype, repeats) for dtype in sorted(set(compute.values()) | {"fp32"})}
    lines = ["GEMM floor (gemm_floor.py, the block's Linear products at the mean batch of "
             f"{tokens} token rows): " + ", ".join(f"{d} {f.gflops:.1f} GFLOP/s" for d, f in floors.items()),
             f"FLOP count (pkt_core.transfer.stage_flops): {FORMULA}",
             ("share of floor = (block FLOPs / floor of the policy's compute dtype + head and loss FLOPs / fp32 floor) "
              "/ stage wall"),
             f"{'stage':<12}{'GFLOP':>9}" + "".join(f"{policy + ' GFLOP/s':>15}{'of floor':>10}" for policy in POLICIES)]
    for name, flops in children["fp32"]["flops"].items():
        row = f"{name:<12}{(flops['blocks'] + flops['head_and_losses']) / 1e9:>9.1f}"
        for policy in POLICIES:
            counted = children[policy]["flops"][name]
            wall = runs[policy].manifest.stages[name].wall_seconds
            floor_seconds = (counted["blocks"] / (floors[compute[policy]].gflops * 1e9)
                             + counted["head_and_losses"] / (floors["fp32"].gflops * 1e9))
            rate = (counted["blocks"] + counted["head_and_losses"]) / wall / 1e9
            row += f"{rate:>15.1f}{floor_seconds / wall:>9.0%} "
        lines.append(row)
    return lines


def _agreement_lines(runs: dict) -> list[str]:
    reference, other = (runs[policy] for policy in POLICIES)
    delta = delta_agreement(reference.weight_delta(), other.weight_delta())
    losses = loss_agreement(reference.table_frame("stage_losses.parquet"), other.table_frame("stage_losses.parquet"))
    lines = [(f"weight deltas: {delta['tensors']} tensors, cosine auto vs fp32 min {delta['cosine_min']:.4f} "
              f"({delta['worst_tensor']}), median {delta['cosine_median']:.4f}; norm ratio median "
              f"{delta['norm_ratio_median']:.3f}"),
             (f"stage losses: largest relative difference {losses['relative_max']:.2e} over {losses['steps']} steps "
              f"(first steps of the stages: {losses['first_step_relative_max']:.2e}; stage 0's first step runs "
              "before any update)")]
    for task, roles in reference.evaluated_tasks().items():
        for role in roles:
            if role not in other.evaluated_tasks().get(task, []):
                continue
            mine, theirs = reference.evaluation_summary(task, role), other.evaluation_summary(task, role)
            acc_ref, acc_other = mine.metrics["acc"].model_dump(), theirs.metrics["acc"].model_dump()
            items = item_agreement(reference.evaluation_items(task, role), other.evaluation_items(task, role))
            lines.append(f"{task} {role:<14} acc fp32 {acc_ref['mean']:.4f} [{acc_ref['low']:.4f}, {acc_ref['high']:.4f}]"
                         f"  auto {acc_other['mean']:.4f}  inside: {within_interval(acc_ref, acc_other)}; "
                         f"same answer {items['same_prediction']:.1%} of {items['items']}, gold log-prob "
                         f"|diff| max {items['gold_logprob_max_abs']:.3f} mean {items['gold_logprob_mean_abs']:.4f}")
    return lines


def compare_precision(args) -> None:
    from pkt_core.runs.reader import open_run

    with tempfile.TemporaryDirectory(prefix="pkt-bench-precision-") as scratch:
        work = Path(args.work_dir) if args.work_dir else Path(scratch)
        children, runs = {}, {}
        for policy in POLICIES:
            folder = work / policy
            arguments = ["--child", "precision", "--precision", policy, "--out", str(folder / "run"), *sys.argv[1:]]
            children[policy] = run_child(__file__, arguments, isolated_environment(folder / "home"))
            runs[policy] = open_run(folder / "run")
        device = f"CPU ({torch.get_num_threads()} threads)" if not args.device.startswith("cuda") \
            else torch.cuda.get_device_name(0)
        auto = children["auto"]["precision"]
        print(f"model: {children['fp32']['model']}; {device}; SemAlign {args.variant}, MMLU, stages {args.stages}, "
              f"{args.steps} step(s), {args.samples} samples x <= {args.max_tokens} tokens, batch {args.batch_size}, "
              f"eval limit {args.eval_limit or 'none'}")
        print(f"auto resolved to {auto['policy']} ({auto['reason']})")
        print("\n".join(_stage_table(runs)))
        walls = {policy: runs[policy].manifest.wall_seconds for policy in POLICIES}
        print(f"whole run (manifest wall, models loaded before): fp32 {walls['fp32']:.1f} s, auto {walls['auto']:.1f} s, "
              f"auto / fp32 {walls['auto'] / walls['fp32']:.3f}  (goal <= 0.5); model load fp32 "
              f"{children['fp32']['load_seconds']:.1f} s, auto {children['auto']['load_seconds']:.1f} s")
        for policy in POLICIES:
            groups = _group_seconds(runs[policy].manifest.stages)
            print(f"{policy}: set-up {groups['set-up']:.1f} s : frontier {groups['frontier']:.1f} s = "
                  f"{groups['set-up'] / max(groups['frontier'], 1e-9):.3f}  (goal < 1); measurement and evaluation "
                  f"{groups['measurement and evaluation']:.1f} s")
        print("\n".join(_floor_lines(children, runs, args.floor_repeats)))
        print("\n".join(_agreement_lines(runs)))


def _stage_bench_setup(args, default_precision: str):
    """What the in-process stage benchmarks share: the models, the stages, the MMLU alignment
    samples, the config, one supervision for those stages and the target's untouched weights."""
    from pkt_core.cli.arguments import parse_layer_list
    from pkt_core.transfer.alignment_data import tokenise_samples
    from pkt_core.transfer.config import TransferConfig
    from pkt_core.transfer.task_samples import load_alignment_and_probes

    source, target, label = _models(args, args.precision or default_precision)
    stages = sorted(parse_layer_list(args.stages) or range(target.adapter.num_layers))
    samples, _, _ = load_alignment_and_probes("mmlu", None, args.samples, 0, seed=0)
    tokenised = tokenise_samples(target.tokenizer, samples, args.max_tokens)
    config = TransferConfig(source="s", target="t", variant=args.variant, task="mmlu", steps_per_stage=args.steps,
                            batch_size=args.batch_size, align_samples=args.samples)
    supervision = _stage_supervision(source, target, tokenised, stages, config, args.batch_size)
    del source
    untouched = {name: tensor.clone() for name, tensor in target.model.state_dict().items()}
    return target, label, stages, tokenised, config, supervision, untouched


def compare_replay(args) -> None:
    """Plain against replayed frontier stages on the same supervision, in this process."""
    from pkt_core.transfer.frontier import train_stage
    from pkt_core.transfer.frontier_replay import FrontierReplay
    from pkt_core.transfer.stage_flops import frontier_stage_flops

    target, label, stages, tokenised, config, supervision, untouched = _stage_bench_setup(args, "fp32")
    results: dict[str, list[tuple[float, dict]]] = {}
    for mode in ("plain", "replay"):
        target.model.load_state_dict(untouched)
        replay, rows = None, []
        for k in stages:
            started = time.perf_counter()
            if mode == "replay":
                replay = replay or FrontierReplay(target, tokenised, config.batch_size, k)
                replay.advance_to(k)
            _, delta = train_stage(target, k, tokenised, supervision, config, replay=replay)
            rows.append((time.perf_counter() - started, delta))
        results[mode] = rows
    print(f"model: {label}; precision {target.precision.name}; CPU ({torch.get_num_threads()} threads); "
          f"variant {args.variant}, {args.samples} samples, {args.steps} step(s), batch {args.batch_size}")
    print(f"{'stage':<7}{'plain s':>9}{'replay s':>10}{'replay / plain':>16}{'GFLOP plain':>13}{'GFLOP replay':>14}  same delta")
    for i, k in enumerate(stages):
        (plain_s, plain_delta), (replay_s, replay_delta) = results["plain"][i], results["replay"][i]
        same = set(plain_delta) == set(replay_delta) and all(torch.equal(plain_delta[n], replay_delta[n]) for n in plain_delta)
        plain_flops = frontier_stage_flops(target, tokenised, k, config).total / 1e9
        replay_flops = frontier_stage_flops(target, tokenised, k, config, carried_from=stages[i - 1] if i else None).total / 1e9
        print(f"{k:<7}{plain_s:>9.1f}{replay_s:>10.1f}{replay_s / plain_s:>16.2f}{plain_flops:>13.1f}{replay_flops:>14.1f}  {same}")
    total_plain = sum(t for t, _ in results["plain"])
    total_replay = sum(t for t, _ in results["replay"])
    print(f"all stages: plain {total_plain:.1f} s, replay {total_replay:.1f} s, replay / plain {total_replay / total_plain:.2f}")


def compare_frozen_cast(args) -> None:
    """Frontier stages (replayed, as runs train) with the frozen blocks cast once per stage against
    autocast re-casting them at every forward; same supervision, same starting weights."""
    import contextlib

    import pkt_core.transfer.frontier as frontier
    from pkt_core.transfer.frontier_replay import FrontierReplay
    from pkt_core.transfer.stage_flops import frontier_stage_flops

    target, label, stages, tokenised, config, supervision, untouched = _stage_bench_setup(args, "auto")
    cast_once = frontier.frozen_linears_in_compute_dtype
    results: dict[str, list[tuple[float, dict]]] = {}
    # ABBA order, each mode's time the mean of its two passes: the first pass also pays the
    # one-time warm-up (kernel selection, first touch), which would favour whichever ran second.
    for mode in ("recast", "cast once", "cast once", "recast"):
        frontier.frozen_linears_in_compute_dtype = (
            cast_once if mode == "cast once" else (lambda modules, policy: contextlib.nullcontext(0)))
        target.model.load_state_dict(untouched)
        replay, rows = None, []
        for k in stages:
            started = time.perf_counter()
            replay = replay or FrontierReplay(target, tokenised, config.batch_size, k)
            replay.advance_to(k)
            _, delta = frontier.train_stage(target, k, tokenised, supervision, config, replay=replay)
            rows.append((time.perf_counter() - started, delta))
        if mode in results:
            rows = [((t0 + t1) / 2, first) for (t0, first), (t1, _) in zip(results[mode], rows)]
        results[mode] = rows
    frontier.frozen_linears_in_compute_dtype = cast_once
    print(f"model: {label}; precision {target.precision.name}; CPU ({torch.get_num_threads()} threads); "
          f"variant {args.variant}, {args.samples} samples, {args.steps} step(s), batch {args.batch_size}")
    print(f"{'stage':<7}{'recast s':>10}{'cast once s':>13}{'once / recast':>15}{'GFLOP/s once':>14}  same delta")
    for i, k in enumerate(stages):
        (recast_s, recast_delta), (once_s, once_delta) = results["recast"][i], results["cast once"][i]
        same = set(recast_delta) == set(once_delta) and all(torch.equal(recast_delta[n], once_delta[n])
                                                            for n in recast_delta)
        flops = frontier_stage_flops(target, tokenised, k, config, carried_from=stages[i - 1] if i else None).total
        print(f"{k:<7}{recast_s:>10.1f}{once_s:>13.1f}{once_s / recast_s:>15.2f}{flops / once_s / 1e9:>14.0f}  {same}")
    total_recast = sum(t for t, _ in results["recast"])
    total_once = sum(t for t, _ in results["cast once"])
    print(f"all stages: recast {total_recast:.1f} s, cast once {total_once:.1f} s, once / recast "
          f"{total_once / total_recast:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--random", action="store_true")
    parser.add_argument("--random-layers", default="24:28", help="--random: target:source layer counts")
    parser.add_argument("--stages", default="0-3", help="target layers trained (the full fine-tune takes as many steps)")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--samples", type=int, default=None, help="alignment samples (default 8; precision: 16)")
    parser.add_argument("--probe-samples", type=int, default=STANDARD_RUN["probe_samples"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=None, help="default 128; precision: 256")
    parser.add_argument("--variant", default="v1")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compare-precision", action="store_true", help="fp32 against auto on the standard run")
    parser.add_argument("--compare-replay", action="store_true", help="plain against replayed frontier stages")
    parser.add_argument("--compare-frozen-cast", action="store_true",
                        help="frozen blocks cast once per stage against autocast's cast at every forward (auto)")
    parser.add_argument("--eval-limit", type=int, default=0, help="precision: MMLU items per subject (0: no evaluation)")
    parser.add_argument("--fidelity", action=argparse.BooleanOptionalAction, default=True,
                        help="precision: the run's fidelity stage (as pkt transfer: on)")
    parser.add_argument("--probe-items", type=int, default=300,
                        help="precision: linear-probe items (as pkt transfer: 300; 0 leaves the probe stages out)")
    parser.add_argument("--similarity", default="linear_cka",
                        help="precision: CKA / CCA measures per view (default linear_cka, the shipped fp32 runs' set; "
                             "their cost is measured by bench_probe_similarity.py)")
    parser.add_argument("--floor-repeats", type=int, default=5, help="precision: GEMM floor, best of N")
    parser.add_argument("--work-dir", help="precision: keep both run folders here (default: a temporary folder)")
    parser.add_argument("--child", choices=["frontier", "full", "precision"], help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    standard = args.compare_precision or args.child == "precision"
    args.samples = args.samples or (STANDARD_RUN["samples"] if standard else 8)
    args.max_tokens = args.max_tokens or (STANDARD_RUN["max_tokens"] if standard else 128)
    if args.child == "precision":
        precision_child(args)
        return
    if args.child:
        child(args)
        return
    if args.compare_replay:
        compare_replay(args)
        return
    if args.compare_frozen_cast:
        compare_frozen_cast(args)
        return
    if args.compare_precision:
        compare_precision(args)
        return
    results = {}
    for mode in ("frontier", "full"):
        command = [sys.executable, __file__, "--child", mode, *sys.argv[1:]]
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
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
