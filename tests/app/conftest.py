"""App test fixtures: one real run made by the library per session, copied into each test's PKT_HOME."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import app_fixtures  # noqa: E402
from app_fixtures import APP  # noqa: E402


def _build(tmp_path_factory, name: str, make, run_name: str):
    """A run made by ``make(run folder, model folder)`` in its own PKT_HOME; (run, model folder)."""
    root = tmp_path_factory.mktemp(name)
    (root / "models").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PKT_HOME", str(root / "home"))
        return make(root / run_name, root / "models"), root / "models"


@pytest.fixture(scope="session")
def built_run(tmp_path_factory):
    """(run folder, model folder) of a complete tiny SemAlign run with MMLU evaluations."""
    return _build(tmp_path_factory, "app_run", app_fixtures.make_run, "tiny-v1-mmlu")


@pytest.fixture(scope="session")
def built_formulations_run(tmp_path_factory):
    """A complete tiny run whose evaluation holds MMLU in two formulations (letters and cloze)."""
    return _build(tmp_path_factory, "formulations_run", app_fixtures.make_formulations_run,
                  "tiny-v1-mmlu-formulations")[0]


@pytest.fixture
def formulations_run(isolated_pkt_home, built_formulations_run):
    """The two-formulation run, copied under this test's $PKT_HOME/runs as the only run the app lists."""
    return app_fixtures.copy_run(built_formulations_run, isolated_pkt_home / "runs")


@pytest.fixture
def app_run(isolated_pkt_home, built_run):
    """The session's run, copied under this test's $PKT_HOME/runs (so the app lists it)."""
    return app_fixtures.copy_run(built_run[0], isolated_pkt_home / "runs")


@pytest.fixture
def app_test(app_run):
    from streamlit.testing.v1 import AppTest

    def start(page: str | None = None):
        at = AppTest.from_file(APP, default_timeout=180).run()
        assert not at.exception, at.exception
        if page:
            at.switch_page(page).run()
            assert not at.exception, at.exception
        return at

    return start


@pytest.fixture
def deferred_downloads(monkeypatch):
    """file id -> the callable a download button registered (the bytes are made when it is called)."""
    from streamlit.runtime.media_file_manager import MediaFileManager

    recorded: dict[str, object] = {}
    original = MediaFileManager.add_deferred

    def add_deferred(self, data_callable, *args, **kwargs):
        file_id = original(self, data_callable, *args, **kwargs)
        recorded[file_id] = data_callable
        return file_id

    monkeypatch.setattr(MediaFileManager, "add_deferred", add_deferred)
    return recorded
