"""The app's first page renders on an empty and on a populated run folder (no browser needed)."""

import json
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

APP = str(Path(__file__).resolve().parents[1] / "app" / "main.py")


def test_runs_page_renders_without_runs():
    app = AppTest.from_file(APP, default_timeout=60).run()
    assert not app.exception
    assert app.title[0].value == "PKT Studio"


def test_runs_page_lists_complete_and_broken_runs(isolated_pkt_home):
    runs = isolated_pkt_home / "runs"
    (runs / "r1").mkdir(parents=True)
    (runs / "r1" / "manifest.json").write_text(json.dumps({"status": "complete", "method": "semalign"}))
    (runs / "r2").mkdir()
    (runs / "r2" / "manifest.json").write_text("{broken")
    app = AppTest.from_file(APP, default_timeout=60).run()
    assert not app.exception
    assert len(app.dataframe) == 2
    assert "1 run folder(s) are incomplete" in app.warning[0].value
