"""Finding runs: complete ones, and every other folder with the reason it is not a result."""

import json

from run_builders import write_full_run

from pkt_core.runs.catalogue import list_runs


def _set(folder, **changes) -> None:
    raw = json.loads((folder / "manifest.json").read_text())
    raw.update(changes)
    (folder / "manifest.json").write_text(json.dumps(raw))


def test_runs_are_listed_and_broken_ones_say_why(tmp_path):
    root = tmp_path / "runs"
    write_full_run(root / "good")
    failed, _ = write_full_run(root / "failed")
    _set(failed, status="failed", error="RuntimeError: boom")
    (root / "corrupt").mkdir()
    (root / "corrupt" / "manifest.json").write_text("{oops")
    (root / "empty").mkdir()
    (root / "x.partial").mkdir()
    cancelled, _ = write_full_run(root / "y")
    cancelled = cancelled.rename(root / "y.partial")
    _set(cancelled, status="cancelled", error="KeyboardInterrupt: ")
    running, _ = write_full_run(root / "z")
    running = running.rename(root / "z.partial")
    raw = json.loads((running / "manifest.json").read_text())
    _set(running, status="running", stages={"bases": raw["stages"].get("bases") or {"wall_seconds": 1.0}})
    listings = {listing.path.name: listing for listing in list_runs([root, tmp_path / "missing"])}
    assert listings["good"].complete and listings["good"].manifest.method == "semalign"
    assert "status is 'failed', not complete" in listings["failed"].problem
    assert "corrupt" in listings["corrupt"].problem
    assert "no manifest.json" in listings["empty"].problem
    assert listings["x.partial"].problem.startswith("unfinished")
    assert listings["y.partial"].problem.startswith("cancelled: KeyboardInterrupt") and "--resume" in listings["y.partial"].problem
    assert listings["z.partial"].problem.startswith("in progress (1 stages finished")
    assert listings["z.partial"].status == "running"
    assert sum(listing.complete for listing in listings.values()) == 1
