"""Layer mapping page: bipartite maps from mappings.json, attribution, fidelity (tied heads said so), losses."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("streamlit")

from app_fixtures import chart, decode


def _edges(figure, name):
    """(source layer, target layer) of every edge drawn for map ``name``, read back from y positions."""
    edges = []
    for trace in figure["data"]:
        if trace.get("name") == name and trace["mode"] == "lines":
            edges.append(tuple(decode(trace["y"]).tolist()))
    return edges


def test_bipartite_picture_draws_each_chosen_map_from_mappings_json(app_test, app_run):
    at = app_test("views/mapping.py")
    mappings = json.loads((app_run / "mappings.json").read_text())
    chosen = mappings["chosen"]
    assert set(at.multiselect(key="mapping_maps").value) == {"depth", chosen}
    figure = chart(at, "mapping-bipartite")
    n_source, n_target = 4, 3
    for name, label in (("depth", "depth"), (chosen, f"{chosen} (chosen)"), (chosen, "trained pairs")):
        expected = sorted((s / (n_source - 1), row["target_layer"] / (n_target - 1))
                          for row in mappings["mappings"][name]["table"] for s in row["source_layers"])
        drawn = sorted(_edges(figure, label))
        offsets = {round(a - s, 6) for (a, _), (s, _) in zip(drawn, expected)}
        assert len(offsets) == 1, (label, drawn, expected)  # one constant offset per map (kept apart visually)
        assert np.allclose([b - t for (_, b), (_, t) in zip(drawn, expected)], offsets.pop())
    at.multiselect(key="mapping_maps").set_value(["interpolated"]).run()
    labels = {trace.get("name") for trace in chart(at, "mapping-bipartite")["data"]}
    assert "interpolated" in labels and "depth" not in labels


def test_attribution_switches_between_abs_and_signed(app_test, app_run):
    at = app_test("views/mapping.py")
    table = pq.read_table(app_run / "attribution.parquet").to_pydict()
    bars = chart(at, "mapping-attribution")["data"][0]
    np.testing.assert_allclose(decode(bars["y"]), table["abs"])
    at.radio(key="mapping_aggregation").set_value("signed").run()
    bars = chart(at, "mapping-attribution")["data"][0]
    np.testing.assert_allclose(decode(bars["y"]), table["signed"])
    assert not np.allclose(table["abs"], table["signed"])


def test_fidelity_draws_output_and_input_bases_per_model(app_test, app_run):
    at = app_test("views/mapping.py")
    figure = chart(at, "mapping-fidelity")
    rows = pq.read_table(app_run / "fidelity.parquet").to_pylist()
    traces = {trace["name"]: decode(trace["y"]) for trace in figure["data"]}
    assert set(traces) == {f"{m}: {b} bases" for m in ("source", "target") for b in ("output", "input")}
    for model in ("source", "target"):
        for bases in ("output", "input"):
            expected = [r["mean_cosine"] for r in sorted(rows, key=lambda r: r["layer"])
                        if r["model"] == model and r["bases"] == bases]
            np.testing.assert_allclose(traces[f"{model}: {bases} bases"], expected)
    assert not any("tied" in w.value for w in at.warning)
    # The run's table is the default sample; the page says so, with what the sample kept.
    assert any("Computed on a sample" in c.value and "target:" in c.value for c in at.caption)


def test_tied_head_and_embeddings_are_said_not_drawn_as_two_equal_curves(app_test, app_run):
    # A model whose LM head is its input embedding: both bases are one matrix, so the run holds
    # equal output and input rows. Rewrite the target's rows that way, as such a run would hold them.
    rows = pq.read_table(app_run / "fidelity.parquet").to_pylist()
    output = {r["layer"]: r for r in rows if r["model"] == "target" and r["bases"] == "output"}
    for row in rows:
        if row["model"] == "target":
            row.update(head_and_embedding_tied=True, head_embedding_relative_difference=0.0,
                       mean_cosine=output[row["layer"]]["mean_cosine"], std_cosine=output[row["layer"]]["std_cosine"])
    pq.write_table(pa.Table.from_pylist(rows), app_run / "fidelity.parquet")
    at = app_test("views/mapping.py")
    warnings = [w.value for w in at.warning]
    assert any("target" in w and "tied" in w and "cannot appear" in w for w in warnings)
    names = [trace["name"] for trace in chart(at, "mapping-fidelity")["data"]]
    assert "target: output = input bases (tied)" in names
    assert "target: output bases" not in names and "target: input bases" not in names
    assert "source: output bases" in names and "source: input bases" in names


def test_stage_losses_are_drawn_per_stage_and_term(app_test, app_run):
    """x = the frontier stage; one line per loss term; with several steps per stage (two here) the
    first and the last step of each stage, read straight from stage_losses.parquet."""
    at = app_test("views/mapping.py")
    table = pq.read_table(app_run / "stage_losses.parquet").to_pandas().sort_values(["stage_layer", "step"])
    terms = [c for c in table.columns if c.startswith("loss_")]
    figure = chart(at, "mapping-losses")
    drawn = {trace["name"]: trace for trace in figure["data"]}
    expected_terms = (["loss"] if len(terms) > 1 else []) + terms
    for column in expected_terms:
        label = "total" if column == "loss" else column[len("loss_"):]
        for which, pick in (("first step", "first"), ("last step", "last")):
            trace = drawn[f"{label}, {which}"]
            per_stage = table.groupby("stage_layer")[column].agg(pick)
            np.testing.assert_array_equal(decode(trace["x"]), per_stage.index.to_numpy())
            np.testing.assert_allclose(decode(trace["y"]), per_stage.to_numpy())
    assert figure["layout"]["xaxis"]["title"]["text"] == "frontier stage (target layer)"
