"""Captured activations: in memory or as safetensors shards on disk, one reader for both.

On disk a capture is a folder with ``capture.json`` (written last) and shards
``shard-r{rank}-{index}.safetensors``, each holding for its rows:
``layer.{l}.{site}`` (rows x width), ``sequence_id``, ``position`` (-1 for pooled rows),
``token_id`` (-1 for pooled rows) and optionally ``logits`` (rows x vocab).
Rows are ordered by sequence id, then position; shards of rank r come before those of r + 1
because every rank owns a contiguous block of sequences.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pkt_core.atomic_files import replace_directory, write_json_atomic
from pkt_core.errors import ActivationStoreError

FORMAT = "pkt-activations/1"
METADATA_FILE = "capture.json"
SITES = ("resid_pre", "resid_post", "contribution")
KEY_TENSORS = ("sequence_id", "position", "token_id")


def tensor_key(layer: int, site: str) -> str:
    return f"layer.{layer}.{site}"


@dataclass
class CapturedRows:
    """The rows one batch contributes: per (layer, site) a (rows x width) tensor, plus row keys."""

    activations: dict[tuple[int, str], torch.Tensor]
    sequence_id: torch.Tensor
    position: torch.Tensor
    token_id: torch.Tensor
    logits: torch.Tensor | None = None
    dropped_outliers: list[tuple[int, int]] = field(default_factory=list)

    @property
    def n_rows(self) -> int:
        return int(self.sequence_id.shape[0])

    def nbytes(self) -> int:
        total = sum(t.numel() * t.element_size() for t in self.activations.values())
        if self.logits is not None:
            total += self.logits.numel() * self.logits.element_size()
        return total

    def as_tensor_dict(self) -> dict[str, torch.Tensor]:
        tensors = {tensor_key(layer, site): t.contiguous() for (layer, site), t in self.activations.items()}
        tensors["sequence_id"] = self.sequence_id.to(torch.int64).contiguous()
        tensors["position"] = self.position.to(torch.int64).contiguous()
        tensors["token_id"] = self.token_id.to(torch.int64).contiguous()
        if self.logits is not None:
            tensors["logits"] = self.logits.contiguous()
        return tensors


def concatenate_rows(parts: list[CapturedRows]) -> CapturedRows:
    if not parts:
        raise ActivationStoreError("no rows were captured (empty data, or every token was filtered out)")
    keys = list(parts[0].activations)
    return CapturedRows(
        activations={key: torch.cat([p.activations[key] for p in parts]) for key in keys},
        sequence_id=torch.cat([p.sequence_id for p in parts]),
        position=torch.cat([p.position for p in parts]),
        token_id=torch.cat([p.token_id for p in parts]),
        logits=torch.cat([p.logits for p in parts]) if parts[0].logits is not None else None,
        dropped_outliers=[pair for p in parts for pair in p.dropped_outliers],
    )


class ActivationSet:
    """Read access to a capture, whether it lives in memory or in a folder of shards."""

    def __init__(self, metadata: dict, rows: CapturedRows | None = None, folder: Path | None = None) -> None:
        if (rows is None) == (folder is None):
            raise ValueError("an ActivationSet is backed by rows in memory or by a folder, not both")
        self.metadata = metadata
        self._rows = rows
        self.folder = folder

    @property
    def layers(self) -> list[int]:
        return list(self.metadata["layers"])

    @property
    def sites(self) -> list[str]:
        return list(self.metadata["sites"])

    @property
    def n_rows(self) -> int:
        return int(self.metadata["n_rows"])

    @property
    def in_memory(self) -> bool:
        return self._rows is not None

    def _check(self, layer: int, site: str) -> None:
        if layer not in self.layers:
            raise ActivationStoreError(f"layer {layer} was not captured; captured layers: {self.layers}")
        if site not in self.sites:
            raise ActivationStoreError(f"site {site!r} was not captured; captured sites: {self.sites}")

    def layer_tensor(self, layer: int, site: str = "resid_post") -> torch.Tensor:
        """All rows of one layer and site, as a (n_rows x width) tensor in the stored dtype."""
        self._check(layer, site)
        if self._rows is not None:
            return self._rows.activations[(layer, site)]
        return self._read_concatenated(tensor_key(layer, site))

    def layer(self, layer: int, site: str = "resid_post") -> np.ndarray:
        """All rows of one layer and site as float32 NumPy (n_rows x width)."""
        return self.layer_tensor(layer, site).to(torch.float32).numpy()

    def row_keys(self) -> np.ndarray:
        """(n_rows x 2) int64: sequence id and position (-1 for pooled rows) of every row."""
        if self._rows is not None:
            sequence_id, position = self._rows.sequence_id, self._rows.position
        else:
            sequence_id, position = self._read_concatenated("sequence_id"), self._read_concatenated("position")
        return torch.stack([sequence_id, position], dim=1).numpy()

    def token_ids(self) -> np.ndarray:
        if self._rows is not None:
            return self._rows.token_id.numpy()
        return self._read_concatenated("token_id").numpy()

    def logits(self) -> torch.Tensor:
        if not self.metadata.get("options", {}).get("include_logits"):
            raise ActivationStoreError("this capture holds no logits (it was made without include_logits)")
        if self._rows is not None:
            assert self._rows.logits is not None
            return self._rows.logits
        return self._read_concatenated("logits")

    def _read_concatenated(self, key: str) -> torch.Tensor:
        assert self.folder is not None
        pieces = []
        for shard in self.metadata["shards"]:
            path = self.folder / shard["file"]
            try:
                with safe_open(str(path), framework="pt") as handle:
                    pieces.append(handle.get_tensor(key))
            except (OSError, Exception) as error:  # safetensors raises its own error types
                raise ActivationStoreError(
                    f"cannot read {key!r} from {path}: {error}. The capture folder is corrupt; capture again."
                ) from error
        return torch.cat(pieces)

    def save(self, folder: Path) -> "ActivationSet":
        """Write an in-memory capture to ``folder`` atomically and return the on-disk set."""
        if self._rows is None:
            raise ActivationStoreError("this capture is already on disk at " + str(self.folder))
        writer = ShardWriter(folder)
        with writer:
            writer.append(self._rows)
            writer.commit(dict(self.metadata))
        return open_activations(folder)


class ShardWriter:
    """Streams rows into shards in ``<folder>.partial`` and renames it to ``folder`` on commit.

    Used as a context manager: leaving it without :meth:`commit` (an error, a cancel) removes the
    partial folder, so an existing capture at ``folder`` is never damaged and no half capture stays.
    With ``rank``/``world_size`` several processes write into one partial folder; only rank 0
    commits, after every rank has called :meth:`finish_rank`.
    """

    def __init__(self, folder: Path, shard_bytes: int = 256 * 2**20, rank: int = 0, overwrite: bool = False) -> None:
        self.folder = Path(folder)
        self.partial = self.folder.with_name(self.folder.name + ".partial")
        self.shard_bytes = shard_bytes
        self.rank = rank
        self.overwrite = overwrite
        self._buffer: list[CapturedRows] = []
        self._buffered_bytes = 0
        self.shards: list[dict] = []
        self.n_rows = 0
        self.dropped_outliers: list[tuple[int, int]] = []
        self._committed = False

    def prepare(self) -> None:
        """Rank 0 clears leftovers of an interrupted capture; call before any rank writes."""
        if self.folder.exists() and not self.overwrite:
            raise ActivationStoreError(f"{self.folder} already exists; pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(self.partial, ignore_errors=True)
        self.partial.mkdir(parents=True)

    def __enter__(self) -> "ShardWriter":
        if self.rank == 0 and not self.partial.exists():
            self.prepare()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not self._committed:
            shutil.rmtree(self.partial, ignore_errors=True)

    def append(self, rows: CapturedRows) -> None:
        if rows.n_rows == 0:
            return
        self._buffer.append(rows)
        self._buffered_bytes += rows.nbytes()
        if self._buffered_bytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        rows = concatenate_rows(self._buffer)
        name = f"shard-r{self.rank:03d}-{len(self.shards):05d}.safetensors"
        save_file(rows.as_tensor_dict(), str(self.partial / name))
        self.shards.append({"file": name, "rows": rows.n_rows})
        self.n_rows += rows.n_rows
        self.dropped_outliers.extend(rows.dropped_outliers)
        self._buffer, self._buffered_bytes = [], 0

    def finish_rank(self) -> None:
        """Flush and leave this rank's part list for rank 0 to merge."""
        self.flush()
        part = {"shards": self.shards, "n_rows": self.n_rows, "dropped_outliers": self.dropped_outliers}
        write_json_atomic(self.partial / f"rank-{self.rank:03d}.json", part)

    def commit(self, metadata: dict, world_size: int = 1) -> None:
        """Merge every rank's part list into capture.json (written last) and move the folder into place."""
        if self.rank != 0:
            raise ActivationStoreError("only rank 0 commits a capture")
        self.finish_rank()
        shards: list[dict] = []
        dropped: list = []
        n_rows = 0
        for rank in range(world_size):
            part_path = self.partial / f"rank-{rank:03d}.json"
            if not part_path.is_file():
                raise ActivationStoreError(f"rank {rank} did not finish its part of the capture")
            part = json.loads(part_path.read_text())
            shards += part["shards"]
            dropped += part["dropped_outliers"]
            n_rows += part["n_rows"]
            part_path.unlink()
        if n_rows == 0:
            raise ActivationStoreError("no rows were captured (empty data, or every token was filtered out)")
        metadata = {
            **metadata,
            "format": FORMAT,
            "n_rows": n_rows,
            "shards": shards,
            "dropped_outliers": {"count": len(dropped), "rows": [list(pair) for pair in dropped]},
            "status": "complete",
        }
        write_json_atomic(self.partial / METADATA_FILE, metadata)
        replace_directory(self.partial, self.folder)
        self._committed = True


def open_activations(folder: str | Path) -> ActivationSet:
    """Open a capture folder, checking that it is complete; raise :class:`ActivationStoreError` if not."""
    folder = Path(folder)
    metadata_path = folder / METADATA_FILE
    if not folder.is_dir():
        partial = folder.with_name(folder.name + ".partial")
        extra = f" (an unfinished capture is at {partial})" if partial.exists() else ""
        raise ActivationStoreError(f"no capture folder at {folder}{extra}")
    if not metadata_path.is_file():
        raise ActivationStoreError(f"{folder} has no {METADATA_FILE}: the capture did not finish or is not a capture")
    try:
        metadata = json.loads(metadata_path.read_text())
    except json.JSONDecodeError as error:
        raise ActivationStoreError(f"{metadata_path} is not valid JSON ({error}); capture again") from error
    if metadata.get("format") != FORMAT:
        raise ActivationStoreError(f"{folder} has format {metadata.get('format')!r}; this reader expects {FORMAT}")
    if metadata.get("status") != "complete":
        raise ActivationStoreError(f"{folder} is marked {metadata.get('status')!r}, not complete")
    rows = 0
    for shard in metadata["shards"]:
        path = folder / shard["file"]
        if not path.is_file():
            raise ActivationStoreError(f"{folder} lists shard {shard['file']} but it is missing; capture again")
        rows += shard["rows"]
    if rows != metadata["n_rows"]:
        raise ActivationStoreError(f"{folder}: shards hold {rows} rows but capture.json says {metadata['n_rows']}")
    return ActivationSet(metadata, folder=folder)
