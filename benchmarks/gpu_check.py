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

Seeking is checked in parts, because its delta is mostly the extracted source sub-block (the
LoRA starts at ``U_r S_r``, ``V_r^T``, not at zero; one step adds ~1% of its norm): where a
near-tie in the sensitivity moves a sub-block window by a few columns, the two runs' deltas
hold different source weights and no tensor-by-tensor cosine can agree. So the check compares
the sensitivities, reports how many layers and windows both sides chose and whether every
disagreement is a near-tie that the sensitivities' bf16 error explains, compares the deltas
only where the windows agree, and compares the one-step LoRA update itself with both sides
starting from the same (fp32) extraction.
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

from pkt_core.capture.dataset import capture_texts
from pkt_core.capture.hooks import CaptureOptions
from pkt_core.evaluation.generation import generate_until
from pkt_core.models.loading import LoadedModel, wrap_loaded_model
from pkt_core.models.synthetic import byte_level_tokenizer, random_model_from_config, tiny_config
from pkt_core.peers.seeking import ExtractedMatrix, extract_knowledge, fine_tune_extracted
from pkt_core.peers.sensitivity import decoder_parameter_sensitivity
from pkt_core.peers.subblock import window_sums
from pkt_core.runs.reader import open_run
from pkt_core.similarity import layer_similarity_matrix
from pkt_core.transfer.alignment_data import AlignmentSample, tokenise_samples
from pkt_core.transfer.config import TransferConfig
from pkt_core.transfer.frontier import block_parameter_prefix
from pkt_core.transfer.pipeline import run_transfer
from pkt_core.transfer.run_skeleton import read_table

REAL_SHAPES = {"source": (28, 1536, 12, 2, 8960), "target": (24, 896, 14, 2, 4864)}  # layers, width, heads, kv, ffn
VOCAB = 151_936
PROMPTS = ["def add(a, b):\n    return", "The capital of France is", "for i in range(10):", "import numpy as"]
COMMON = {"source": "check-source", "target": "check-target", "data_file": "check.jsonl", "align_samples": 4,
          "probe_samples": 4, "batch_size": 4, "max_tokens": 64, "fidelity": False}
SEEKING = {"method": "seeking", "epochs": 1, "seeking_seed_samples": 2}


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


def seeking_config(device: str, policy: str) -> TransferConfig:
    return TransferConfig(**COMMON, **SEEKING, dtype=policy, source_device=device, target_device=device)


def seeking_sensitivity(models: dict, device: str, policy: str) -> tuple[LoadedModel, LoadedModel, dict]:
    """Seeking's step 1 as its run takes it: the source's sensitivity on the run's seed samples."""
    source = instantiate(*models["source"], "check-source", device, policy)
    target = instantiate(*models["target"], "check-target", device, policy)
    config = seeking_config(device, policy)
    seeds = tokenise_samples(target.tokenizer, samples(config.align_samples, 0), config.max_tokens)
    sensitivity = decoder_parameter_sensitivity(source, seeds.select(list(range(config.seeking_seed_samples))))
    return source, target, sensitivity


def reference_extraction(models: dict) -> list[ExtractedMatrix]:
    """Steps 2-4 from the fp32 sensitivity: the one starting point both sides' LoRA step trains from."""
    source, target, sensitivity = seeking_sensitivity(models, "cpu", "fp32")
    return extract_knowledge(source, target, sensitivity, seeking_config("cpu", "fp32").lora_rank)[2]


def seeking_step(models: dict, device: str, policy: str, extracted: list[ExtractedMatrix]) -> dict[str, torch.Tensor]:
    """One LoRA step of Seeking's own training from ``extracted``: the update on top of the extracted product."""
    target = instantiate(*models["target"], "check-target", device, policy)
    config = seeking_config(device, policy)
    tokenised = tokenise_samples(target.tokenizer, samples(config.align_samples, 0), config.max_tokens)
    trained = merged_updates(fine_tune_extracted(target, extracted, tokenised, config)[1])
    updates = {}
    for item in extracted:
        name = f"{block_parameter_prefix(target, item.target_layer)}{item.matrix}.weight"
        updates[name] = trained[name] - item.scaled_b.double() @ item.a.double()
    return updates


def seeking_choices(folder: Path) -> dict:
    """What a Seeking run extracted: its layer scores and each target matrix's source window."""
    layers = read_table(folder / "seeking_layers.parquet")
    windows = {f"{r['target_layer']}.{r['matrix']}": (r["source_layer"], r["row_start"], r["col_start"], r["rows"],
                                                     r["cols"])
               for r in read_table(folder / "seeking_extraction.parquet")}
    return {"scores": [r["sensitivity"] for r in layers], "selected": [r["source_layer"] for r in layers if r["selected"]],
            "windows": windows}


def timed(label: str, timings: dict, work):
    started = time.monotonic()
    result = work()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    timings[label] = time.monotonic() - started
    return result


def side(models: dict, device: str, policy: str, tiny: bool, out: Path,
         extracted: list[ExtractedMatrix]) -> tuple[dict, dict]:
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
    common = {**COMMON, "dtype": policy, "source_device": device, "target_device": device}
    runs = {f"semalign-{variant}": {"method": "semalign", "variant": variant, "stages": [0, 1], "steps_per_stage": 1}
            for variant in ("v1", "v2-relation", "acl-fisher")}
    runs["laten"] = {"method": "laten", "epochs": 1, "laten_top_layers": 1}
    runs["seeking"] = SEEKING
    for name, changes in runs.items():
        # Each run starts from the untouched models (a run leaves its target trained).
        source = instantiate(*models["source"], "check-source", device, policy)
        target = instantiate(*models["target"], "check-target", device, policy)
        config = TransferConfig(**{**common, **changes})
        folder = timed(name, timings, lambda config=config, name=name, source=source, target=target: run_transfer(
            config, out_dir=out / f"{name}-{device}-{policy}", source=source, target=target, samples=data))
        results[name] = open_run(folder).weight_delta()
        if name == "seeking":
            results["seeking-choices"] = seeking_choices(Path(folder))
    sensitivity = timed("seeking-sensitivity", timings, lambda: seeking_sensitivity(models, device, policy)[2])
    results["seeking-sensitivity"] = {name: value.cpu() for name, value in sensitivity.items()}
    results["seeking-step"] = timed("seeking-step", timings, lambda: seeking_step(models, device, policy, extracted))
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


def selection_rows(device_results: dict, reference: dict) -> list[tuple[str, float, float, bool]]:
    """Seeking's layer and window choices. Each side takes an argmax of its own sensitivity, so a
    choice may differ only where the fp32 margin between the two options is at most what the bf16
    sensitivity moved them (the sum of the two options' score errors; a window's error is at most
    its matrix's L1 sensitivity error). Value: the worst margin over that allowance (<= 1: near-ties)."""
    dev, ref = device_results["seeking-choices"], reference["seeking-choices"]
    dev_scores, ref_scores = dev["scores"], ref["scores"]
    worst = 0.0
    for kept in set(ref["selected"]) - set(dev["selected"]):
        for taken in set(dev["selected"]) - set(ref["selected"]):
            allowance = abs(dev_scores[kept] - ref_scores[kept]) + abs(dev_scores[taken] - ref_scores[taken])
            worst = max(worst, (ref_scores[kept] - ref_scores[taken]) / max(allowance, 1e-300))
    same_layers = sum(layer in ref["selected"] for layer in dev["selected"])
    label = (f"seeking layers: {same_layers}/{len(ref['selected'])} selected by both; worst fp32 margin / bf16 "
             "allowance of a flip")
    rows = [(label, worst, 1.0, worst <= 1.0)]
    dev_sens, ref_sens = device_results["seeking-sensitivity"], reference["seeking-sensitivity"]
    worst, flips, same = 0.0, [], 0
    for matrix, window in ref["windows"].items():
        other = dev["windows"][matrix]
        same += other == window
        if other == window or other[0] != window[0]:
            continue  # identical, or cut from another layer (the layer row covers that)
        name = f"model.layers.{window[0]}.{matrix.partition('.')[2]}.weight"
        sums = window_sums(ref_sens[name].double().numpy(), window[3], window[4])
        margin = sums[window[1], window[2]] - sums[other[1], other[2]]
        allowance = 2 * float((dev_sens[name].double() - ref_sens[name].double()).abs().sum())
        worst = max(worst, margin / max(allowance, 1e-300))
        flips.append(f"{matrix} {window[1:3]}->{other[1:3]} margin {margin / sums[window[1], window[2]]:.1e}")
    label = (f"seeking windows: {same}/{len(ref['windows'])} identical ({'; '.join(flips) or 'no flips'}); "
             "worst fp32 margin / bf16 allowance")
    rows.append((label, worst, 1.0, worst <= 1.0))
    return rows


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
    for name in [k for k in reference if k.startswith(("semalign", "laten"))]:
        a, b = merged_updates(device_results[name]), merged_updates(reference[name])
        same_keys = a.keys() == b.keys()
        worst = min((cosine(a[k], b[k]) for k in b if b[k].abs().sum() > 0), default=1.0) if same_keys else -1.0
        # One AdamW step moves each weight by about lr * sign(gradient): weights with near-zero
        # gradients flip sign under bf16 noise, so one-step deltas agree in direction, not exactly.
        rows.append((f"{name}: worst delta cosine (same tensors: {same_keys})", worst, 0.5, same_keys and worst >= 0.5))
    dev_sens, ref_sens = device_results["seeking-sensitivity"], reference["seeking-sensitivity"]
    worst = min(cosine(dev_sens[k], ref_sens[k]) for k in ref_sens if ref_sens[k].abs().sum() > 0)
    rows.append(("seeking sensitivity: worst tensor cosine (zero ones, e.g. zero biases, left out)", worst, 0.99,
                 worst >= 0.99))
    rows.extend(selection_rows(device_results, reference))
    # Seeking's delta is the extracted block plus ~1% from the step: where both sides cut the same
    # window it must agree closely; elsewhere it holds different source weights (rows above).
    a, b = merged_updates(device_results["seeking"]), merged_updates(reference["seeking"])
    dev_windows, ref_windows = device_results["seeking-choices"]["windows"], reference["seeking-choices"]["windows"]
    matched = [f"model.layers.{m}.weight" for m in ref_windows if dev_windows[m] == ref_windows[m]]
    worst = min((cosine(a[k], b[k]) for k in matched), default=1.0)
    rows.append((f"seeking: worst delta cosine over the {len(matched)} matrices cut from the same window", worst, 0.99,
                 worst >= 0.99))
    a, b = device_results["seeking-step"], reference["seeking-step"]
    worst = min(cosine(a[k], b[k]) for k in b)
    rows.append(("seeking: worst one-step LoRA update cosine, both sides from the fp32 extraction", worst, 0.5,
                 worst >= 0.5))
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
        extracted = reference_extraction(models)
        device_results, device_times = side(models, device, "bf16", args.tiny, Path(home), extracted)
        reference, reference_times = side(models, "cpu", "fp32", args.tiny, Path(home), extracted)
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
