"""Find run folders and read their manifests through the schema, never failing on a broken one.

A folder is listed as complete only when its manifest validates as a :class:`RunManifest` of
the current format with status ``complete`` and every artefact it lists is there and intact
(JSON files parse and validate, Parquet footers and safetensors headers read). Anything else is
listed with the reason (the file, the field, what was expected), never shown as a result.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pkt_core.paths import pkt_home
from pkt_core.runs.schema import (
    COMPARISON_FILE,
    FORMAT_VERSION,
    MANIFEST_FILE,
    MAPPINGS_FILE,
    SUMMARY_FILE,
    TABLE_FILES,
    TABLES,
    EvaluationSummary,
    LayerMaps,
    PairedComparison,
    RunFormatError,
    RunManifest,
    SimilarityMatrixFile,
    parse_record,
    parse_similarity_file_name,
)

MIGRATE_HINT = "rewrite it with `python -m pkt_core.runs.migration FOLDER`"


@dataclass(frozen=True)
class RunListing:
    path: Path
    manifest: RunManifest | None
    problem: str | None
    raw: dict | None = None  # the manifest as JSON, when it parsed but did not validate

    @property
    def complete(self) -> bool:
        return self.problem is None

    @property
    def run_id(self) -> str:
        if self.manifest is not None:
            return self.manifest.run_id
        return str((self.raw or {}).get("run_id") or self.path.name)

    @property
    def status(self) -> str:
        if self.manifest is not None:
            return self.manifest.status
        return "unreadable"


def default_run_roots(repository_root: Path | None = None) -> list[Path]:
    """The shipped runs (``$PKT_CACHED_RUNS``, default the repository's ``cached_runs/``), then
    the user's ``$PKT_HOME/runs``."""
    roots = []
    shipped = os.environ.get("PKT_CACHED_RUNS")
    if shipped:
        roots.append(Path(shipped))
    elif repository_root is not None:
        roots.append(repository_root / "cached_runs")
    roots.append(pkt_home() / "runs")
    return roots


def _load_manifest(folder: Path) -> tuple[RunManifest | None, dict | None, str | None]:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None, None, f"no {MANIFEST_FILE}: not a run, or a run that never started"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        return None, None, f"{MANIFEST_FILE} is corrupt ({error})"
    if not isinstance(raw, dict):
        return None, None, f"{MANIFEST_FILE} does not hold an object"
    version = raw.get("format_version", 1)  # format 1 had no version field
    if isinstance(version, int) and version < FORMAT_VERSION:
        return None, raw, f"{MANIFEST_FILE} is run format {version}, older than this library reads; {MIGRATE_HINT}"
    try:
        return parse_record(RunManifest, raw, MANIFEST_FILE), raw, None
    except RunFormatError as error:
        return None, raw, str(error)


def read_run(folder: Path) -> RunListing:
    if folder.name.endswith(".partial"):
        return _read_partial(folder)
    manifest, raw, problem = _load_manifest(folder)
    if manifest is None:
        return RunListing(folder, None, problem, raw)
    if manifest.status != "complete":
        return RunListing(folder, manifest, f"status is {manifest.status!r}, not complete")
    broken = _broken_artefact(folder, manifest)
    if broken:
        return RunListing(folder, None, broken, raw)
    return RunListing(folder, manifest, None, raw)


def _read_partial(folder: Path) -> RunListing:
    """A run still being written: running, or stopped (failed, cancelled) and resumable."""
    manifest, raw, problem = _load_manifest(folder)
    if manifest is None:
        return RunListing(folder, None, f"unfinished: {problem or 'the run stopped before it wrote a manifest'}", raw)
    if manifest.status == "running":
        return RunListing(folder, manifest, f"in progress ({len(manifest.stages)} stages finished so far), or "
                                            "stopped abruptly")
    error = f": {manifest.error}" if manifest.error else ""
    return RunListing(folder, manifest, f"{manifest.status}{error}; continue it with the same command and --resume")


def _broken_artefact(folder: Path, manifest: RunManifest) -> str | None:
    """The first listed artefact that is missing or damaged, described; None when all are intact."""
    from pkt_core.runs.shared_folders import resolve_shared_path
    from pkt_core.runs.shared_tensors import SHARED_FOLDER, SharedPartError, shared_part_path

    shared = manifest.shipped.shared_parts if manifest.shipped else {}
    for name, digests in shared.items():
        for digest in digests:
            part = shared_part_path(folder, digest)
            if not part.is_file():
                return (f"{name}: its shared part {SHARED_FOLDER}/{part.name} is missing; restore {SHARED_FOLDER}/ "
                        "beside the run from the repository, or rerun with the command in the manifest")
            stat = part.stat()
            problem = _artefact_problem(part, f"{SHARED_FOLDER}/{part.name}", stat.st_mtime_ns, stat.st_size)
            if problem:
                return problem
    shared_folders = manifest.shipped.shared_folders if manifest.shipped else {}
    for name in manifest.artefacts:
        try:
            path = resolve_shared_path(folder, shared_folders, name) or folder / name
        except SharedPartError as error:
            return f"{name}: {error}"
        if not path.is_file():
            left_out = manifest.shipped.left_out if manifest.shipped else []
            if name in left_out or name in shared:
                continue
            return f"{name} is listed in the manifest but missing"
        stat = path.stat()
        problem = _artefact_problem(path, name, stat.st_mtime_ns, stat.st_size)
        if problem:
            return problem
    return None


@lru_cache(maxsize=4096)
def _artefact_problem(path: Path, name: str, mtime_ns: int, size: int) -> str | None:
    """The integrity check of one file, remembered per (file, modification time, size): the app
    lists runs on every rerun, and a file that has not changed need not be read again."""
    try:
        _check_artefact(path, name)
    except RunFormatError as error:
        return str(error)
    return None


def _check_artefact(path: Path, name: str) -> None:
    """Cheap integrity checks: JSON records validate, Parquet footers and safetensors headers read."""
    file = path.name
    if file.endswith(".json"):
        record = None
        if parse_similarity_file_name(file) is not None:
            record = SimilarityMatrixFile
        elif file == MAPPINGS_FILE:
            record = LayerMaps
        elif file == SUMMARY_FILE:
            record = EvaluationSummary
        elif file == COMPARISON_FILE:
            record = PairedComparison
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RunFormatError(f"{name}: not readable JSON ({error})") from None
        if record is not None:
            parse_record(record, payload, name)
    elif file.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(path)
        except Exception as error:  # pyarrow raises several kinds for a damaged footer
            raise RunFormatError(f"{name}: not a readable Parquet table ({error})") from None
        kind = "items" if file == "items.parquet" else TABLE_FILES.get(file)
        if kind is not None:
            TABLES[kind].check(schema, name)
    elif file.endswith(".safetensors"):
        _check_safetensors_header(path, name)


def _check_safetensors_header(path: Path, name: str) -> None:
    """The header parses and the data it describes fits in the file (a truncated file does not)."""
    try:
        with path.open("rb") as stream:
            length = struct.unpack("<Q", stream.read(8))[0]
            header = json.loads(stream.read(length))
        size = path.stat().st_size
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunFormatError(f"{name}: not a readable safetensors file ({error})") from None
    end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    if 8 + length + end > size:
        raise RunFormatError(f"{name}: truncated ({size} bytes, its header describes {8 + length + end})")


def list_runs(roots: list[Path]) -> list[RunListing]:
    listings = []
    from pkt_core.runs.shared_tensors import SHARED_FOLDER

    for root in roots:
        if not root.is_dir():
            continue
        # _shared/ holds the tensors shipped runs share, not a run.
        for folder in sorted(p for p in root.iterdir()
                             if p.is_dir() and not p.name.startswith(".") and p.name != SHARED_FOLDER):
            listings.append(read_run(folder))
    return listings
