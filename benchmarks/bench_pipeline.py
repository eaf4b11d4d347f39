"""Where a transfer run's time goes: each stage's share of the run, and set-up : training.

Runs the same SemAlign run twice in a fresh cache folder: **cold** (nothing cached: the first run on a
pair) and **warm** (the same pair and data again, as a second run from the New run page: semantic bases,
operators, the untouched models' probe states and the source's attribution come from the per-model cache,
``pkt_core/transfer/model_cache.py``). Prints every stage's wall seconds and share of the run, where each
set-up result came from, and per run the ratio of the set-up stages (bases, probe capture, fidelity,
attribution, supervision) to the training stages they serve (goal: under 1), also with the similarity
family before training counted in.

Default run: the issue's small run from the New run page (v1 on MMLU, 2 alignment samples, 4 probes,
2 stages of 2 steps, no evaluation); the flags make it the shipped runs' standard (``--align-samples 16
--probe-samples 32 --steps 1 --stages all``). Models: random weights in the real pair's shapes
(Qwen2.5-Coder 1.5B -> 0.5B, from the cached configs and tokenizer when present); ``--real`` loads the
cached real pair; ``--shrink K`` divides widths, layer counts and vocabulary by K (a quick check that the
script works; its ratios say little about the real pair).

    python benchmarks/bench_pipeline.py [--real] [--shrink 8] [--variant v1] [--align-samples 2]
        [--probe-samples 4] [--stages 0,1] [--steps 2] [--dtype fp32] [--fidelity-scope sample|full]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import torch

PAIR = ("qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b")
# The real pair's shapes where its configs are not cached (benchmarks/bench_transfer.py uses the same).
QWEN_SHAPES = {
    "qwen2.5-coder-1.5b": {"hidden_size": 1536, "intermediate_size": 8960, "num_attention_heads": 12,
                           "num_key_value_heads": 2, "num_hidden_layers": 28},
    "qwen2.5-coder-0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14,
                           "num_key_value_heads": 2, "num_hidden_layers": 24},
}
# The set-up that prepares training (the list). similarity_before is shown apart: of its CKA/CCA
# family only linear CKA serves training (the cka-monotone map); the rest is analysis.
SETUP_STAGES = ("bases", "probe_before", "fidelity", "attribution", "supervision")


def real_home() -> Path:
    configured = os.environ.get("PKT_HOME")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "pkt"


def random_model(name: str, shrink: int, seed: int, tokenizer):
    """Random weights in the shape of the registered model ``name`` (its cached config when present),
    its special tokens those of ``tokenizer``."""
    import transformers

    from pkt_core.models.synthetic import random_model_from_config

    folder = real_home() / "models" / name
    if (folder / "config.json").is_file():
        config = transformers.AutoConfig.from_pretrained(folder)
    else:
        config = transformers.Qwen2Config(vocab_size=151_936, tie_word_embeddings=True, **QWEN_SHAPES[name])
    if shrink > 1:
        heads = config.num_attention_heads
        config.hidden_size = max(2 * heads, config.hidden_size // shrink // heads * heads)
        config.intermediate_size = max(8, config.intermediate_size // shrink)
        config.num_hidden_layers = max(2, config.num_hidden_layers // shrink)
        config.vocab_size = max(1024, config.vocab_size // shrink)
        if getattr(config, "head_dim", None):
            config.head_dim = config.hidden_size // heads
    config.pad_token_id, config.bos_token_id = tokenizer.pad_token_id, tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config._attn_implementation = "sdpa"
    return random_model_from_config(config, seed=seed)


def tokenizer_for(shrink: int):
    """The real pair's tokenizer when cached (and the vocabulary is not shrunk), else the byte-level one."""
    from pkt_core.models.synthetic import byte_level_tokenizer

    folder = real_home() / "models" / PAIR[1]
    if shrink == 1 and (folder / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer, "the real tokenizer"
    return byte_level_tokenizer(), "a byte-level tokenizer"


def load_pair(args):
    from pkt_core.models.loading import load_model, wrap_loaded_model
    from pkt_core.models.provisioning import is_cached

    if args.real:
        missing = [name for name in PAIR if not is_cached(name)]
        if missing:
            raise SystemExit(f"--real needs the cached real pair; missing {', '.join(missing)} "
                             "(`pkt models fetch qwen-coder-1.5b-to-0.5b`)")
        return (load_model(PAIR[0], dtype=args.dtype, device=args.device),
                load_model(PAIR[1], dtype=args.dtype, device=args.device), "the real pair (Qwen2.5-Coder 1.5B -> 0.5B)")
    tokenizer, which = tokenizer_for(args.shrink)
    models = [random_model(name, args.shrink, seed, tokenizer) for name, seed in zip(PAIR, (1, 2))]
    loaded = [wrap_loaded_model(m.to(args.device), tokenizer, f"random-{name}", device=args.device,
                                precision=args.dtype) for m, name in zip(models, PAIR)]
    shape = "the real pair's shapes" if args.shrink == 1 else f"the real pair's shapes / {args.shrink}"
    return loaded[0], loaded[1], f"random weights in {shape}, {which}"


def analysis_off() -> dict:
    """Settings that switch off analysis stages that neither prepare nor do training (the layer-wise
    linear probe, where this version has it), so the run is the one the issue measured."""
    import dataclasses

    from pkt_core.transfer.config import TransferConfig

    fields = {field.name for field in dataclasses.fields(TransferConfig)}
    return {"linear_probe_items": 0} if "linear_probe_items" in fields else {}


def stage_kind(name: str) -> str:
    if name.startswith("stage-"):
        return "training"
    if name in SETUP_STAGES:
        return "set-up"
    if name == "similarity_before":
        return "similarity"
    return "evaluation" if name.startswith("eval-") else "analysis"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", action="store_true", help="the cached real pair (else random weights, its shapes)")
    parser.add_argument("--shrink", type=int, default=1, help="random models: divide widths, layers and vocabulary")
    parser.add_argument("--variant", default="v1")
    parser.add_argument("--task", default="mmlu")
    parser.add_argument("--align-samples", type=int, default=2)
    parser.add_argument("--probe-samples", type=int, default=4)
    parser.add_argument("--stages", default="0,1", help="target layers trained, e.g. 0,1 or all")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fidelity-scope", default="sample", choices=["sample", "full"])
    parser.add_argument("--keep", action="store_true", help="keep the temporary caches and runs (default: removed)")
    args = parser.parse_args()

    source, target, label = load_pair(args)
    home = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    models = real_home() / "models"
    if models.is_dir():
        (home / "models").symlink_to(models)  # the real models stay where they are; every cache starts empty
    os.environ["PKT_HOME"] = str(home)

    from pkt_core.cli.arguments import parse_layer_list
    from pkt_core.runs.reader import open_run
    from pkt_core.transfer.config import TransferConfig
    from pkt_core.transfer.pipeline import run_transfer

    stages = None if args.stages == "all" else list(parse_layer_list(args.stages))
    config = TransferConfig(source=source.name, target=target.name, variant=args.variant, task=args.task,
                            align_samples=args.align_samples, probe_samples=args.probe_samples,
                            steps_per_stage=args.steps, max_tokens=args.max_tokens, stages=stages, dtype=args.dtype,
                            fidelity_scope=args.fidelity_scope, **analysis_off())
    untouched = {key: value.clone() for key, value in target.model.state_dict().items()}
    manifests = {}
    for name in ("cold", "warm"):
        target.model.load_state_dict(untouched)  # the frontier trains the target in place
        folder = run_transfer(config, out_dir=home / "runs" / name, source=source, target=target)
        manifests[name] = open_run(folder).manifest

    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"models: {label}; {device}; {args.dtype}; semalign {args.variant} on {args.task}: {args.align_samples} "
          f"samples, {args.probe_samples} probes, stages {args.stages} x {args.steps} step(s), fidelity {args.fidelity_scope}")
    print(f"{'stage':<22}{'kind':<11}{'cold s':>9}{'share':>8}{'warm s':>9}{'share':>8}")
    names = list(dict.fromkeys([*manifests["cold"].stages, *manifests["warm"].stages]))
    for stage in names:
        cells = []
        for manifest in manifests.values():
            record = manifest.stages.get(stage)
            seconds = record.wall_seconds if record else 0.0
            cells.append(f"{seconds:>9.2f}{seconds / manifest.wall_seconds:>8.1%}")
        print(f"{stage:<22}{stage_kind(stage):<11}{''.join(cells)}")
    for name, manifest in manifests.items():
        totals = {kind: 0.0 for kind in ("set-up", "training", "similarity", "evaluation", "analysis")}
        for stage, record in manifest.stages.items():
            totals[stage_kind(stage)] += record.wall_seconds
        training = totals["training"] or float("nan")
        reuse = ", ".join(f"{what}: {how}" for what, how in manifest.setup_reuse.items())
        print(f"{name}: run {manifest.wall_seconds:.1f} s = set-up {totals['set-up']:.1f} + similarity before "
              f"{totals['similarity']:.1f} + training {totals['training']:.1f} + after, analysis and evaluation "
              f"{totals['analysis'] + totals['evaluation']:.1f} (+ bookkeeping)\n"
              f"  set-up : training = {totals['set-up'] / training:.2f} (goal < 1); with similarity before "
              f"{(totals['set-up'] + totals['similarity']) / training:.2f}\n  from: {reuse}")
    if args.keep:
        print(f"(caches and runs kept in {home})")
    else:
        if (home / "models").is_symlink():
            (home / "models").unlink()  # the link only, never the real models it points to
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
