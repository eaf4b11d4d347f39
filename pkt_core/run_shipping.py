"""Copy a finished run into the repository's ``cached_runs/``: small, complete, reproducible.

The weight delta is left out (it is the size of the trained layers); everything the app shows
stays. The cross-model map (``d_tgt x d_src``, 5.5 MB in float32 for the Qwen pair) is stored in
float16: the app only projects with it, and float16's relative error (5e-4) is far below what a
2-D projection can show. The manifest says what was left out or rounded and the command that
recreates the run in full.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pkt_core.atomic_files import replace_directory, write_json_atomic
from pkt_core.run_reader import open_run

LEFT_OUT = ("target_delta.safetensors",)
HALVED = ("cross_map.safetensors",)


def ship_run(run_folder: Path, destination_root: Path, reproduce_command: str) -> Path:
    """Copy ``run_folder`` to ``destination_root/<run id>`` without the weight delta."""
    run = open_run(run_folder)
    destination = destination_root / run.folder.name
    staging = destination_root / f".{run.folder.name}.shipping"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(run.folder, staging, ignore=shutil.ignore_patterns(*LEFT_OUT))
    manifest = dict(run.manifest)
    left_out = [name for name in LEFT_OUT if (run.folder / name).exists()]
    if left_out:
        manifest["weights_delta"] = {**manifest.get("weights_delta", {}), "file": None,
                                     "left_out": "not shipped with the repository; rerun to recreate it"}
    halved = [name for name in HALVED if (staging / name).exists()]
    for name in halved:
        tensors = load_file(staging / name)
        save_file({key: value.to(torch.float16) for key, value in tensors.items()}, staging / name)
    manifest["shipped"] = {"left_out": left_out, "stored_float16": halved, "reproduce": reproduce_command}
    write_json_atomic(staging / "manifest.json", manifest)
    replace_directory(staging, destination)
    return destination
