"""Projections page: PCA of the pooled probe states matches an independent computation; the layer
slider, colouring and UMAP parameters change what is drawn; correctness comes from the evaluation."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("streamlit")

from app_fixtures import chart, decode  # noqa: E402
from run_builders import evaluation_folder


def _points(at):
    figure = chart(at, "projection")
    return {trace["name"]: np.column_stack([decode(trace["x"]), decode(trace["y"])]) for trace in figure["data"]}


def _reference_pca(run, target_layer, source_layer):
    """PCA by hand: unit rows, source carried by M, centred SVD (signs are free, so compare |scores|)."""
    from safetensors.numpy import load_file

    pooled = load_file(str(run / "probe_activations.safetensors"))
    cross = load_file(str(run / "cross_map.safetensors"))["cross_map"].astype(np.float64)

    def unit(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    source = unit(unit(pooled[f"source.layer.{source_layer}"].astype(np.float64)) @ cross.T)
    before = unit(pooled[f"target_before.layer.{target_layer}"].astype(np.float64))
    after = unit(pooled[f"target_after.layer.{target_layer}"].astype(np.float64))
    stacked = np.vstack([source, before, after])
    centred = stacked - stacked.mean(0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    scores = u[:, :2] * s[:2]
    n = len(source)
    return {"source": scores[:n], "target before": scores[n:2 * n], "target after": scores[2 * n:]}


def test_pca_points_match_an_independent_pca_and_the_layer_slider_changes_them(app_test, app_run):
    at = app_test("views/projections.py")
    mappings = json.loads((app_run / "mappings.json").read_text())
    table = mappings["mappings"][mappings["chosen"]]["table"]
    layer = at.slider(key="projection_target_layer").value
    mapped = table[layer]["source_layers"][int(np.argmax(table[layer]["weights"]))]
    drawn = _points(at)
    expected = _reference_pca(app_run, layer, mapped)
    assert set(drawn) == set(expected)
    for name in expected:
        np.testing.assert_allclose(np.abs(drawn[name]), np.abs(expected[name]), atol=1e-6)
    at.slider(key="projection_target_layer").set_value(0).run()
    moved = _points(at)
    mapped0 = table[0]["source_layers"][int(np.argmax(table[0]["weights"]))]
    for name, points in _reference_pca(app_run, 0, mapped0).items():
        np.testing.assert_allclose(np.abs(moved[name]), np.abs(points), atol=1e-6)
    assert not np.allclose(np.abs(moved["target after"]), np.abs(drawn["target after"]))
    # Back to the first layer: the cached result, the same picture.
    at.slider(key="projection_target_layer").set_value(layer).run()
    again = _points(at)
    for name in drawn:
        np.testing.assert_array_equal(again[name], drawn[name])


def test_target_space_and_free_source_layer(app_test, app_run):
    at = app_test("views/projections.py")
    at.radio(key="projection_space").set_value("target").run()
    assert set(_points(at)) == {"target before", "target after"}
    at.radio(key="projection_space").set_value("joint").run()
    at.toggle(key="projection_follow_map").set_value(False).run()
    at.slider(key="projection_source_layer").set_value(3).run()
    layer = at.slider(key="projection_target_layer").value
    for name, points in _reference_pca(app_run, layer, 3).items():
        np.testing.assert_allclose(np.abs(_points(at)[name]), np.abs(points), atol=1e-6)


def test_colour_by_correctness_uses_the_evaluated_outcomes_of_the_probe_items(app_test, app_run):
    at = app_test("views/projections.py")
    at.radio(key="projection_colour").set_value("correctness").run()
    assert not at.exception
    figure = chart(at, "projection")
    manifest = json.loads((app_run / "manifest.json").read_text())
    probes = manifest["data"]["probe_ids"]
    items = pq.read_table(evaluation_folder(app_run, "mmlu", "target_after") / "items.parquet").to_pydict()
    score = dict(zip(items["item_id"], items["score"]))
    assert all(p in score for p in probes)  # MMLU probes are evaluation items of the run
    expected_correct = sum(score[p] == 1.0 for p in probes)
    # hover data: model, probe id, label, correct
    after_outcomes = []
    for trace in figure["data"]:
        for row in trace["customdata"]:
            if row[0] == "target_after":
                after_outcomes.append((row[1], row[3]))
    assert len(after_outcomes) == len(probes)
    assert sum(outcome == "correct" for _, outcome in after_outcomes) == expected_correct
    assert all((outcome == "correct") == (score[probe] == 1.0) for probe, outcome in after_outcomes)
    at.radio(key="projection_colour").set_value("label").run()
    names = {trace["name"] for trace in chart(at, "projection")["data"]}
    assert names == set(manifest["data"]["probe_labels"])


def test_umap_parameters_change_the_embedding(app_test):
    pytest.importorskip("umap")
    at = app_test("views/projections.py")
    at.radio(key="projection_method").set_value("umap").run()
    assert not at.exception
    at.number_input(key="projection_neighbours").set_value(5).run()
    first = _points(at)
    at.number_input(key="projection_seed").set_value(7).run()
    second = _points(at)
    assert not np.allclose(first["target after"], second["target after"])
    at.number_input(key="projection_seed").set_value(0).run()  # back: the cached embedding
    for name in first:
        np.testing.assert_array_equal(_points(at)[name], first[name])


def test_a_run_shipped_without_probe_activations_says_how_to_recreate_them(app_test, app_run):
    (app_run / "probe_activations.safetensors").unlink()
    manifest = json.loads((app_run / "manifest.json").read_text())
    manifest["shipped"] = {"left_out": ["target_delta.safetensors", "probe_activations.safetensors"],
                           "stored_float16": [], "reproduce": "pkt transfer --out runs/again"}
    (app_run / "manifest.json").write_text(json.dumps(manifest))
    at = app_test("views/projections.py")
    assert not at.exception
    assert not at.error
    assert any("shipped without its probe activations" in info.value and "pkt transfer --out runs/again" in info.value
               for info in at.info)


def test_selected_points_list_their_probe_items_with_gold_and_each_models_outcome(app_run):
    """The selection table: for chosen points, each probe's gold answer and every model's answer and
    outcome, read here straight from the run's items.parquet files."""
    import pyarrow.parquet as pq

    from pkt_core.figures.projections import project, selected_items, selected_points
    from pkt_core.runs.reader import open_run

    run = open_run(app_run)
    projection = project(run, 1, 2, "pca", "target", 15, 0.1, 0)
    chosen = projection.points.iloc[:3]
    rows = selected_points(projection, list(zip(chosen["x"], chosen["y"])))
    assert list(rows["probe_id"]) == list(chosen["probe_id"])
    table = selected_items(run, list(rows["probe_id"])).set_index("probe_id")
    for role in ("source", "target_before", "target_after"):
        items = pq.read_table(evaluation_folder(app_run, "mmlu", role) / "items.parquet").to_pandas().set_index("item_id")
        for probe in table.index:
            if probe in items.index:
                assert table.at[probe, f"{role} answer"] == items.at[probe, "prediction"]
                assert table.at[probe, f"{role} outcome"] == items.at[probe, "outcome"]
                assert table.at[probe, "gold"] == items.at[probe, "target"]
    assert table["gold"].notna().any()  # the tiny run's probes are MMLU evaluation items


def test_selected_items_keep_the_first_evaluations_answers_when_a_task_was_scored_twice(formulations_run):
    """A run holding MMLU in letters and cloze: a selected item shows the letters evaluation's answers
    (evaluation/mmlu/), never the cloze one's written over them."""
    from pkt_core.figures.projections import selected_items
    from pkt_core.runs.reader import open_run

    letters = {role: pq.read_table(evaluation_folder(formulations_run, "mmlu", role) / "items.parquet").to_pandas()
               .set_index("item_id") for role in ("source", "target_before", "target_after")}
    wanted = list(letters["target_before"].index[:5])
    table = selected_items(open_run(formulations_run), wanted + ["not-an-item"]).set_index("probe_id")
    for role, items in letters.items():
        assert list(table.loc[wanted, f"{role} answer"]) == list(items.loc[wanted, "prediction"])
        assert list(table.loc[wanted, f"{role} outcome"]) == list(items.loc[wanted, "outcome"])
    assert list(table.loc[wanted, "gold"]) == list(letters["source"].loc[wanted, "target"])
    assert table.loc[["not-an-item"], ["gold", "target_after answer"]].isna().all(axis=None)
