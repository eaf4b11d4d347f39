"""Layer alignment page: the heatmap is the run's matrix, switching measure or view changes it, the
layer map is drawn over it, profiles match the matrices, and measures the run lacks are named."""

import json

import numpy as np
import pytest

pytest.importorskip("streamlit")

from app_fixtures import chart, decode, texts  # noqa: E402


def _matrix(run, name):
    return np.asarray(json.loads((run / name).read_text())["values"])


def _heatmap(at):
    figure = chart(at, "alignment-heatmap")
    heat = next(trace for trace in figure["data"] if trace["type"] == "heatmap")
    return figure, decode(heat["z"])


def test_heatmap_is_the_runs_matrix_and_each_view_switches_it(app_test, app_run):
    at = app_test("views/alignment.py")
    _, z = _heatmap(at)
    np.testing.assert_allclose(z, _matrix(app_run, "similarity_linear_cka_target_source_before.json"))
    at.radio(key="alignment_view").set_value("target_source_after").run()
    _, z_after = _heatmap(at)
    np.testing.assert_allclose(z_after, _matrix(app_run, "similarity_linear_cka_target_source_after.json"))
    assert not np.allclose(z, z_after)
    at.radio(key="alignment_view").set_value("target_before_after").run()
    figure, z_ba = _heatmap(at)
    np.testing.assert_allclose(z_ba, _matrix(app_run, "similarity_linear_cka_target_before_after.json"))
    assert len(figure["data"]) == 1  # no layer map over a target x target matrix
    at.radio(key="alignment_view").set_value("target_source_difference").run()
    _, z_diff = _heatmap(at)
    np.testing.assert_allclose(z_diff, _matrix(app_run, "similarity_linear_cka_target_source_after.json")
                               - _matrix(app_run, "similarity_linear_cka_target_source_before.json"))
    assert not at.exception


def test_the_chosen_layer_map_is_drawn_over_the_heatmap(app_test, app_run):
    at = app_test("views/alignment.py")
    figure, _ = _heatmap(at)
    overlay = next(trace for trace in figure["data"] if trace["type"] == "scatter")
    mappings = json.loads((app_run / "mappings.json").read_text())
    expected = sorted((row["target_layer"], s) for row in mappings["mappings"][mappings["chosen"]]["table"]
                      for s in row["source_layers"])
    drawn = sorted(zip(decode(overlay["y"]).astype(int).tolist(), decode(overlay["x"]).astype(int).tolist()))
    assert drawn == expected
    assert mappings["chosen"] in overlay["name"]
    # Another map gives other cells where the maps differ; "none" removes the overlay.
    at.selectbox(key="alignment_overlay").set_value("cka-monotone").run()
    overlay = next(trace for trace in chart(at, "alignment-heatmap")["data"] if trace["type"] == "scatter")
    expected = sorted((row["target_layer"], s) for row in mappings["mappings"]["cka-monotone"]["table"]
                      for s in row["source_layers"])
    assert sorted(zip(decode(overlay["y"]).astype(int).tolist(), decode(overlay["x"]).astype(int).tolist())) == expected
    at.selectbox(key="alignment_overlay").set_value("none").run()
    assert [t["type"] for t in chart(at, "alignment-heatmap")["data"]] == ["heatmap"]


def test_profiles_follow_the_matrices(app_test, app_run):
    at = app_test("views/alignment.py")
    figure = chart(at, "alignment-profile")
    traces = {trace["name"]: decode(trace["y"]) for trace in figure["data"]}
    before = _matrix(app_run, "similarity_linear_cka_target_source_before.json")
    after = _matrix(app_run, "similarity_linear_cka_target_source_after.json")
    np.testing.assert_allclose(traces["before: best source layer"], before.max(axis=1))
    np.testing.assert_allclose(traces["after: best source layer"], after.max(axis=1))
    np.testing.assert_allclose(traces["target before x after (same layer)"],
                               np.diag(_matrix(app_run, "similarity_linear_cka_target_before_after.json")))


def _held(run) -> set[str]:
    """Measures with a before-transfer matrix in the run folder, from the file names alone."""
    prefix, suffix = "similarity_", "_target_source_before.json"
    return {p.name[len(prefix):-len(suffix)] for p in run.glob(prefix + "*" + suffix)}


def test_cka_and_cca_side_by_side_from_the_measures_the_run_holds(app_test, app_run):
    at = app_test("views/alignment.py")
    held = _held(app_run)
    assert {"linear_cka", "svcca", "pwcca", "mean_cca"} <= held
    left, right = at.selectbox(key="alignment_measure"), at.selectbox(key="alignment_measure_right")
    assert set(left.options) | set(right.options) == held and not set(left.options) & set(right.options)
    assert left.value == "linear_cka" and right.value == "svcca"
    right_heat = next(trace for trace in chart(at, "alignment-heatmap-right")["data"] if trace["type"] == "heatmap")
    np.testing.assert_allclose(decode(right_heat["z"]), _matrix(app_run, "similarity_svcca_target_source_before.json"))
    assert "principal directions" in texts(at)  # the subspace it ran on, said under the figure
    # Not a CCA that is 1 by construction: the run's SVCCA on its stated principal subspace.
    record = json.loads((app_run / "similarity_svcca_target_source_before.json").read_text())
    assert record["subspace"]["k"] * 10 <= record["n_rows"] and max(map(max, record["values"])) < 1 - 1e-6
    assert "position 0" in texts(at) and "dropped" in texts(at)  # the outlier handling note


def test_a_measure_the_run_lacks_is_named_and_one_view_only_offers_that_view(app_test, app_run):
    from app_fixtures import remove_artefacts

    remove_artefacts(app_run, *[f"similarity_pwcca_{v}.json" for v in ("target_source_before", "target_source_after",
                                                                      "target_before_after")],
                     "similarity_mean_cca_target_source_after.json", "similarity_mean_cca_target_before_after.json")
    at = app_test("views/alignment.py")
    assert "pwcca" not in at.selectbox(key="alignment_measure_right").options
    assert "Not in this run: " in texts(at) and "pwcca" in texts(at)
    at.selectbox(key="alignment_measure").set_value("linear_cka").run()
    at.selectbox(key="alignment_measure_right").set_value("mean_cca").run()
    at.radio(key="alignment_view").set_value("target_source_after").run()
    assert not at.exception
    assert "holds no mean_cca matrix for this view" in texts(at)


PROBE_LINES = {"source": "source", "target_before": "target before", "target_after": "target after"}


def test_the_linear_probe_panel_draws_each_models_accuracy_per_layer_over_relative_depth_with_chance(app_test, app_run):
    import pandas as pd

    at = app_test("views/alignment.py")
    table = pd.read_parquet(app_run / "linear_probe.parquet")
    traces = {trace["name"]: trace for trace in chart(at, "linear-probe")["data"]}
    assert set(traces) == {*PROBE_LINES.values(), "chance (majority label)"}
    for role, name in PROBE_LINES.items():
        rows = table[table["model"] == role].sort_values("layer")
        assert len(rows) == {"source": 4}.get(role, 3)
        np.testing.assert_allclose(decode(traces[name]["y"]), rows["accuracy"])
        np.testing.assert_allclose(decode(traces[name]["x"]), rows["layer"] / (rows["n_layers"] - 1))
        np.testing.assert_allclose(decode(traces[name]["error_y"]["array"]), rows["ci_high"] - rows["accuracy"])
        np.testing.assert_allclose(decode(traces[name]["error_y"]["arrayminus"]), rows["accuracy"] - rows["ci_low"])
    chance = traces["chance (majority label)"]
    assert chance["line"]["dash"] == "dash" and set(decode(chance["y"])) == {table["chance"].iloc[0]}
    summary = next(frame.value for frame in at.dataframe if "best layer" in frame.value.columns).set_index("model")
    for role in PROBE_LINES:
        rows = table[table["model"] == role]
        assert summary.loc[role, "best accuracy"] == pytest.approx(rows["accuracy"].max(), abs=5e-4)
        assert summary.loc[role, "best layer"] == rows.loc[rows["accuracy"].idxmax(), "layer"]
    assert "relative depth" in texts(at) and "Wilson" in texts(at)


def test_a_run_without_the_linear_probe_says_why_and_the_page_still_draws(app_test, app_run):
    from app_fixtures import edit_manifest, remove_artefacts

    remove_artefacts(app_run, "linear_probe.parquet")
    edit_manifest(app_run, lambda manifest: setattr(manifest, "linear_probe", None))  # as a run made before it
    at = app_test("views/alignment.py")
    assert not at.exception and not at.error
    assert "computed by runs made after this change" in texts(at) and "Recompute the run" in texts(at)
    assert chart(at, "alignment-heatmap")  # the rest of the page as before

    from pkt_core.runs.schema import LinearProbeRecord

    reason = "humaneval is a generation task: no label"
    edit_manifest(app_run, lambda manifest: setattr(manifest, "linear_probe",
                                                    LinearProbeRecord(status="skipped", reason=reason)))
    at = app_test("views/alignment.py")
    assert not at.exception and f"has no linear probe: {reason}." in texts(at)
