"""Runs page: the table of runs (gains, cost, status), broken runs with reasons, explore and compare."""

import json
import shutil

import pyarrow.parquet as pq
import pytest

pytest.importorskip("streamlit")

from app_fixtures import chart, copy_run, decode, texts  # noqa: E402

TABLE_COLUMNS = {"runs_table": "gains", "broken_runs": "problem", "compare_table": ""}


def _table(at, key):
    """A table on the page, known by a column only it has (plain tables carry no element id)."""
    for frame in at.dataframe:
        if TABLE_COLUMNS[key] in frame.value.columns:
            return frame.value
    raise AssertionError(f"no dataframe {key}")


def test_runs_table_shows_the_run_with_gains_read_from_its_evaluations(app_test, app_run):
    at = app_test()
    table = _table(at, "runs_table")
    row = table[table["run_id"] == app_run.name].iloc[0]
    manifest = json.loads((app_run / "manifest.json").read_text())
    assert (row["method"], row["variant"], row["task"], row["status"]) == ("semalign", "v1", "mmlu", "complete")
    assert row["pair"] == "tiny-source -> tiny-target"
    # Independent reference: mean item scores of the target after and before, from the Parquet files.
    scores = {role: pq.read_table(app_run / "evaluation" / "mmlu" / role / "items.parquet").column("score").to_pylist()
              for role in ("target_before", "target_after")}
    expected = sum(scores["target_after"]) / len(scores["target_after"]) - \
        sum(scores["target_before"]) / len(scores["target_before"])
    assert row["gain"] == pytest.approx(expected)
    assert "mmlu acc" in row["gains"] and "[" in row["gains"]
    assert row["wall_s"] == pytest.approx(manifest["wall_seconds"])
    assert row["peak_rss_mib"] == pytest.approx(max(s["peak_rss_mib"] for s in manifest["stages"].values()))
    assert row["trainable_params"] == manifest["trainable_parameters"]
    assert row["hardware"].startswith("CPU (")


def test_broken_runs_are_listed_with_their_reason_and_never_as_results(app_test, isolated_pkt_home, app_run):
    runs = isolated_pkt_home / "runs"
    (runs / "corrupt").mkdir()
    (runs / "corrupt" / "manifest.json").write_text("{not json")
    (runs / "half.partial").mkdir()
    (runs / "half.partial" / "manifest.json").write_text(json.dumps({"status": "cancelled"}))
    failed = copy_run(app_run, runs, "failed-run")
    manifest = json.loads((failed / "manifest.json").read_text())
    manifest["status"] = "failed"
    (failed / "manifest.json").write_text(json.dumps(manifest))
    at = app_test()
    complete = _table(at, "runs_table")
    broken = _table(at, "broken_runs")
    assert list(complete["run_id"]) == [app_run.name]
    reasons = dict(zip(broken["run_id"], broken["problem"]))
    assert "manifest.json is corrupt" in reasons["corrupt"]
    assert reasons["half.partial"].startswith("cancelled") and "--resume" in reasons["half.partial"]
    assert "status is 'failed'" in reasons["failed-run"]
    assert "3 run folder(s) are incomplete or unreadable" in at.warning[0].value
    # The broken runs cannot be picked for exploring.
    assert at.sidebar.selectbox[0].options == [app_run.name + " (v1, mmlu)"]


def test_a_run_with_a_damaged_file_is_shown_as_such_on_every_page(app_test, app_run):
    (app_run / "cka_target_source_after.json").write_text('{"values": [[0.1, ')  # truncated
    (app_run / "fidelity.parquet").write_bytes(b"PAR1 not really parquet")
    at = app_test("views/alignment.py")
    assert "cka_target_source_after.json: unreadable" in texts(at)
    # Only the views the run can still show are offered (options are the labels shown).
    assert at.radio(key="alignment_view").options == ["target x source, before transfer",
                                                      "target before x target after"]
    at.switch_page("views/mapping.py").run()
    assert not at.exception
    assert any("fidelity.parquet is unreadable" in error.value for error in at.error)


def test_explore_switches_to_the_run_and_two_runs_compare(app_test, isolated_pkt_home, app_run):
    other = copy_run(app_run, isolated_pkt_home / "runs", "zz-second-run")
    at = app_test()
    folders = at.selectbox(key="explore_pick").options
    assert len(folders) == 2
    at.selectbox(key="explore_pick").set_value(str(other)).run()
    at.button(key="explore_button").click().run()
    assert not at.exception
    assert at.session_state["current_run"] == str(other)
    assert at.header[0].value == "Layer alignment"

    at.switch_page("views/runs.py").run()
    at.multiselect(key="compare_runs").set_value([str(app_run), str(other)]).run()
    assert not at.exception
    comparison = _table(at, "compare_table")
    assert set(comparison.columns) == {"", app_run.name, "zz-second-run"}
    figure = chart(at, "compare-profile")
    assert {trace["name"] for trace in figure["data"]} == {app_run.name, "zz-second-run"}
    # Both runs are copies: identical profiles, each equal to the mapped CKA after transfer.
    after = json.loads((app_run / "cka_target_source_after.json").read_text())["values"]
    chosen = json.loads((app_run / "mappings.json").read_text())
    table = chosen["mappings"][chosen["chosen"]]["table"]
    expected = [sum(w * after[row["target_layer"]][s] for s, w in zip(row["source_layers"], row["weights"]))
                / sum(row["weights"]) for row in table]
    for trace in figure["data"]:
        assert decode(trace["y"]) == pytest.approx(expected)


def test_empty_home_says_there_are_no_runs(isolated_pkt_home):
    from app_fixtures import APP
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert "No runs yet" in at.info[0].value
    # Every page says there is nothing to show, without an exception.
    for page in ("views/alignment.py", "views/mapping.py", "views/projections.py", "views/benchmarks.py"):
        at.switch_page(page).run()
        assert not at.exception
        assert "No complete run" in texts(at)


@pytest.mark.parametrize("missing", ["mappings.json", "probe_activations.safetensors", "cross_map.safetensors",
                                     "everything"])
def test_every_page_survives_a_run_missing_files(app_test, app_run, missing):
    names = [p.name for p in app_run.iterdir() if p.name != "manifest.json"] if missing == "everything" else [missing]
    for name in names:
        path = app_run / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    at = app_test()
    for page in ("views/alignment.py", "views/mapping.py", "views/projections.py", "views/benchmarks.py",
                 "views/new_run.py", "views/runs.py"):
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
    at.switch_page("views/mapping.py").run()
    if missing in ("mappings.json", "everything"):
        assert any("has no" in error.value for error in at.error), [e.value for e in at.error]
