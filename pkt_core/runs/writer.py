"""Write one run as a folder: manifest plus open-format artefacts, atomically.

Everything goes into ``<run>.partial/`` while the run works; the manifest there always says
where it stands (``running``, ``failed`` or ``cancelled``, with the error). Finished stages leave
checkpoints so that ``resume`` continues from the last one. Only :meth:`RunWriter.finish` marks
the run ``complete`` and renames the folder into place, so a folder without ``.partial`` is
always a complete run.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pkt_core import __version__, atomic_files
from pkt_core.errors import PktError

MANIFEST = "manifest.json"
PROGRESS = "progress.json"
CHECKPOINTS = "checkpoints"


class RunStoreError(PktError):
    """A run folder cannot be written or resumed as asked."""


def write_json_atomic(path: Path, payload) -> None:
    atomic_files.write_json_atomic(path, payload, default=_json_default)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def environment_record() -> dict:
    import transformers

    record = {
        "pkt_core": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else [],
    }
    return record


class RunWriter:
    def __init__(self, folder: Path, manifest: dict, resume: bool = False, overwrite: bool = False) -> None:
        self.folder = Path(folder)
        self.partial = self.folder.with_name(self.folder.name + ".partial")
        if self.folder.exists():
            if not overwrite:
                raise RunStoreError(f"{self.folder} already holds a finished run; choose another --out or pass --overwrite")
        if resume:
            if not (self.partial / MANIFEST).is_file():
                raise RunStoreError(f"nothing to resume: {self.partial} does not exist; start the run without --resume")
            previous = json.loads((self.partial / MANIFEST).read_text())
            if previous.get("config") != manifest.get("config"):
                raise RunStoreError(
                    "--resume needs the same configuration as the interrupted run; it differs in: "
                    + ", ".join(sorted(k for k in set(previous.get("config", {})) | set(manifest.get("config", {}))
                                       if previous.get("config", {}).get(k) != manifest.get("config", {}).get(k)))
                )
            self.manifest = {**previous, "status": "running", "resumed_at": _now()}
            self.manifest.setdefault("resumes", 0)
            self.manifest["resumes"] += 1
        else:
            shutil.rmtree(self.partial, ignore_errors=True)
            self.partial.mkdir(parents=True)
            self.manifest = {**manifest, "status": "running", "created_at": _now(), "environment": environment_record(),
                             "stages": {}}
        (self.partial / CHECKPOINTS).mkdir(exist_ok=True)
        self.overwrite = overwrite
        self.write_manifest()

    # -- manifest -------------------------------------------------------------------------
    def write_manifest(self) -> None:
        write_json_atomic(self.partial / MANIFEST, self.manifest)

    def record_stage(self, name: str, record: dict) -> None:
        self.manifest["stages"][name] = record
        self.write_manifest()

    # -- artefacts ------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        return self.partial / name

    def save_json(self, name: str, payload) -> None:
        write_json_atomic(self.partial / name, payload)

    def save_table(self, name: str, rows: list[dict]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        temporary = self.partial / (name + ".tmp")
        pq.write_table(pa.Table.from_pylist(rows), temporary)
        os.replace(temporary, self.partial / name)

    def save_tensors(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        temporary = self.partial / (name + ".tmp")
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(temporary))
        os.replace(temporary, self.partial / name)

    def load_tensors(self, name: str) -> dict[str, torch.Tensor]:
        return load_file(str(self.partial / name))

    def has(self, name: str) -> bool:
        return (self.partial / name).is_file()

    # -- checkpoints for resume -----------------------------------------------------------
    def finished_stages(self) -> list[str]:
        progress = self.partial / PROGRESS
        return json.loads(progress.read_text())["finished"] if progress.is_file() else []

    def finish_stage(self, stage: str, tensors: dict[str, torch.Tensor] | None = None) -> None:
        if tensors:
            self.save_tensors(f"{CHECKPOINTS}/{stage}.safetensors", tensors)
        finished = self.finished_stages()
        if stage not in finished:
            finished.append(stage)
        write_json_atomic(self.partial / PROGRESS, {"finished": finished})

    def checkpoint(self, stage: str) -> dict[str, torch.Tensor]:
        path = f"{CHECKPOINTS}/{stage}.safetensors"
        return self.load_tensors(path) if self.has(path) else {}

    # -- endings --------------------------------------------------------------------------
    def fail(self, status: str, error: BaseException) -> None:
        """Mark the partial run failed or cancelled; it stays resumable and is never shown complete."""
        self.manifest["status"] = status
        self.manifest["error"] = f"{type(error).__name__}: {error}"
        self.manifest["ended_at"] = _now()
        self.write_manifest()

    def finish(self, keep_checkpoints: bool = False) -> Path:
        if not keep_checkpoints:
            shutil.rmtree(self.partial / CHECKPOINTS, ignore_errors=True)
            (self.partial / PROGRESS).unlink(missing_ok=True)
        self.manifest["status"] = "complete"
        self.manifest["ended_at"] = _now()
        self.write_manifest()
        atomic_files.replace_directory(self.partial, self.folder)
        return self.folder


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
