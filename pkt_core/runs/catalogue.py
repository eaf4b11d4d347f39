"""Find run folders and read their manifests, never failing on a broken one.

A run is a folder with ``manifest.json`` (its full format belongs to the transfer pipeline);
this module only needs ``status`` and a few descriptive fields. A folder without a readable
manifest, or whose status is not ``complete``, is listed with the reason, never shown as done.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pkt_core.paths import pkt_home

MANIFEST_FILE = "manifest.json"
SUMMARY_FIELDS = ("run_id", "pair", "source", "target", "method", "variant", "task", "created_at", "hardware")


@dataclass(frozen=True)
class RunListing:
    path: Path
    manifest: dict | None
    problem: str | None

    @property
    def complete(self) -> bool:
        return self.problem is None

    def row(self) -> dict:
        manifest = self.manifest or {}
        row = {field: manifest.get(field) for field in SUMMARY_FIELDS}
        row["run_id"] = row["run_id"] or self.path.name
        row["status"] = manifest.get("status", "unreadable") if self.manifest else "unreadable"
        row["problem"] = self.problem or ""
        row["folder"] = str(self.path)
        return row


def default_run_roots(repository_root: Path | None = None) -> list[Path]:
    """The shipped runs (``$PKT_CACHED_RUNS``, default the repository's ``cached_runs/``), then
    the user's ``$PKT_HOME/runs``."""
    import os

    roots = []
    shipped = os.environ.get("PKT_CACHED_RUNS")
    if shipped:
        roots.append(Path(shipped))
    elif repository_root is not None:
        roots.append(repository_root / "cached_runs")
    roots.append(pkt_home() / "runs")
    return roots


def read_run(folder: Path) -> RunListing:
    manifest_path = folder / MANIFEST_FILE
    if folder.name.endswith(".partial"):
        return _read_partial(folder, manifest_path)
    if not manifest_path.is_file():
        return RunListing(folder, None, f"no {MANIFEST_FILE}: not a run, or a run that never started")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return RunListing(folder, None, f"{MANIFEST_FILE} is corrupt ({error})")
    if not isinstance(manifest, dict):
        return RunListing(folder, None, f"{MANIFEST_FILE} does not hold an object")
    status = manifest.get("status")
    if status != "complete":
        return RunListing(folder, manifest, f"status is {status!r}, not complete")
    return RunListing(folder, manifest, None)


def _read_partial(folder: Path, manifest_path: Path) -> RunListing:
    """A run still being written: running, or stopped (failed, cancelled) and resumable."""
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return RunListing(folder, None, "unfinished: the run stopped before it wrote a readable manifest")
    if not isinstance(manifest, dict):
        return RunListing(folder, None, "unfinished: the run stopped before it wrote a readable manifest")
    status = manifest.get("status", "unknown")
    if status == "running":
        finished = len(manifest.get("stages", {}))
        return RunListing(folder, manifest, f"in progress ({finished} stages finished so far), or stopped abruptly")
    error = f": {manifest['error']}" if manifest.get("error") else ""
    return RunListing(folder, manifest, f"{status}{error}; continue it with the same command and --resume")


def list_runs(roots: list[Path]) -> list[RunListing]:
    listings = []
    for root in roots:
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            listings.append(read_run(folder))
    return listings
