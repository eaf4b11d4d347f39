"""The app's first page renders on an empty and on a populated run folder (no browser needed)."""

import json
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

APP = str(Path(__file__).resolve().parents[2] / "app" / "main.py")


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


SHIPPED = Path(__file__).resolve().parents[2] / "cached_runs"
PAGES = ["views/alignment.py", "views/mapping.py", "views/projections.py", "views/benchmarks.py"]


def test_the_app_opens_on_the_shipped_runs(monkeypatch):
    """What a fresh clone shows: every run in cached_runs/ is complete and every page draws it."""
    from pkt_core.runs.catalogue import list_runs

    shipped = list_runs([SHIPPED])
    if not shipped:
        pytest.skip("cached_runs/ holds no run yet")
    assert all(listing.complete for listing in shipped), [l.problem for l in shipped if not l.complete]
    monkeypatch.setenv("PKT_CACHED_RUNS", str(SHIPPED))
    app = AppTest.from_file(APP, default_timeout=120).run()
    assert not app.exception
    assert not app.warning  # nothing broken among the shipped runs
    for page in PAGES:
        app.switch_page(page).run()
        assert not app.exception, (page, app.exception)
