"""Read a finished run folder: manifest, tables, similarity matrices, probe activations, delta.

The app and the evaluation read runs only through this module; a missing or corrupt artefact
raises :class:`RunReadError` naming the file, never a bare exception.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from pkt_core.errors import PktError
from pkt_core.runs.catalogue import read_run


class RunReadError(PktError):
    """A run folder is incomplete or one of its files is unreadable."""


@dataclass
class Run:
    folder: Path
    manifest: dict

    @property
    def run_id(self) -> str:
        return self.manifest.get("run_id", self.folder.name)

    def _file(self, name: str) -> Path:
        path = self.folder / name
        if not path.is_file():
            raise RunReadError(f"run {self.run_id} has no {name}")
        return path

    def has(self, name: str) -> bool:
        return (self.folder / name).is_file()

    def table(self, name: str) -> list[dict]:
        import pyarrow.parquet as pq

        try:
            return pq.read_table(self._file(name)).to_pylist()
        except RunReadError:
            raise
        except Exception as error:  # pyarrow raises several error types for a damaged file
            raise RunReadError(f"run {self.run_id}: {name} is unreadable ({error})") from error

    def json(self, name: str):
        try:
            return json.loads(self._file(name).read_text())
        except json.JSONDecodeError as error:
            raise RunReadError(f"run {self.run_id}: {name} is not valid JSON ({error})") from error

    def matrix(self, name: str) -> np.ndarray:
        return np.asarray(self.json(name)["values"], dtype=np.float64)

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        try:
            return load_file(str(self._file(name)))
        except RunReadError:
            raise
        except Exception as error:
            raise RunReadError(f"run {self.run_id}: {name} is unreadable ({error})") from error

    @cached_property
    def mappings(self) -> dict:
        return self.json("mappings.json")

    def weight_delta(self) -> dict[str, torch.Tensor]:
        name = (self.manifest.get("weights_delta") or {}).get("file")
        if not name:
            raise RunReadError(f"run {self.run_id} was saved without its weight delta")
        return self.tensors(name)


def open_run(folder: str | Path) -> Run:
    """Open a complete run; an incomplete, failed or corrupt one raises with the reason."""
    listing = read_run(Path(folder))
    if not listing.complete:
        raise RunReadError(f"{folder} is not a complete run: {listing.problem}")
    return Run(Path(folder), listing.manifest)


def apply_run_to_model(model: torch.nn.Module, run: Run) -> None:
    """Turn the run's untouched target into its transferred target, in place."""
    from pkt_core.transfer.frontier import apply_weight_delta

    apply_weight_delta(model, run.weight_delta())
