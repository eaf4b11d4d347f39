"""Format 1 -> 2: every number kept, the files renamed, provenance recorded as inferred."""

from __future__ import annotations

import json

import pytest
from run_builders import write_full_run

from pkt_core.runs.catalogue import read_run
from pkt_core.runs.migration import main, migrate_run
from pkt_core.runs.reader import open_run


def _as_format_1(folder) -> dict:
    """Turn a run written by today's writer into the layout format 1 had: no format_version, no
    provenance, linear CKA in ``cka_<view>.json`` without its view, other matrices under ``matrix``."""
    raw = json.loads((folder / "manifest.json").read_text())
    del raw["format_version"], raw["provenance"]
    for path in sorted(folder.glob("similarity_*.json")):
        payload = json.loads(path.read_text())
        del payload["view"], payload["format_version"]
        if payload["metric"] == "linear_cka":
            new = folder / path.name.replace("similarity_linear_cka_", "cka_")
        else:
            payload["matrix"] = payload.pop("values")
            new = path
        path.unlink()
        new.write_text(json.dumps(payload))
        raw["artefacts"] = sorted(new.name if a == path.name else a for a in raw["artefacts"])
    (folder / "manifest.json").write_text(json.dumps(raw))
    return raw


def test_a_format_1_run_is_refused_then_migrated_keeping_every_number(tmp_path):
    folder, written = write_full_run(tmp_path / "old-run")
    old = _as_format_1(folder)
    assert "pkt_core.runs.migration" in read_run(folder).problem
    assert migrate_run(folder, revision_before=lambda timestamp: "c0ffee" if timestamp == old["created_at"] else None)
    run = open_run(folder)
    for (metric, view), values in written["similarity"].items():
        assert run.similarity(metric, view).record.values == values.tolist()  # bit for bit
        assert (folder / f"similarity_{metric}_{view}.json").is_file()
    assert not list(folder.glob("cka_*.json"))
    code = run.manifest.provenance.code
    assert code.git_commit == "c0ffee" and code.git_dirty is None and "inferred" in code.source
    new = json.loads((folder / "manifest.json").read_text())
    assert {k: v for k, v in new.items() if k not in ("format_version", "provenance", "artefacts")} == \
        {k: v for k, v in old.items() if k != "artefacts"}
    assert not migrate_run(folder)  # a second migration changes nothing


def test_the_command_line_migrates_and_reports(tmp_path, capsys):
    folder, _ = write_full_run(tmp_path / "old")
    _as_format_1(folder)
    assert main([str(folder)]) == 0
    assert "migrated to run format 2" in capsys.readouterr().out
    raw = json.loads((folder / "manifest.json").read_text())
    raw["format_version"] = 7
    (folder / "manifest.json").write_text(json.dumps(raw))
    assert main([str(folder)]) == 2
    assert "cannot migrate from run format 7" in capsys.readouterr().err


@pytest.mark.parametrize("dirty", [False, True])
def test_provenance_records_the_commit_and_whether_the_tree_was_dirty(tmp_path, monkeypatch, dirty):
    import subprocess

    from pkt_core import provenance

    checkout = tmp_path / "checkout"
    (checkout / "pkt_core").mkdir(parents=True)
    (checkout / "pkt_core" / "a.py").write_text("x = 1\n")
    git = lambda *args: subprocess.run(["git", "-C", str(checkout), *args], check=True, capture_output=True,  # noqa: E731
                                       text=True).stdout.strip()
    git("init", "-q")
    git("-c", "user.email=t@t", "-c", "user.name=t", "add", "-A")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "one")
    if dirty:
        (checkout / "pkt_core" / "a.py").write_text("x = 2\n")
    monkeypatch.setattr(provenance, "PACKAGE_ROOT", checkout / "pkt_core")
    provenance.code_revision.cache_clear()
    record = provenance.code_revision()
    provenance.code_revision.cache_clear()
    assert record["git_commit"] == git("rev-parse", "HEAD") and record["git_dirty"] is dirty
    assert record["source"] == "git checkout"
