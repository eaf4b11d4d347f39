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


def _add_rbf_matrix(run):
    """A second measure, as a run would hold it: RBF CKA of the pooled probe states (library code)."""
    from safetensors.numpy import load_file

    from pkt_core.similarity import layer_similarity_matrix

    pooled = load_file(str(run / "probe_activations.safetensors"))
    target = [pooled[f"target_before.layer.{l}"].astype(np.float64) for l in range(3)]
    source = [pooled[f"source.layer.{l}"].astype(np.float64) for l in range(4)]
    matrix = layer_similarity_matrix(target, source, "rbf_cka")
    payload = {"metric": matrix.metric, "values": matrix.values.tolist(), "n_rows": int(matrix.n_rows),
               "notes": list(matrix.notes), "rows": "pooled probe prompts"}
    (run / "similarity_rbf_cka_target_source_before.json").write_text(json.dumps(payload))
    return matrix.values


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


def test_only_the_measures_the_run_holds_are_offered_and_the_rest_are_named(app_test, app_run):
    at = app_test("views/alignment.py")
    assert at.selectbox(key="alignment_measure").options == ["linear_cka"]
    shown = texts(at)
    for lacking in ("linear_cka_unbiased", "rbf_cka", "svcca", "pwcca", "mean_cca"):
        assert lacking in shown
    assert "position 0" in shown and "dropped" in shown  # the outlier handling note

    rbf = _add_rbf_matrix(app_run)
    at.run()
    assert at.selectbox(key="alignment_measure").options == ["linear_cka", "rbf_cka"]
    at.selectbox(key="alignment_measure").set_value("rbf_cka").run()
    assert not at.exception
    # This run holds rbf_cka for one view only: only that view is offered, and its data is drawn.
    assert at.radio(key="alignment_view").options == ["target x source, before transfer"]
    _, z = _heatmap(at)
    np.testing.assert_allclose(z, rbf)
    assert not np.allclose(z, _matrix(app_run, "similarity_linear_cka_target_source_before.json"))
