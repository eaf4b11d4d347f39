"""The app's responsiveness, measured with Streamlit's AppTest (no browser):

- first render of the Runs page, from a fresh Python process (imports, run discovery, the table)
  and the script run alone; goal: under 3 s;
- a heatmap switch on the Layer alignment page (measure / view change to a matrix not seen before,
  and back to one already seen); goal: under 0.3 s.

Runs: those the app lists (``cached_runs/`` and ``$PKT_HOME/runs``). With none there, or with
``--tiny``, a tiny SemAlign run is made by the library (the app tests' fixture) in a temporary
``PKT_HOME``; ``--copies N`` lists it N times, as a run folder with many runs would.

    python benchmarks/bench_app.py [--tiny] [--copies 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app" / "main.py"
GOAL_FIRST_RENDER_S = 3.0
GOAL_SWITCH_S = 0.3


def _child(repeats: int) -> None:
    """Runs in a fresh process: prints one JSON line of timings."""
    from streamlit.testing.v1 import AppTest

    started = time.perf_counter()
    at = AppTest.from_file(str(APP), default_timeout=300).run()
    first_render = time.perf_counter() - started
    finished_wall = time.time()
    assert not at.exception, at.exception
    rerender = []
    for _ in range(repeats):
        t = time.perf_counter()
        at.run()
        rerender.append(time.perf_counter() - t)
    t = time.perf_counter()
    at.switch_page("views/alignment.py").run()
    alignment_first = time.perf_counter() - t
    assert not at.exception, at.exception
    # Time a page that drew: a heatmap must be on it (an error page would time nothing useful).
    _require_heatmap(at)
    # Cycle the views: the first pass reads each matrix once; later passes hit the cache.
    radio_values = _view_values(at)
    first_switch, repeat_switch = [], []
    for attempt in range(repeats + 1):
        for value in radio_values[1:] + radio_values[:1]:
            t = time.perf_counter()
            at.radio(key="alignment_view").set_value(value).run()
            (first_switch if attempt == 0 else repeat_switch).append(time.perf_counter() - t)
            assert not at.exception, at.exception
            _require_heatmap(at)
    print(json.dumps({"run": at.session_state["current_run"], "first_render_script_s": first_render, "first_render_done_wall": finished_wall,
                      "rerender_s": rerender, "alignment_first_s": alignment_first, "views": len(radio_values),
                      "switch_first_s": first_switch, "switch_repeat_s": repeat_switch}))


def _require_heatmap(at) -> None:
    charts = [json.loads(element.proto.spec) for element in at.get("plotly_chart")
              if element.proto.id.endswith("alignment-heatmap-chart")]
    if not charts or not any(trace.get("type") == "heatmap" for trace in charts[0]["data"]):
        raise SystemExit(f"the Layer alignment page drew no heatmap (errors: {[e.value for e in at.error]}); "
                         "nothing to time")


def _view_values(at) -> list[str]:
    from pkt_core.figures.alignment_page import VIEW_TITLES

    labels = list(at.radio(key="alignment_view").options)
    by_label = {label: view for view, label in VIEW_TITLES.items()}
    return [by_label[label] for label in labels]


def _make_tiny(home: Path, copies: int) -> None:
    sys.path.insert(0, str(ROOT / "tests" / "app"))
    import app_fixtures

    os.environ["PKT_HOME"] = str(home)
    (home / "runs").mkdir(parents=True, exist_ok=True)
    models = home / "bench-models"
    models.mkdir(exist_ok=True)
    print("making a tiny run with the library (about a minute on 2 cores) ...", flush=True)
    run = app_fixtures.make_run(home / "runs" / "tiny-v1-mmlu", models)
    for index in range(1, copies):
        app_fixtures.copy_run(run, home / "runs", f"tiny-v1-mmlu-copy{index:03d}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="measure on a tiny run made here, not the listed runs")
    parser.add_argument("--copies", type=int, default=1, help="list the tiny run this many times")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.repeats)
        return 0

    sys.path.insert(0, str(ROOT))
    from pkt_core.runs.catalogue import default_run_roots, list_runs

    temporary = None
    environment = dict(os.environ)
    if args.tiny or not any(listing.complete for listing in list_runs(default_run_roots(ROOT))):
        temporary = Path(tempfile.mkdtemp(prefix="pkt-bench-app-"))
        _make_tiny(temporary, max(1, args.copies))
        environment["PKT_HOME"] = str(temporary)
    listed = list_runs(default_run_roots(ROOT)) if temporary is None else None
    try:
        spawned = time.time()
        result = subprocess.run([sys.executable, __file__, "--child", "--repeats", str(args.repeats)],
                                capture_output=True, text=True, env=environment, cwd=ROOT)
        if result.returncode != 0:
            print(result.stdout, result.stderr, sep="\n", file=sys.stderr)
            return result.returncode
        timings = json.loads(result.stdout.strip().splitlines()[-1])
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)

    cold = timings["first_render_done_wall"] - spawned
    script = timings["first_render_script_s"]
    switch_first = statistics.median(timings["switch_first_s"])
    switch_repeat = statistics.median(timings["switch_repeat_s"])
    runs = f"{len(listed)} listed run(s)" if listed is not None else f"tiny run x {max(1, args.copies)}"
    runs += f"; heatmaps timed on {Path(timings['run']).name}"
    print(f"app benchmark on {runs}; {os.cpu_count()} CPU(s)")
    print(f"Runs page, first render from a fresh process: {cold:.2f} s  (goal {GOAL_FIRST_RENDER_S} s, "
          f"ratio {cold / GOAL_FIRST_RENDER_S:.2f})")
    print(f"Runs page, script run alone (first / median rerun): {script:.2f} s / "
          f"{statistics.median(timings['rerender_s']):.3f} s")
    print(f"Layer alignment page, first render: {timings['alignment_first_s']:.3f} s")
    print(f"heatmap switch, matrix not seen before (median of {len(timings['switch_first_s'])}): {switch_first:.3f} s "
          f"(goal {GOAL_SWITCH_S} s, ratio {switch_first / GOAL_SWITCH_S:.2f})")
    print(f"heatmap switch, back to a seen matrix (median of {len(timings['switch_repeat_s'])}): {switch_repeat:.3f} s "
          f"(goal {GOAL_SWITCH_S} s, ratio {switch_repeat / GOAL_SWITCH_S:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
