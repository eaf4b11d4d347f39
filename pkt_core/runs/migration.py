"""Rewrite a run folder of an older run format in the current one, keeping every number.

Format 1 (every run made before the schema) to format 2:

- the manifest gains ``format_version`` and ``provenance``. Format 1 recorded no code revision:
  the migration records the newest commit of the repository made before the run started,
  marked as inferred (the working tree of that day may have differed), and the run's reproduce
  command where it was shipped with one;
- ``cka_<view>.json`` becomes ``similarity_linear_cka_<view>.json`` with its view written in;
- a similarity file that stored its matrix under ``matrix`` (``pkt similarity`` of format 1)
  stores it under ``values``;
- the manifest's artefact list follows the renames (a run that listed none gets the list of its files).

Every file is validated against the schema after the rewrite; the manifest is written last, so
a migration that stops halfway leaves a folder that is still listed as format 1 and can be
migrated again. ``python -m pkt_core.runs.migration FOLDER [FOLDER ...]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from pkt_core import atomic_files
from pkt_core.runs.schema import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    RunFormatError,
    RunManifest,
    SimilarityMatrixFile,
    parse_record,
    parse_similarity_file_name,
    similarity_file_name,
)

RevisionLookup = Callable[[str], str | None]


def repository_revision_before(timestamp: str, checkout: Path | None = None) -> str | None:
    """The newest commit of the checkout made before ``timestamp`` (ISO 8601), or None."""
    checkout = checkout or Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(["git", "-C", str(checkout), "log", "-1", f"--before={timestamp}", "--format=%H"],
                              capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def migrate_run(folder: Path, revision_before: RevisionLookup = repository_revision_before) -> bool:
    """Bring ``folder`` to the current format in place; returns False when it already was."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    version = manifest.get("format_version", 1)
    if version == FORMAT_VERSION:
        parse_record(RunManifest, manifest, f"{folder.name}/{MANIFEST_FILE}")
        return False
    if version != 1:
        raise RunFormatError(f"{folder}: cannot migrate from run format {version!r}")
    renames = _migrate_similarity_files(folder)
    if "artefacts" in manifest:
        manifest["artefacts"] = sorted(renames.get(name, name) for name in manifest["artefacts"])
    else:  # the earliest runs listed none: what the folder holds is what the run wrote
        manifest["artefacts"] = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                                       if p.is_file() and p.name != MANIFEST_FILE)
    manifest["format_version"] = FORMAT_VERSION
    manifest["provenance"] = _inferred_provenance(manifest, revision_before)
    parse_record(RunManifest, manifest, f"{folder.name}/{MANIFEST_FILE}")
    atomic_files.write_json_atomic(manifest_path, manifest)
    return True


def _migrate_similarity_files(folder: Path) -> dict[str, str]:
    """Rename and rewrite the similarity files; returns old name -> new name."""
    renames = {}
    for path in sorted(folder.glob("*.json")):
        parsed = parse_similarity_file_name(path.name)
        if parsed is None:
            continue
        metric, view = parsed
        payload = json.loads(path.read_text(encoding="utf-8"))
        if "values" not in payload and "matrix" in payload:
            payload["values"] = payload.pop("matrix")
        payload.setdefault("metric", metric)
        payload["view"] = view
        payload["format_version"] = FORMAT_VERSION
        record = parse_record(SimilarityMatrixFile, payload, path.name)
        new_name = similarity_file_name(record.metric, view)
        atomic_files.write_json_atomic(folder / new_name, record.model_dump(mode="json"))
        if new_name != path.name:
            path.unlink()
            renames[path.name] = new_name
    return renames


def _inferred_provenance(manifest: dict, revision_before: RevisionLookup) -> dict:
    environment = manifest.get("environment") or {}
    created = manifest.get("created_at")
    commit = revision_before(created) if created else None
    reproduce = (manifest.get("shipped") or {}).get("reproduce")
    command = reproduce.split("&&")[-1].strip() if reproduce else None
    return {
        "code": {"package_version": environment.get("pkt_core", "unknown"), "git_commit": commit, "git_dirty": None,
                 "source": "inferred at migration from run format 1: the newest commit before the run started "
                           "(format 1 recorded no revision; the working tree that day may have differed)"},
        "command": command,
        "hardware": {"cpu": None, "cpu_count": environment.get("cpu_count"), "memory_gib": None,
                     "gpus": list(environment.get("gpus") or []), "torch_threads": environment.get("torch_threads")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pkt_core.runs.migration", description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="run folders to bring to the current format")
    args = parser.parse_args(argv)
    for folder in args.folders:
        try:
            changed = migrate_run(folder)
        except RunFormatError as error:
            print(f"{folder}: not migrated: {error}", file=sys.stderr)
            return 2
        print(f"{folder}: {'migrated to' if changed else 'already'} run format {FORMAT_VERSION}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
