"""Runs page: the table of runs (gains, cost, status), broken runs with reasons, explore and compare."""

import json

import pyarrow.parquet as pq
import pytest

pytest.importorskip("streamlit")

from app_fixtures import chart, copy_run, decode, edit_manifest, remove_artefacts, texts  # noqa: E402
from run_builders import evaluation_folder

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
    scores = {role: pq.read_table(evaluation_folder(app_run, "mmlu", role) / "items.parquet").column("score").to_pylist()
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
    half = copy_run(app_run, runs, "half.partial")

    def cancel(manifest) -> None:
        manifest.status, manifest.error = "cancelled", "TransferCancelled: cancelled before stage stage-001"

    edit_manifest(half, cancel)
    failed = copy_run(app_run, runs, "failed-run")
    edit_manifest(failed, lambda manifest: setattr(manifest, "status", "failed"))
    # A manifest whose evaluation of a task is a number (not an object): named, never drawn.
    wrong = copy_run(app_run, runs, "wrong-shape")
    raw = json.loads((wrong / "manifest.json").read_text())
    raw["evaluation"]["mmlu"] = 0.5
    (wrong / "manifest.json").write_text(json.dumps(raw))
    at = app_test()
    complete = _table(at, "runs_table")
    broken = _table(at, "broken_runs")
    assert list(complete["run_id"]) == [app_run.name]
    reasons = dict(zip(broken["run_id"], broken["problem"]))
    assert "manifest.json is corrupt" in reasons["corrupt"]
    assert reasons["half.partial"].startswith("cancelled") and "--resume" in reasons["half.partial"]
    assert "status is 'failed'" in reasons["failed-run"]
    assert reasons["wrong-shape"].startswith("manifest.json: field evaluation.mmlu: ")
    assert "4 run folder(s) are incomplete or unreadable" in at.warning[0].value
    # The broken runs cannot be picked for exploring.
    assert at.sidebar.selectbox[0].options == [app_run.name + " (semalign v1, mmlu)"]


@pytest.mark.parametrize("damage", ["truncated similarity", "bad parquet", "truncated tensors", "missing file"])
def test_a_complete_run_with_a_damaged_or_missing_file_is_listed_as_unreadable(app_test, app_run, damage):
    """Marked complete but with a listed artefact damaged or gone: never drawn with wrong numbers;
    the Runs page names the file and what is wrong, and no page shows the run."""
    name = {"truncated similarity": "similarity_linear_cka_target_source_after.json",
            "bad parquet": "fidelity.parquet", "truncated tensors": "probe_activations.safetensors",
            "missing file": "mappings.json"}[damage]
    path = app_run / name
    if damage == "truncated similarity":
        path.write_text('{"values": [[0.1, ')
    elif damage == "bad parquet":
        path.write_bytes(b"PAR1 not really parquet")
    elif damage == "truncated tensors":
        path.write_bytes(path.read_bytes()[:-100])
    else:
        path.unlink()
    at = app_test()
    broken = _table(at, "broken_runs")
    reason = dict(zip(broken["run_id"], broken["problem"]))[app_run.name]
    assert reason.startswith(name), reason
    assert {"truncated similarity": "not readable JSON", "bad parquet": "not a readable Parquet table",
            "truncated tensors": "truncated", "missing file": "listed in the manifest but missing"}[damage] in reason
    for page in ("views/alignment.py", "views/mapping.py", "views/projections.py", "views/benchmarks.py"):
        at.switch_page(page).run()
        assert not at.exception
        assert "No complete run" in texts(at)


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
    after = json.loads((app_run / "similarity_linear_cka_target_source_after.json").read_text())["values"]
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


@pytest.mark.parametrize("missing", ["probe_activations.safetensors", "cross_map.safetensors", "fidelity.parquet",
                                     "attribution.parquet", "evaluation"])
def test_every_page_shows_a_well_formed_run_that_lacks_a_file(app_test, app_run, missing):
    """A run written without a piece (removed through the schema, as a run made without that stage
    or shipped without it): every page draws what the run holds, with no exception and no error box."""
    remove_artefacts(app_run, missing)
    if missing == "evaluation":
        edit_manifest(app_run, lambda manifest: setattr(manifest, "evaluation", {}))
    at = app_test()
    for page in ("views/alignment.py", "views/mapping.py", "views/projections.py", "views/benchmarks.py",
                 "views/new_run.py", "views/runs.py"):
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
        assert not at.error, (page, [e.value for e in at.error])
