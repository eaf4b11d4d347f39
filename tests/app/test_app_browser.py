"""The real app in a real browser: `streamlit run app/main.py` on a tiny run, Debian's Chromium driven
headless by Playwright; every page is visited, checked for Streamlit exceptions, and photographed.

Needs Debian's ``chromium`` (/usr/bin/chromium) and the ``playwright`` Python package (which drives
that Chromium through ``executable_path``: no ``playwright install`` download). Skipped, saying
which is missing, where either is absent. Screenshots go to the test's temporary folder, or to
``$PKT_SCREENSHOTS`` when set.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from app_fixtures import APP
from run_builders import evaluation_folder

CHROMIUM = "/usr/bin/chromium"
SHIPPED = Path(__file__).resolve().parents[2] / "cached_runs"
PAGES = [("", "Runs"), ("alignment", "Layer alignment"), ("mapping", "Layer mapping"),
         ("projections", "Projections"), ("benchmarks", "Benchmarks"), ("new_run", "New run")]

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


@pytest.fixture
def server(app_run, isolated_pkt_home):
    yield from _serve(isolated_pkt_home, dict(os.environ))


@pytest.fixture
def shipped_server(isolated_pkt_home):
    """The app on the repository's cached_runs/, as a fresh clone opens it."""
    yield from _serve(isolated_pkt_home, {**os.environ, "PKT_CACHED_RUNS": str(SHIPPED)})


def _serve(isolated_pkt_home, environment):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    pytest.importorskip("playwright", reason="the playwright package is missing (pip install playwright)")
    if shutil.which("streamlit", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("the streamlit command is missing beside this Python")
    port = _free_port()
    log = open(isolated_pkt_home / "streamlit.log", "w")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "streamlit"), "run", APP, "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        stdout=log, stderr=subprocess.STDOUT, env={**environment, "PKT_JOBS_IDLE_EXIT": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            log.close()
            pytest.fail("streamlit did not start:\n" + (isolated_pkt_home / "streamlit.log").read_text()[-3000:])
        time.sleep(0.3)
    yield url
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()


def test_every_page_renders_in_chromium_without_exceptions(server, tmp_path):
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("PKT_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            for path, header in PAGES:
                page.goto(f"{server}/{path}", wait_until="domcontentloaded")
                page.get_by_role("heading", name=header).first.wait_for(timeout=60_000)
                # Wait until the script run is over (Streamlit shows a running indicator meanwhile).
                page.wait_for_function(
                    "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=60_000)
                if path in ("alignment", "mapping", "projections", "benchmarks"):
                    page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
                page.wait_for_timeout(500)
                page.screenshot(path=str(shots / f"{path or 'runs'}.png"), full_page=True)
                exceptions = page.locator('[data-testid="stException"]')
                assert exceptions.count() == 0, f"{header}: {exceptions.first.inner_text()}"
                assert page.locator('[data-testid="stAlert"]').filter(has_text="cannot show the run").count() == 0
            # One interaction: another view redraws the heatmap without an exception.
            page.goto(f"{server}/alignment", wait_until="domcontentloaded")
            page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
            page.get_by_text("target before x target after").first.click()
            page.wait_for_timeout(1500)
            assert page.locator('[data-testid="stException"]').count() == 0
            page.screenshot(path=str(shots / "alignment-before-after.png"), full_page=True)
        finally:
            browser.close()
    assert len(list(shots.glob("*.png"))) >= len(PAGES)


def test_the_runs_page_on_the_shipped_runs_shows_the_gain_the_items_give(shipped_server):
    """In Chromium, on cached_runs/: the run the app opens on, and its gain as the Runs page shows
    it, equal to the mean item score after minus before read here from its items.parquet."""
    import numpy as np
    import pyarrow.parquet as pq
    from playwright.sync_api import sync_playwright

    from pkt_core.runs.catalogue import list_runs

    shipped = [listing for listing in list_runs([SHIPPED]) if listing.complete]
    if not shipped:
        pytest.skip("cached_runs/ holds no run")
    opened = max((l for l in shipped if l.manifest.method == "semalign"), key=lambda l: l.manifest.created_at)
    task = next(iter(opened.manifest.evaluation))
    means = {role: float(np.mean(pq.read_table(evaluation_folder(opened.path, task, role) / "items.parquet")
                                 .column("score").to_pylist())) for role in ("target_before", "target_after")}
    expected = f"(gain {means['target_after'] - means['target_before']:+.3f})"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(shipped_server, wait_until="domcontentloaded")
            page.get_by_role("heading", name="Runs").first.wait_for(timeout=60_000)
            page.wait_for_function(
                "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=60_000)
            caption = page.get_by_text(f"{task} ", exact=False).filter(has_text="(gain ").first
            caption.wait_for(timeout=60_000)
            assert expected in caption.inner_text(), (expected, caption.inner_text())
            assert caption.inner_text().startswith(f"{opened.run_id}: "), caption.inner_text()
            assert page.locator('[data-testid="stException"]').count() == 0
        finally:
            browser.close()
