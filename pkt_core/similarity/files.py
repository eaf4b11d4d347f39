"""Layer-matrix files: JSON (the run format's similarity record: ``values`` as nested lists, with the
metadata) or NPZ (array + JSON metadata), written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pkt_core.errors import SimilarityInputError

SUFFIXES = (".json", ".npz")


def _check_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise SimilarityInputError(f"cannot write {path}: the file name must end in {' or '.join(SUFFIXES)}.")
    return suffix


def _json_document(values: np.ndarray, metadata: dict[str, Any], path: Path) -> dict:
    """The file as the run format's :class:`~pkt_core.runs.schema.SimilarityMatrixFile`, so that a
    file named ``similarity_<metric>_<view>.json`` dropped into a run folder is part of the run."""
    from pkt_core.runs.schema import SimilarityMatrixFile, parse_record, parse_similarity_file_name, record_json

    named = parse_similarity_file_name(path.name)
    document = {**metadata, "values": np.asarray(values, dtype=float).tolist()}
    if named is not None:
        document.setdefault("view", named[1])
    return record_json(parse_record(SimilarityMatrixFile, document, path.name))


def write_matrix_file(path: str | Path, values: np.ndarray, metadata: dict[str, Any]) -> Path:
    """Write ``values`` and ``metadata`` to ``path`` (.json or .npz) via a temporary file and
    ``os.replace``, so a reader never sees half a file and a failed write leaves the old one."""
    path = Path(path)
    suffix = _check_suffix(path)
    if not np.isfinite(values).all():
        # The engine raises instead of producing NaN; this guards files built by hand.
        raise SimilarityInputError("refusing to write a similarity matrix that contains NaN or inf.")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            if suffix == ".json":
                stream.write(json.dumps(_json_document(values, metadata, path), indent=1, allow_nan=False).encode())
            else:
                np.savez(stream, matrix=np.asarray(values, dtype=np.float64),
                         metadata=np.array(json.dumps(metadata, allow_nan=False)))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def read_matrix_file(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """The matrix and metadata of a file written by :func:`write_matrix_file`."""
    path = Path(path)
    suffix = _check_suffix(path)
    if suffix == ".json":
        document = json.loads(path.read_text())
        # Format 1 files kept the matrix under "matrix"; the run format's record keeps it under "values".
        values = document.pop("values") if "values" in document else document.pop("matrix")
        return np.asarray(values, dtype=np.float64), document
    with np.load(path, allow_pickle=False) as archive:
        return archive["matrix"], json.loads(str(archive["metadata"]))
