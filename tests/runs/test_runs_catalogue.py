import json

from pkt_core.runs.catalogue import list_runs


def test_runs_are_listed_and_broken_ones_say_why(tmp_path):
    root = tmp_path / "runs"
    (root / "good").mkdir(parents=True)
    (root / "good" / "manifest.json").write_text(json.dumps({"status": "complete", "method": "semalign"}))
    (root / "failed").mkdir()
    (root / "failed" / "manifest.json").write_text(json.dumps({"status": "failed"}))
    (root / "corrupt").mkdir()
    (root / "corrupt" / "manifest.json").write_text("{oops")
    (root / "empty").mkdir()
    (root / "x.partial").mkdir()
    (root / "y.partial").mkdir()
    (root / "y.partial" / "manifest.json").write_text(json.dumps({"status": "cancelled", "error": "KeyboardInterrupt: "}))
    (root / "z.partial").mkdir()
    (root / "z.partial" / "manifest.json").write_text(json.dumps({"status": "running", "stages": {"bases": {}}}))
    listings = {listing.path.name: listing for listing in list_runs([root, tmp_path / "missing"])}
    assert listings["good"].complete and listings["good"].row()["method"] == "semalign"
    assert "not complete" in listings["failed"].problem
    assert "corrupt" in listings["corrupt"].problem
    assert "no manifest.json" in listings["empty"].problem
    assert "stopped before it wrote a readable manifest" in listings["x.partial"].problem
    assert listings["y.partial"].problem.startswith("cancelled: KeyboardInterrupt") and "--resume" in listings["y.partial"].problem
    assert listings["z.partial"].problem.startswith("in progress (1 stages finished")
    assert listings["z.partial"].row()["status"] == "running"
    assert sum(listing.complete for listing in listings.values()) == 1
