"""Read a finished run folder through the schema: manifest, similarity matrices, layer maps,
evaluations, tables and tensors, each as its typed record.

The app, shipping and the figures read runs only through :class:`Run`; a missing or corrupt
file raises :class:`RunReadError` naming the file and what was wrong, never a bare exception, and
never a silently wrong number.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pkt_core.errors import PktError
from pkt_core.runs.catalogue import read_run
from pkt_core.runs.schema import (
    COMPARISON_FILE,
    EVALUATION_FOLDER,
    ITEMS_FILE,
    LINEAR_PROBE_FILE,
    MAPPINGS_FILE,
    ROLES,
    SUMMARY_FILE,
    TABLE_FILES,
    TABLES,
    TENSOR_FILES,
    EvaluationSummary,
    LayerMaps,
    PairedComparison,
    RunFormatError,
    RunManifest,
    SimilarityMatrixFile,
    evaluation_path,
    parse_similarity_file_name,
    read_json_record,
)


class RunReadError(PktError):
    """A run folder is incomplete or one of its files is unreadable."""


@dataclass(frozen=True)
class SimilarityEntry:
    """One similarity matrix a run holds: where it is and what it compares."""

    file: str
    metric: str
    view: str
    record: SimilarityMatrixFile

    @property
    def values(self) -> np.ndarray:
        return np.asarray(self.record.values, dtype=np.float64)


@dataclass
class Run:
    folder: Path
    manifest: RunManifest

    @property
    def run_id(self) -> str:
        return self.manifest.run_id

    def _path(self, name: str) -> Path:
        """Where the run's file or folder ``name`` is: in the run, or in a folder it shares with
        other shipped runs (checked against its digest first)."""
        from pkt_core.runs.shared_folders import resolve_shared_path
        from pkt_core.runs.shared_tensors import SharedPartError

        shipped = self.manifest.shipped
        if shipped is not None and shipped.shared_folders:
            try:
                shared = resolve_shared_path(self.folder, shipped.shared_folders, name)
            except SharedPartError as error:
                raise RunReadError(f"run {self.run_id}: {name}: {error}") from None
            if shared is not None:
                return shared
        return self.folder / name

    def _file(self, name: str) -> Path:
        path = self._path(name)
        if not path.is_file():
            raise RunReadError(f"run {self.run_id} has no {name}")
        return path

    def has(self, name: str) -> bool:
        return self._path(name).is_file() or bool(self._shared_digests(name))

    def _shared_digests(self, name: str) -> list[str]:
        """The parts of ``name`` a shipped run keeps in the shipped folder's ``_shared/``."""
        shipped = self.manifest.shipped
        return list(shipped.shared_parts.get(name, [])) if shipped is not None else []

    # -- similarity ---------------------------------------------------------------------
    @cached_property
    def _similarity(self) -> tuple[dict[tuple[str, str], SimilarityEntry], list[str]]:
        found: dict[tuple[str, str], SimilarityEntry] = {}
        problems: list[str] = []
        for path in sorted(self.folder.glob("*.json")):
            parsed = parse_similarity_file_name(path.name)
            if parsed is None:
                continue
            try:
                record = read_json_record(SimilarityMatrixFile, path)
            except RunFormatError as error:
                problems.append(str(error))
                continue
            metric = record.metric or parsed[0]
            if record.view is not None and record.view != parsed[1]:
                problems.append(f"{path.name}: its name says view {parsed[1]}, its content says {record.view}")
                continue
            found[(metric, parsed[1])] = SimilarityEntry(path.name, metric, parsed[1], record)
        return found, problems

    def similarity_entries(self) -> list[SimilarityEntry]:
        return list(self._similarity[0].values())

    def similarity_problems(self) -> list[str]:
        """Similarity files the run holds that could not be read, with the reason."""
        return list(self._similarity[1])

    def similarity(self, metric: str, view: str) -> SimilarityEntry:
        entry = self._similarity[0].get((metric, view))
        if entry is None:
            held = sorted({m for m, _ in self._similarity[0]})
            raise RunReadError(f"run {self.run_id} holds no {metric} matrix for {view}; it holds: "
                               f"{', '.join(held) or 'none'}")
        return entry

    # -- layer maps ---------------------------------------------------------------------
    @cached_property
    def layer_maps(self) -> LayerMaps | None:
        """SemAlign's layer maps (``mappings.json``); None for a method that computes none."""
        if not self.has(MAPPINGS_FILE):
            return None
        return self._record(LayerMaps, MAPPINGS_FILE)

    # -- evaluations --------------------------------------------------------------------
    def evaluated_tasks(self) -> dict[str, list[str]]:
        """task -> roles with a stored evaluation (``evaluation/<task>/<role>/summary.json``)."""
        root = self.folder / EVALUATION_FOLDER
        tasks = {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
        shipped = self.manifest.shipped
        # A shipped run's source and untouched-target folders may live in _shared/.
        tasks |= {Path(name).parent.name for name in (shipped.shared_folders if shipped else {})}
        found: dict[str, list[str]] = {}
        for task in sorted(tasks):
            roles = [role for role in ROLES if self.has(evaluation_path(task, role, SUMMARY_FILE))]
            if roles:
                found[task] = roles
        return found

    def evaluation_folder(self, task: str, role: str) -> Path:
        """The folder of one evaluation (its own, or the shared copy a shipped run names)."""
        return self._path(f"{EVALUATION_FOLDER}/{task}/{role}")

    def evaluation_summary(self, task: str, role: str) -> EvaluationSummary:
        return self._record(EvaluationSummary, evaluation_path(task, role, SUMMARY_FILE))

    def evaluation_items(self, task: str, role: str) -> pd.DataFrame:
        return self.table_frame(evaluation_path(task, role, ITEMS_FILE), "items")

    def comparison(self, task: str) -> PairedComparison | None:
        name = f"{EVALUATION_FOLDER}/{task}/{COMPARISON_FILE}"
        return self._record(PairedComparison, name) if self.has(name) else None

    # -- linear probe -------------------------------------------------------------------
    def linear_probe(self) -> pd.DataFrame | None:
        """The layer-wise linear probe (``linear_probe.parquet``: one row per model and layer), checked
        against its columns; None when the run holds none (``manifest.linear_probe`` says why)."""
        return self.table_frame(LINEAR_PROBE_FILE, "linear_probe") if self.has(LINEAR_PROBE_FILE) else None

    # -- tables and tensors -------------------------------------------------------------
    def table_frame(self, name: str, kind: str | None = None) -> pd.DataFrame:
        """A Parquet table of the run, checked against its kind's columns."""
        import pyarrow.parquet as pq

        kind = kind or TABLE_FILES.get(Path(name).name)
        try:
            table = pq.read_table(self._file(name))
        except RunReadError:
            raise
        except Exception as error:  # pyarrow raises several error types for a damaged file
            raise RunReadError(f"run {self.run_id}: {name} is unreadable ({error})") from error
        if kind is not None:
            try:
                TABLES[kind].check(table.schema, name)
            except RunFormatError as error:
                raise RunReadError(f"run {self.run_id}: {error}") from None
        return table.to_pandas()

    def table(self, name: str) -> list[dict]:
        return self.table_frame(name).to_dict("records")

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        from pkt_core.runs.shared_tensors import SharedPartError, load_shared_part

        digests = self._shared_digests(name)
        try:
            # A shipped run's file may be its own rest plus parts it shares with other runs.
            tensors = load_file(str(self._file(name))) if not digests or (self.folder / name).is_file() else {}
        except RunReadError:
            raise
        except Exception as error:
            raise RunReadError(f"run {self.run_id}: {name} is unreadable ({error})") from error
        for digest in digests:
            try:
                tensors.update(load_shared_part(self.folder, digest))
            except SharedPartError as error:
                raise RunReadError(f"run {self.run_id}: {name}: {error}") from None
        spec = TENSOR_FILES.get(Path(name).name)
        if spec is not None:
            try:
                spec.check(list(tensors), name)
            except RunFormatError as error:
                raise RunReadError(f"run {self.run_id}: {error}") from None
        return tensors

    def weight_delta(self) -> dict[str, torch.Tensor]:
        name = self.manifest.weights_delta.file if self.manifest.weights_delta else None
        if not name:
            raise RunReadError(f"run {self.run_id} was saved without its weight delta")
        return self.tensors(name)

    def _record(self, record_type, name: str):
        try:
            return read_json_record(record_type, self._file(name), name)
        except RunFormatError as error:
            raise RunReadError(f"run {self.run_id}: {error}") from None


def open_run(folder: str | Path) -> Run:
    """Open a complete run; an incomplete, failed, old or corrupt one raises with the reason."""
    listing = read_run(Path(folder))
    if not listing.complete:
        raise RunReadError(f"{folder} is not a complete run: {listing.problem}")
    return Run(Path(folder), listing.manifest)
