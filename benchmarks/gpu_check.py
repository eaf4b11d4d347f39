"""GPU readiness check: the real pair's shapes in bf16 on the accelerator(s) against a CPU fp32 run.

    python benchmarks/gpu_check.py            # on a GPU machine (spread over all visible GPUs)
    python benchmarks/gpu_check.py --tiny     # scaled down, on this CPU (bf16 autocast vs fp32)

Random-weight models built from configs (no download): Qwen2.5-Coder 1.5B shapes (28 layers,
width 1536) as source and 0.5B shapes (24 layers, width 896) as target, vocabulary 151,936.
The device side runs under the bf16 policy (fp32 master weights, bf16 autocast, fp32 head and
losses), sharded over every visible GPU when there are several. It does one capture, the
target x source CKA and CCA matrices, two frontier stages of each SemAlign variant, one LaTen
and one Seeking optimizer step, and a generation batch; each is checked against the CPU fp32
run of the same seeds and timed. Exit status 1 when a check fails. Sized for under 10 minutes
on one GPU (the CPU reference included).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pkt_core.capture.dataset import capture_texts  # noqa: E402
from pkt_core.capture.hooks import CaptureOptions  # noqa: E402
from pkt_core.evaluation.generation import generate_until  # noqa: E402
from pkt_core.models.loading import LoadedModel, wrap_loaded_model  # noqa: E402
from pkt_core.models.synthetic import byte_level_tokenizer, random_model_from_config, tiny_config  # noqa: E402
from pkt_core.similarity import layer_similarity_matrix  # noqa: E402
from pkt_core.transfer.alignment_data import AlignmentSample  # noqa: E402
from pkt_core.transfer.config import TransferConfig  # noqa: E402
from pkt_core.transfer.pipeline import run_transfer  # noqa: E402

REAL_SHAPES = {"source": (28, 1536, 12, 2, 8960), "target": (24, 896, 14, 2, 4864)}  # layers, width, heads, kv, ffn
VOCAB = 151_936
PROMPTS = ["def add(a, b):\n    return", "The capital of France is", "for i in range(10):", "import numpy as"]


def real_config(layers: int, width: int, heads: int, kv_heads: int, ffn: int):
    import transformers

    from pkt_core.models.synthetic import tiny_config as _tiny

    special = _tiny("qwen2")  # the byte tokenizer's special ids
    return transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, intermediate_size=ffn, max_position_embeddings=4096,
        tie_word_embeddings=False, pad_token_id=special.pad_token_id, bos_token_id=special.bos_token_id,
        eos_token_id=special.eos_token_id, attn_implementation="sdpa")


def build_states(tiny: bool) -> dict[str, tuple]:
    """(config, state dict) per role, drawn once from fixed seeds, shared by both sides."""
    models = {}
    for seed, role in enumerate(("source", "target"), start=1):
        if tiny:
            config = tiny_config("qwen2", 4 if role == "source" else 3, 64 if role == "source" else 32)
        else:
            config = real_config(*REAL_SHAPES[role])
        model = random_model_from_config(config, seed=seed)
        models[role] = (config, {k: v.clone() for k, v in model.state_dict().items()})
        del model
    return models


def instantiate(config, state: dict, name: str, device: str, policy: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(state)
    model.eval()
    if device != "cpu":
        count = torch.cuda.device_count()
        if count > 1:
            # Spread over every visible GPU (as --device auto does for a model too big for one).
            from accelerate import dispatch_model, infer_auto_device_map
            from accelerate.utils import get_balanced_memory

            memory = get_balanced_memory(model, no_split_module_classes=["Qwen2DecoderLayer"])
            device_map = infer_auto_device_map(model, max_memory=memory, no_split_module_classes=["Qwen2DecoderLayer"])
            model = dispatch_model(model, device_map)
        else:
            model.to("cuda:0")
    return wrap_loaded_model(model, byte_level_tokenizer(), name, device=device if device == "cpu" else "cuda:0",
                             precision=policy)


def samples(count: int, offset: int) -> list[AlignmentSample]:
    return [AlignmentSample(f"s{offset + i}", f"{i + 3} plus {i + 5} equals ", f"{2 * i + 8}.", label=None)
            for i in range(count)]


def timed(label: str, timings: dict, work):
    started = time.monotonic()
    result = work()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    timings[label] = time.monotonic() - started
    return result


def side(models: dict, device: str, policy: str, tiny: bool, out: Path) -> tuple[dict, dict]:
    """Everything the check compares, computed on one side; returns (results, timings)."""
    timings: dict[str, float] = {}
    results: dict = {}
    source = instantiate(*models["source"], "check-source", device, policy)
    target = instantiate(*models["target"], "check-target", device, policy)
    options = CaptureOptions(sites=("resid_post",), drop_first_position=True)
    captures = timed("capture", timings, lambda: (capture_texts(source, PROMPTS, options, batch_size=4),
                                                   capture_texts(target, PROMPTS, options, batch_size=4)))
    results["capture"] = {role: {l: acts.layer(l, "resid_post") for l in acts.layers}
                          for role, acts in zip(("source", "target"), captures)}
    source_layers = [results["capture"]["source"][l] for l in sorted(results["capture"]["source"])]
    target_layers = [results["capture"]["target"][l] for l in sorted(results["capture"]["target"])]
    results["cka"] = timed("cka", timings, lambda: layer_similarity_matrix(target_layers, source_layers,
                                                                           "linear_cka").values)
    results["cca"] = timed("cca", timings, lambda: layer_similarity_matrix(target_layers, source_layers,
                                                                           "mean_cca").values)
    data = (samples(4, 0), samples(4, 100), "gpu check")
    common = dict(source="check-source", target="check-target", data_file="check.jsonl", align_samples=4,
                  probe_samples=4, batch_size=4, max_tokens=64, fidelity=False, dtype=policy,
                  source_device=device, target_device=device)
    runs = {f"semalign-{variant}": dict(method="semalign", variant=variant, stages=[0, 1], steps_per_stage=1)
            for variant in ("v1", "v2-relation", "acl-fisher")}
    runs["laten"] = dict(method="laten", epochs=1, laten_top_layers=1)
    runs["seeking"] = dict(method="seeking", epochs=1, seeking_seed_samples=2)
    for name, changes in runs.items():
        # Each run starts from the untouched models (a run leaves its target trained).
        source = instantiate(*models["source"], "check-source", device, policy)
        target = instantiate(*models["target"], "check-target", device, policy)
        config = TransferConfig(**{**common, **changes})
        folder = timed(name, timings, lambda: run_transfer(config, out_dir=out / f"{name}-{device}-{policy}", source=source,
                                                             target=target, samples=data))
        from pkt_core.runs.reader import open_run

        results[name] = open_run(folder).weight_delta()
    target = instantiate(*models["target"], "check-target", device, policy)
    generations = timed("generation", timings, lambda: generate_until(target, PROMPTS, [], 16 if tiny else 64,
                                                                      batch_size=4))
    results["generation"] = [g.text for g in generations]
    return results, timings


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()).clamp(min=1e-300))


def merged_updates(delta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full-weight updates: LoRA factor pairs multiplied out (factors alone are not unique)."""
    out = {}
    for key, value in delta.items():
        if key.endswith(".lora_a"):
            continue
        if key.endswith(".lora_b"):
            out[key[: -len(".lora_b")]] = value.double() @ delta[key[: -len(".lora_b")] + ".lora_a"].double()
        else:
            out[key] = value
    return out


def compare(device_results: dict, reference: dict) -> list[tuple[str, float, float, bool]]:
    """(check, value, bound, passed) rows; bounds are what bf16 autocast noise allows."""
    rows = []
    for role in ("source", "target"):
        worst = min(cosine(torch.as_tensor(device_results["capture"][role][l]), torch.as_tensor(states))
                    for l, states in reference["capture"][role].items())
        rows.append((f"capture {role}: worst layer cosine", worst, 0.99, worst >= 0.99))
    for measure, bound in (("cka", 0.02), ("cca", 0.05)):
        diff = float(abs(torch.as_tensor(device_results[measure]) - torch.as_tensor(reference[measure])).max())
        rows.append((f"{measure.upper()} matrix: max |device - cpu|", diff, bound, diff <= bound))
    for name in [k for k in reference if k.startswith(("semalign", "laten", "seeking"))]:
        a, b = merged_updates(device_results[name]), merged_updates(reference[name])
        same_keys = a.keys() == b.keys()
        worst = min((cosine(a[k], b[k]) for k in b if b[k].abs().sum() > 0), default=1.0) if same_keys else -1.0
        # One AdamW step moves each weight by about lr * sign(gradient): weights with near-zero
        # gradients flip sign under bf16 noise, so one-step deltas agree in direction, not exactly.
        rows.append((f"{name}: worst delta cosine (same tensors: {same_keys})", worst, 0.5, same_keys and worst >= 0.5))
    agree = sum(x == y for x, y in zip(device_results["generation"], reference["generation"]))
    rows.append(("generation: completions identical to fp32 (random weights: near-ties may flip)",
                 agree / len(PROMPTS), 0.0, True))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU (bf16 autocast vs fp32)")
    args = parser.parse_args()
    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    if device == "cpu" and not args.tiny:
        print("no CUDA device visible: run with --tiny for the CPU-side check", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as home:
        os.environ["PKT_HOME"] = home
        torch.manual_seed(0)
        started = time.monotonic()
        models = build_states(args.tiny)
        built = time.monotonic() - started
        device_results, device_times = side(models, device, "bf16", args.tiny, Path(home))
        reference, reference_times = side(models, "cpu", "fp32", args.tiny, Path(home))
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    print(f"device: {device} ({gpus} GPU(s)), models built in {built:.1f} s")
    print(f"{'work':<24}{'device bf16 s':>14}{'cpu fp32 s':>12}{'ratio':>8}")
    for label in device_times:
        ratio = reference_times[label] / max(device_times[label], 1e-9)
        print(f"{label:<24}{device_times[label]:>14.2f}{reference_times[label]:>12.2f}{ratio:>8.2f}")
    failed = 0
    for check, value, bound, passed in compare(device_results, reference):
        failed += not passed
        print(f"{'PASS' if passed else 'FAIL'}  {check}: {value:.4g} (bound {bound})")
    print(f"total {time.monotonic() - started:.1f} s; {failed} check(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
