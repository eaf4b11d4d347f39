"""Copy a finished run into the repository's ``cached_runs/``: small, complete, reproducible.

The weight delta is left out (it is the size of the trained layers); everything the app shows
stays. The manifest says what was left out and the command that recreates the run in full.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pkt_core.atomic_files import replace_directory, write_json_atomic
from pkt_core.run_reader import open_run

LEFT_OUT = ("target_delta.safetensors",)


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
    manifest["shipped"] = {"left_out": left_out, "reproduce": reproduce_command}
    write_json_atomic(staging / "manifest.json", manifest)
    replace_directory(staging, destination)
    return destination
