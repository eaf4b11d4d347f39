"""Evaluation folders that many shipped runs hold alike, stored once in the shipped folder's ``_shared/``.

Every run of a pair scores the source and the untouched target on the same items with the same
settings, so its ``evaluation/<task>/source`` and ``evaluation/<task>/target_before`` folders are
the same bytes as every other run's (the evaluation cache makes the later runs' copies exact):
on the Qwen pair 0.45 MB of each MMLU run. Shipping moves each such folder whole into
``<root>/_shared/<digest>/``, named by the SHA-256 of its files (names and bytes), so identical
folders of two runs are one, and records the digest in the manifest (``shipped.shared_folders``:
the folder's path in the run -> digest). A folder whose bytes differ from every other run's (a
run evaluated under other settings) still moves, alone. The reader resolves the run's paths under
such a folder to the shared copy and checks the copy against its digest before it reads it.
Only shipping does this; a run written by ``pkt transfer`` stays self-contained.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from functools import lru_cache
from pathlib import Path, PurePosixPath

from pkt_core.runs.schema import EVALUATION_FOLDER
from pkt_core.runs.shared_tensors import SHARED_FOLDER, SharedPartError

# The roles whose evaluations are the same in every run of a pair; the target-after role never is.
SHAREABLE_ROLES = ("source", "target_before")


def folder_digest(folder: Path) -> str:
    """SHA-256 over the folder's files in name order: relative name, size and bytes of each."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        data = path.read_bytes()
        digest.update(f"{path.relative_to(folder).as_posix()}|{len(data)}|".encode())
        digest.update(data)
    return digest.hexdigest()


def shared_folder_path(run_folder: Path, digest: str) -> Path:
    """Where a run's shared folder lives: ``_shared/<digest>/`` beside the run (the shipped root)."""
    return Path(run_folder).parent / SHARED_FOLDER / digest


def shareable_folders(run_folder: Path) -> list[str]:
    """The run's evaluation folders of the source and the untouched target, relative to the run."""
    root = Path(run_folder) / EVALUATION_FOLDER
    found = []
    for task in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        for role in SHAREABLE_ROLES:
            if (task / role).is_dir() and any((task / role).iterdir()):
                found.append(f"{EVALUATION_FOLDER}/{task.name}/{role}")
    return found


def share_folders(run_folder: Path) -> dict[str, str]:
    """Move the shareable evaluation folders of ``run_folder`` into ``_shared/`` beside it.

    Returns the manifest's ``shipped.shared_folders`` (folder in the run -> digest). A folder some
    other run already shares is removed from this run and named by the same digest."""
    run_folder = Path(run_folder)
    shared: dict[str, str] = {}
    for relative in shareable_folders(run_folder):
        source = run_folder / relative
        digest = folder_digest(source)
        target = shared_folder_path(run_folder, digest)
        if not target.is_dir():
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f".{digest}.{os.getpid()}.tmp")
            shutil.rmtree(temporary, ignore_errors=True)
            shutil.copytree(source, temporary)
            os.replace(temporary, target)  # whole or not at all
        shutil.rmtree(source)
        shared[relative] = digest
    return shared


def resolve_shared_path(run_folder: Path, shared_folders: dict[str, str], name: str) -> Path | None:
    """The shared copy of the run's file or folder ``name`` (a path relative to the run), checked
    against its digest; None when ``name`` is not under a shared folder."""
    parts = PurePosixPath(name).parts
    for relative, digest in shared_folders.items():
        prefix = PurePosixPath(relative).parts
        if parts[:len(prefix)] == prefix:
            folder = checked_shared_folder(run_folder, digest)
            return folder.joinpath(*parts[len(prefix):])
    return None


def checked_shared_folder(run_folder: Path, digest: str) -> Path:
    """The shared folder ``digest``, refused when missing or when its files are not the ones its
    name says (edited or swapped by hand)."""
    folder = shared_folder_path(run_folder, digest)
    if not folder.is_dir():
        raise SharedPartError(f"shared folder {SHARED_FOLDER}/{digest} is missing: restore the folder "
                              f"{SHARED_FOLDER}/ beside the run (it ships with the repository), or rerun the run "
                              "with the command in its manifest (shipped.reproduce)")
    stamp = tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*") if p.is_file()))
    if _digest_of(folder, stamp) != digest:
        raise SharedPartError(f"shared folder {SHARED_FOLDER}/{digest} does not hold the files its name says "
                              "(changed since it was shipped); restore it from the repository")
    return folder


@lru_cache(maxsize=1024)
def _digest_of(folder: Path, stamp: tuple) -> str:
    """The digest of a folder, remembered per (folder, its files' names, times and sizes): the app
    reads a run's evaluations on every rerun, and an unchanged folder need not be hashed again."""
    del stamp  # part of the cache key only
    return folder_digest(folder)


def prune_shared_folders(root: Path, keep: set[str]) -> list[Path]:
    """Remove the shared folders under ``root/_shared`` no shipped run names (a run replaced or deleted)."""
    folder = Path(root) / SHARED_FOLDER
    removed = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.is_dir() and not path.name.startswith(".") and path.name not in keep:
            shutil.rmtree(path)
            removed.append(path)
    return removed
