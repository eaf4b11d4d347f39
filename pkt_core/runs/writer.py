"""Write one run as a folder: manifest plus open-format artefacts, atomically, through the schema.

Everything goes into ``<run>.partial/`` while the run works; the manifest there always says
where it stands (``running``, ``failed`` or ``cancelled``, with the error). Finished stages leave
checkpoints so that ``resume`` continues from the last one. Only :meth:`RunWriter.finish` marks
the run ``complete`` and renames the folder into place, so a folder without ``.partial`` is
always a complete run.

Every file goes through its record of :mod:`pkt_core.runs.schema`: the manifest is validated at
each write (serialised, then read back as a reader would), tables are checked for the columns
their kind needs and tensor files for their key names, so a run can never hold a file its
readers would refuse.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pkt_core import __version__, atomic_files
from pkt_core.errors import PktError
from pkt_core.provenance import provenance_record
from pkt_core.runs.schema import (
    CHECKPOINTS_FOLDER,
    FORMAT_VERSION,
    MANIFEST_FILE,
    MAPPINGS_FILE,
    PROGRESS_FILE,
    TABLE_FILES,
    TABLES,
    TENSOR_FILES,
    LayerMaps,
    Progress,
    RunFormatError,
    RunManifest,
    SimilarityMatrixFile,
    StageCost,
    parse_record,
    read_json_record,
    record_json,
    similarity_file_name,
)


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

    return {
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


def write_validated_manifest(folder: Path, manifest: RunManifest) -> RunManifest:
    """Validate the manifest as a reader will (JSON out, record back in), then write it atomically;
    returns the record as read back."""
    payload = record_json(manifest)
    checked = parse_record(RunManifest, json.loads(json.dumps(payload, default=_json_default)), MANIFEST_FILE)
    write_json_atomic(folder / MANIFEST_FILE, payload)
    return checked


class RunWriter:
    """Writes one run. ``manifest`` holds what the run knows before it starts (method, pair,
    config, data, ...); the writer adds status, times, environment, provenance and the format."""

    def __init__(self, folder: Path, manifest: dict[str, Any], resume: bool = False, overwrite: bool = False) -> None:
        self.folder = Path(folder)
        self.partial = self.folder.with_name(self.folder.name + ".partial")
        if self.folder.exists():
            if not overwrite:
                raise RunStoreError(f"{self.folder} already holds a finished run; choose another --out or pass --overwrite")
        if resume:
            if not (self.partial / MANIFEST_FILE).is_file():
                raise RunStoreError(f"nothing to resume: {self.partial} does not exist; start the run without --resume")
            try:
                previous = read_json_record(RunManifest, self.partial / MANIFEST_FILE)
            except RunFormatError as error:
                raise RunStoreError(f"cannot resume {self.partial}: {error}. Start the run again without --resume.") from None
            if previous.config != manifest.get("config"):
                old, new = previous.config, manifest.get("config", {})
                raise RunStoreError(
                    "--resume needs the same configuration as the interrupted run; it differs in: "
                    + ", ".join(sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)))
                )
            self.manifest = previous.model_copy(update={"status": "running", "resumed_at": _now(),
                                                        "resumes": previous.resumes + 1, "error": None})
        else:
            shutil.rmtree(self.partial, ignore_errors=True)
            self.partial.mkdir(parents=True)
            self.manifest = parse_record(RunManifest, {
                **manifest, "format_version": FORMAT_VERSION, "status": "running", "created_at": _now(),
                "environment": environment_record(), "provenance": provenance_record(), "stages": {},
            }, MANIFEST_FILE)
        (self.partial / CHECKPOINTS_FOLDER).mkdir(exist_ok=True)
        self.overwrite = overwrite
        self.write_manifest()

    # -- manifest -------------------------------------------------------------------------
    def write_manifest(self) -> None:
        self.manifest = write_validated_manifest(self.partial, self.manifest)

    def record_stage(self, name: str, record: dict) -> None:
        self.manifest.stages[name] = StageCost.model_validate(record)
        self.write_manifest()

    # -- artefacts ------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        return self.partial / name

    def save_json(self, name: str, payload) -> None:
        write_json_atomic(self.partial / name, payload)

    def save_similarity(self, record: SimilarityMatrixFile) -> str:
        """A layer-similarity matrix under its schema name ``similarity_<metric>_<view>.json``."""
        if record.view is None:
            raise RunFormatError("a run's similarity matrix must say its view (target_source_before, ...)")
        name = similarity_file_name(record.metric, record.view)
        self.save_json(name, record_json(record))
        return name

    def save_layer_maps(self, maps: LayerMaps) -> None:
        self.save_json(MAPPINGS_FILE, record_json(maps))

    def save_table(self, name: str, rows: list[dict]) -> None:
        """A Parquet table of a kind the schema knows (``stage_losses.parquet``, ...); checked
        for the columns its kind needs."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        kind = TABLE_FILES.get(Path(name).name)
        if kind is None:
            raise RunFormatError(f"{name}: no table kind of that name in the run format ({', '.join(TABLE_FILES)})")
        table = pa.Table.from_pylist(rows)
        if rows:
            TABLES[kind].check(table.schema, name)
        temporary = self.partial / (name + ".tmp")
        pq.write_table(table, temporary)
        os.replace(temporary, self.partial / name)

    def save_tensors(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        spec = TENSOR_FILES.get(Path(name).name)
        if spec is None and not name.startswith(CHECKPOINTS_FOLDER + "/"):
            raise RunFormatError(f"{name}: no tensor file of that name in the run format ({', '.join(TENSOR_FILES)})")
        if spec is not None:
            spec.check(list(tensors), name)
        temporary = self.partial / (name + ".tmp")
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(temporary))
        os.replace(temporary, self.partial / name)

    def load_tensors(self, name: str) -> dict[str, torch.Tensor]:
        return load_file(str(self.partial / name))

    def has(self, name: str) -> bool:
        return (self.partial / name).is_file()

    # -- checkpoints for resume -----------------------------------------------------------
    def finished_stages(self) -> list[str]:
        progress = self.partial / PROGRESS_FILE
        return read_json_record(Progress, progress).finished if progress.is_file() else []

    def finish_stage(self, stage: str, tensors: dict[str, torch.Tensor] | None = None) -> None:
        if tensors:
            self.save_tensors(f"{CHECKPOINTS_FOLDER}/{stage}.safetensors", tensors)
        finished = self.finished_stages()
        if stage not in finished:
            finished.append(stage)
        write_json_atomic(self.partial / PROGRESS_FILE, record_json(Progress(finished=finished)))

    def checkpoint(self, stage: str) -> dict[str, torch.Tensor]:
        path = f"{CHECKPOINTS_FOLDER}/{stage}.safetensors"
        return self.load_tensors(path) if self.has(path) else {}

    # -- endings --------------------------------------------------------------------------
    def fail(self, status: str, error: BaseException) -> None:
        """Mark the partial run failed or cancelled; it stays resumable and is never shown complete."""
        self.manifest.status = status
        self.manifest.error = f"{type(error).__name__}: {error}"
        self.manifest.ended_at = _now()
        try:
            self.write_manifest()
        except RunFormatError:
            # The failure may be a manifest that does not validate: record the ending anyway, so the
            # folder is listed as stopped (with the reason) rather than left saying "running".
            payload = self.manifest.model_dump(mode="json")
            write_json_atomic(self.partial / MANIFEST_FILE, payload)

    def finish(self, keep_checkpoints: bool = False) -> Path:
        if not keep_checkpoints:
            shutil.rmtree(self.partial / CHECKPOINTS_FOLDER, ignore_errors=True)
            (self.partial / PROGRESS_FILE).unlink(missing_ok=True)
        self.manifest.status = "complete"
        self.manifest.ended_at = _now()
        self.write_manifest()
        atomic_files.replace_directory(self.partial, self.folder)
        return self.folder


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class RunAmender:
    """Adds files to a complete run in place (what can be computed afterwards without retraining,
    e.g. more similarity measures from captures of the untouched models), through the schema.

    Each file is written atomically; the manifest (with the new files in its artefact list) is
    validated and written last, so a stop halfway leaves a run that is still complete and lists
    only what it had. ``record`` notes what was added, by which code, in ``manifest.amendments``.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.manifest = read_json_record(RunManifest, self.folder / MANIFEST_FILE)
        if self.manifest.status != "complete":
            raise RunStoreError(f"{self.folder} is not a complete run ({self.manifest.status}); finish or resume it first")
        self.added: list[str] = []

    def save_similarity(self, record: SimilarityMatrixFile) -> str:
        name = similarity_file_name(record.metric, record.view)
        write_json_atomic(self.folder / name, record_json(record))
        self.added.append(name)
        return name

    def commit(self, what: str, details: dict | None = None) -> None:
        self.manifest.artefacts = sorted(set(self.manifest.artefacts) | set(self.added))
        self.manifest.amendments.append({"at": _now(), "what": what, "files": sorted(self.added),
                                         "provenance": provenance_record(), **(details or {})})
        self.manifest = write_validated_manifest(self.folder, self.manifest)
