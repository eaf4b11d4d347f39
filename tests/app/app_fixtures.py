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
                steps_per_stage=2, batch_size=4, learning_rate=1e-3, max_tokens=160,
                linear_probe_items=60)  # the layer-wise linear probe on 60 MMLU items (5-fold), not 300
    base.update(changes)
    return TransferConfig(**base)


def make_run(folder: Path, models: Path, evaluate_roles: bool = True) -> Path:
    """Write a complete run to ``folder`` (its parent must exist) with the real pipeline, MMLU (first
    item per subject) scored for the source, the target before and after when ``evaluate_roles``;
    model folders go under ``models``."""
    from pkt_core.models.loading import load_model
    from pkt_core.transfer.pipeline import run_transfer

    source_path, target_path = save_pair(models)
    config = transfer_config(source_path, target_path, eval_tasks=["mmlu"] if evaluate_roles else [], eval_limit=1)
    return run_transfer(config, out_dir=folder, source=load_model(str(source_path)),
                        target=load_model(str(target_path)))


FORMULATION_SPECS = ("mmlu", "mmlu:rc")  # letters (MMLU's default, evaluation/mmlu/) and cloze (evaluation/mmlu-rc/)


def make_formulations_run(folder: Path, models: Path, specs: tuple[str, ...] = FORMULATION_SPECS) -> Path:
    """A complete run of the real pipeline holding several evaluations of one task (``pkt transfer --eval
    mmlu,mmlu:rc --eval-limit 1 --eval-sample 12``: letters and cloze on the first item of 12 subjects, for
    the three models). It aligns on a small data file and keeps linear CKA only: the pages it is for read
    the evaluations."""
    from pkt_core.models.loading import load_model
    from pkt_core.transfer.pipeline import run_transfer

    source_path, target_path = save_pair(models)
    config = transfer_config(source_path, target_path, task=None, data_file=str(addition_file(models / "add.jsonl")),
                             probe_samples=8, stages=[0], steps_per_stage=1, similarity_measures=["linear_cka"],
                             eval_tasks=list(specs), eval_limit=1, eval_settings={"sample": 12})
    return run_transfer(config, out_dir=folder, source=load_model(str(source_path)),
                        target=load_model(str(target_path)))


def copy_run(run: Path, runs_root: Path, name: str | None = None) -> Path:
    runs_root.mkdir(parents=True, exist_ok=True)
    destination = runs_root / (name or run.name)
    shutil.copytree(run, destination)
    if name:
        from pkt_core.runs.schema import MANIFEST_FILE, RunManifest, read_json_record, record_json

        manifest = read_json_record(RunManifest, destination / MANIFEST_FILE)
        manifest.run_id = name
        (destination / MANIFEST_FILE).write_text(json.dumps(record_json(manifest)))
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


def edit_manifest(run: Path, edit) -> None:
    """Change a run's manifest through the schema (read, ``edit(manifest)``, validate, write), as the
    library's writer would: a test never leaves a manifest its readers would refuse by accident."""
    from pkt_core.runs.schema import MANIFEST_FILE, RunManifest, read_json_record
    from pkt_core.runs.writer import write_validated_manifest

    manifest = read_json_record(RunManifest, run / MANIFEST_FILE)
    edit(manifest)
    write_validated_manifest(run, manifest)


def remove_artefacts(run: Path, *names: str) -> None:
    """Delete files (or folders) of a run and drop them from its manifest's artefact list."""
    for name in names:
        path = run / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)

    def drop(manifest) -> None:
        manifest.artefacts = [a for a in manifest.artefacts
                              if not any(a == n or a.startswith(n.rstrip("/") + "/") for n in names)]

    edit_manifest(run, drop)
