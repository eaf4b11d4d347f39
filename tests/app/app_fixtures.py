"""A small but complete run made by the library itself, for the app tests and the app benchmark.

A tiny Qwen2-style pair (source 4 layers x 64, target 3 layers x 32, byte-level tokenizer) saved
as Hugging Face folders; SemAlign v1 on MMLU alignment samples (probes are MMLU evaluation
items); then MMLU (first item per subject) scored for the source, the target before and the
target after, written into ``<run>/evaluation/mmlu/<role>/`` and the manifest, as the pipeline
lays evaluations out.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np

from pkt_core.models.loading import wrap_loaded_model
from pkt_core.models.synthetic import (
    byte_level_tokenizer,
    random_model_from_config,
    tiny_config,
)

ROLES = ("source", "target_before", "target_after")
APP = str(Path(__file__).resolve().parents[2] / "app" / "main.py")


def tiny_qwen(layers: int, width: int, seed: int, name: str):
    config = tiny_config("qwen2", num_layers=layers, width=width)
    config.max_position_embeddings = 4096  # MMLU prompts are longer than the tiny default window
    return wrap_loaded_model(random_model_from_config(config, seed=seed), byte_level_tokenizer(), name)


def save_pair(folder: Path) -> tuple[Path, Path]:
    """The tiny source and target as model folders (what `pkt transfer --source/--target` takes)."""
    paths = []
    for name, layers, width, seed in (("tiny-source", 4, 64, 1), ("tiny-target", 3, 32, 2)):
        loaded = tiny_qwen(layers, width, seed, name)
        path = folder / name
        loaded.model.save_pretrained(path)
        loaded.tokenizer.save_pretrained(path)
        paths.append(path)
    return paths[0], paths[1]


def addition_file(path: Path, count: int = 24, seed: int = 0) -> Path:
    """JSON lines "a+b=" -> last digit of a + b, labelled by a (what `pkt transfer --data` reads)."""
    import random

    rng = random.Random(seed)
    lines = []
    for index in range(count):
        a, b = rng.randrange(10), rng.randrange(10)
        lines.append(json.dumps({"id": f"add-{index}", "prompt": f"{a}+{b}=", "answer": str((a + b) % 10),
                                 "label": str(a)}))
    path.write_text("\n".join(lines) + "\n")
    return path


def transfer_config(source: Path, target: Path, **changes):
    from pkt_core.transfer.config import TransferConfig

    base = dict(source=str(source), target=str(target), variant="v1", task="mmlu", align_samples=8, probe_samples=12,
                steps_per_stage=2, batch_size=4, learning_rate=1e-3, max_tokens=160)
    base.update(changes)
    return TransferConfig(**base)


def make_run(folder: Path, models: Path, evaluate_roles: bool = True) -> Path:
    """Write a complete run to ``folder`` (its parent must exist); model folders go under ``models``."""
    from pkt_core.models.loading import load_model
    from pkt_core.runs.reader import apply_run_to_model, open_run
    from pkt_core.runs.writer import write_json_atomic
    from pkt_core.transfer.pipeline import run_transfer

    source_path, target_path = save_pair(models)
    config = transfer_config(source_path, target_path)
    run_folder = run_transfer(config, out_dir=folder, source=load_model(str(source_path)),
                              target=load_model(str(target_path)))
    if not evaluate_roles:
        return run_folder
    from pkt_core.evaluation.runner import EvalOptions, evaluate

    run = open_run(run_folder)
    after = load_model(str(target_path))
    apply_run_to_model(after.model, run)
    from pkt_core.models.loading import wrap_loaded_model

    after = wrap_loaded_model(after.model, after.tokenizer, "tiny-target-after")
    models_by_role = {"source": load_model(str(source_path)), "target_before": load_model(str(target_path)),
                      "target_after": after}
    evaluation = {}
    for role, loaded in models_by_role.items():
        result = evaluate(loaded, EvalOptions("mmlu", limit=1, batch_size=16, use_cache=False),
                          out=run_folder / "evaluation" / "mmlu" / role)
        evaluation[role] = {name: value for name, value in result.summary["metrics"].items()
                            if isinstance(value, dict) and "mean" in value}
    manifest = json.loads((run_folder / "manifest.json").read_text())
    manifest["evaluation"] = {"mmlu": evaluation}
    write_json_atomic(run_folder / "manifest.json", manifest)
    return run_folder


def copy_run(run: Path, runs_root: Path, name: str | None = None) -> Path:
    runs_root.mkdir(parents=True, exist_ok=True)
    destination = runs_root / (name or run.name)
    shutil.copytree(run, destination)
    if name:
        manifest = json.loads((destination / "manifest.json").read_text())
        manifest["run_id"] = name
        (destination / "manifest.json").write_text(json.dumps(manifest))
    return destination


# -- reading what an AppTest drew ---------------------------------------------------------------


def decode(value):
    """A plotly 7 JSON array ({dtype, bdata, shape} or a list) as a numpy array."""
    if isinstance(value, dict) and "bdata" in value:
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        if "shape" in value:
            array = array.reshape([int(x) for x in str(value["shape"]).split(",")])
        return array
    return np.asarray(value)


def plotly_figures(at) -> list[dict]:
    return [json.loads(element.proto.spec) for element in at.get("plotly_chart")]


def chart(at, key: str) -> dict:
    """The plotly figure of the chart drawn with ``studio.show_figure(spec, key)``."""
    for element in at.get("plotly_chart"):
        if element.proto.id.endswith(f"{key}-chart"):
            return json.loads(element.proto.spec)
    raise AssertionError(f"no chart {key!r}; charts: {[e.proto.id for e in at.get('plotly_chart')]}")


def texts(at) -> str:
    """Every message the page shows (markdown, captions, info, warnings, errors), as one string."""
    parts = []
    for kind in ("markdown", "caption", "info", "warning", "error", "success"):
        parts.extend(str(element.value) for element in getattr(at, kind))
    return "\n".join(parts)
