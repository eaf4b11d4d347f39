"""Tensors that many shipped runs hold alike, stored once in the shipped folder's ``_shared/``.

Every run of a pair computes the same source probe states, the same untouched-target probe states
(same probes, same precision) and the same cross-model map: on the Qwen pair 6.9 MB of the
8.3 MB a shipped SemAlign run holds, and only the target-after states (1.4 MB) are its own.
Shipping moves each such group of tensors into ``<root>/_shared/<digest>.safetensors``, named by
the SHA-256 of its tensors (names, dtypes, shapes and bytes), so identical groups of two runs are
one file, and records the digests in the manifest (``shipped.shared_parts``, per file). The reader
(:class:`pkt_core.runs.reader.Run`) reads such a file as the run's own rest plus its parts and
checks each part against its digest. Only shipping does this: a run written by ``pkt transfer``
stays self-contained.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pkt_core.runs.schema import CROSS_MAP_FILE, PROBE_ACTIVATIONS_FILE

SHARED_FOLDER = "_shared"
# The tensor groups that repeat between runs of one pair, by file: a group is the tensors whose
# name starts with it (``source.layer.3`` is in ``source``). The target-after states never repeat.
SHAREABLE_GROUPS: dict[str, tuple[str, ...]] = {
    PROBE_ACTIVATIONS_FILE: ("source", "target_before"),
    CROSS_MAP_FILE: ("cross_map",),
}


class SharedPartError(ValueError):
    """A shared part is missing, unreadable, or not the tensors its digest names."""


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors in name order: name, dtype, shape and raw bytes of each."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def shared_part_path(run_folder: Path, digest: str) -> Path:
    """Where a run's part lives: ``_shared/`` beside the run folder (the shipped root)."""
    return Path(run_folder).parent / SHARED_FOLDER / f"{digest}.safetensors"


def _group_of(name: str) -> str:
    return name.split(".", 1)[0]


def _save_atomically(tensors: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(temporary))
    os.replace(temporary, path)


def share_tensors(run_folder: Path) -> dict[str, list[str]]:
    """Move the shareable groups of ``run_folder``'s tensor files into ``_shared/`` beside it.

    Returns the manifest's ``shipped.shared_parts`` (file -> digests of its parts). What stays in
    the run's own file is what no other run holds; a file left empty is removed."""
    run_folder = Path(run_folder)
    parts: dict[str, list[str]] = {}
    for name, groups in SHAREABLE_GROUPS.items():
        path = run_folder / name
        if not path.is_file():
            continue
        tensors = load_file(str(path))
        for group in groups:
            chosen = {key: value for key, value in tensors.items() if _group_of(key) == group}
            if not chosen:
                continue
            digest = tensor_digest(chosen)
            target = shared_part_path(run_folder, digest)
            if not target.is_file():
                _save_atomically(chosen, target)
            parts.setdefault(name, []).append(digest)
            for key in chosen:
                del tensors[key]
        if tensors:
            _save_atomically(tensors, path)
        else:
            path.unlink()
    return parts


def load_shared_part(run_folder: Path, digest: str) -> dict[str, torch.Tensor]:
    """One part, checked against its digest (a part edited or swapped by hand is refused)."""
    path = shared_part_path(run_folder, digest)
    if not path.is_file():
        raise SharedPartError(f"shared part {SHARED_FOLDER}/{path.name} is missing: restore the folder "
                              f"{SHARED_FOLDER}/ beside the run (it ships with the repository), or rerun the run "
                              "with the command in its manifest (shipped.reproduce)")
    try:
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises several kinds for a damaged file
        raise SharedPartError(f"shared part {SHARED_FOLDER}/{path.name} is unreadable ({error})") from error
    if tensor_digest(tensors) != digest:
        raise SharedPartError(f"shared part {SHARED_FOLDER}/{path.name} does not hold the tensors its name "
                              "says (changed since it was shipped); restore it from the repository")
    return tensors


def referenced_digests(manifests) -> set[str]:
    """Every digest the given manifests' ``shipped.shared_parts`` and ``shipped.shared_folders`` name."""
    shipped = [manifest.shipped for manifest in manifests if manifest.shipped is not None]
    return ({digest for record in shipped for digests in record.shared_parts.values() for digest in digests}
            | {digest for record in shipped for digest in record.shared_folders.values()})


def prune_shared(root: Path, keep: set[str]) -> list[Path]:
    """Remove the parts under ``root/_shared`` no shipped run names (a run replaced or deleted)."""
    folder = Path(root) / SHARED_FOLDER
    removed = []
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        if path.stem not in keep:
            path.unlink()
            removed.append(path)
    return removed
