"""The app's first page renders on an empty and on a populated run folder (no browser needed)."""

import json
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402
from run_builders import evaluation_folder

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
    # Neither is a run of the current format: both are listed, with the reason, and neither as a result.
    assert "No complete run yet." in app.info[0].value
    problems = dict(zip(app.dataframe[0].value["run_id"], app.dataframe[0].value["problem"]))
    assert "run format 1" in problems["r1"] and "pkt_core.runs.migration" in problems["r1"]
    assert "corrupt" in problems["r2"]
    assert "2 run folder(s) are incomplete" in app.warning[0].value


SHIPPED = Path(__file__).resolve().parents[2] / "cached_runs"
PAGES = ["views/alignment.py", "views/mapping.py", "views/projections.py", "views/benchmarks.py"]


def _shipped_folders() -> list[Path]:
    return sorted(p for p in SHIPPED.iterdir() if (p / "manifest.json").is_file()) if SHIPPED.is_dir() else []


def test_the_app_opens_on_the_newest_shipped_semalign_run(monkeypatch):
    """What a fresh clone shows first: every shipped run complete, and the newest SemAlign run chosen."""
    from pkt_core.runs.catalogue import list_runs

    shipped = list_runs([SHIPPED])
    if not shipped:
        pytest.skip("cached_runs/ holds no run yet")
    assert all(listing.complete for listing in shipped), [l.problem for l in shipped if not l.complete]
    monkeypatch.setenv("PKT_CACHED_RUNS", str(SHIPPED))
    app = AppTest.from_file(APP, default_timeout=120).run()
    assert not app.exception
    assert not app.warning  # nothing broken among the shipped runs
    semalign = [listing for listing in shipped if listing.manifest.method == "semalign"]
    newest = max(semalign, key=lambda listing: listing.manifest.created_at)
    assert app.session_state["current_run"] == str(newest.path)


@pytest.mark.parametrize("page", PAGES)
@pytest.mark.parametrize("folder", _shipped_folders(), ids=lambda p: p.name)
def test_every_page_shows_every_shipped_run_without_an_error(monkeypatch, folder, page):
    """Each shipped run on each page: no exception, and no error box (a page says what a run lacks
    and why, in an info line, instead)."""
    monkeypatch.setenv("PKT_CACHED_RUNS", str(SHIPPED))
    app = AppTest.from_file(APP, default_timeout=180)
    app.session_state["current_run"] = str(folder)
    app.run()
    app.switch_page(page).run()
    assert not app.exception, app.exception
    assert app.session_state["current_run"] == str(folder)
    assert not app.error, [error.value for error in app.error]


def test_a_code_item_shows_its_tests_as_the_gold_not_as_an_answer(isolated_pkt_home, tmp_path):
    """On a HumanEval run (the real pipeline on a tiny pair: two items generated, run in the sandbox
    and scored for the three models) the paired item view names the test program for what it is."""
    import pandas as pd
    from app_fixtures import make_formulations_run

    (isolated_pkt_home / "runs").mkdir(parents=True, exist_ok=True)
    folder = make_formulations_run(isolated_pkt_home / "runs" / "tiny-humaneval", tmp_path / "models",
                                   specs=("humaneval@2",))
    app = AppTest.from_file(APP, default_timeout=180)
    app.session_state["current_run"] = str(folder)
    app.run()
    app.switch_page("views/benchmarks.py").run()
    assert not app.exception
    app.radio(key="benchmarks_flip").set_value("all").run()  # a tiny model gains no item: list them all
    assert not app.exception
    texts = [m.value for m in app.markdown]
    assert any(t.startswith("**Tests**") for t in texts) and not any(t.startswith("**Gold:**") for t in texts)
    shown_item = app.selectbox(key="benchmarks_item").value
    items = pd.read_parquet(evaluation_folder(folder, "humaneval", "target_before") / "items.parquet")
    tests = items.set_index("item_id").loc[shown_item, "target"]
    assert tests.strip() in [block.value.strip() for block in app.code]
