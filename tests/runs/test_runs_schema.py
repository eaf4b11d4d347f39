"""The run format: every file kind written through the writer reads back through the reader and
every page's data functions; shipped runs read with no error; bad files are named with their field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from run_builders import ITEM_IDS, N_SOURCE, N_TARGET, base_manifest, evaluation_folder, write_full_run

from pkt_core.runs.catalogue import list_runs, read_run
from pkt_core.runs.reader import RunReadError, open_run
from pkt_core.runs.schema import (
    FORMAT_VERSION,
    TABLES,
    RunFormatError,
    RunManifest,
    SimilarityMatrixFile,
    parse_record,
    parse_similarity_file_name,
    record_json,
)
from pkt_core.runs.writer import RunStoreError, RunWriter

SHIPPED = Path(__file__).resolve().parents[2] / "cached_runs"


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    return write_full_run(tmp_path_factory.mktemp("runs") / "full-run")


def test_every_file_kind_reads_back_through_the_reader(full_run):
    folder, written = full_run
    run = open_run(folder)
    manifest = run.manifest
    assert manifest.format_version == FORMAT_VERSION and manifest.status == "complete"
    assert manifest.source.num_layers == N_SOURCE and manifest.data.probe_ids == ITEM_IDS[:4]
    for (metric, view), values in written["similarity"].items():
        entry = run.similarity(metric, view)
        np.testing.assert_array_equal(entry.values, values)
        assert entry.file == f"similarity_{metric}_{view}.json" and entry.record.n_rows == 40
    assert not run.similarity_problems()
    assert run.layer_maps.chosen == "depth" and set(run.layer_maps.mappings) == {"depth", "interpolated"}
    assert run.evaluated_tasks() == {"mmlu": ["source", "target_before", "target_after"]}
    for role, scores in written["scores"].items():
        assert list(run.evaluation_items("mmlu", role)["score"]) == scores
        assert run.evaluation_summary("mmlu", role).metrics["acc"].mean == pytest.approx(np.mean(scores))
    assert run.comparison("mmlu").n == len(ITEM_IDS)
    losses = run.table_frame("stage_losses.parquet")
    np.testing.assert_allclose(losses["loss"], [row["loss"] for row in written["losses"]])
    assert set(run.tensors("probe_activations.safetensors")) >= {"source.layer.0", "target_after.layer.2"}
    assert run.weight_delta()["model.layers.0.mlp.weight"].sum() == 4
    # The manifest's own provenance: the code, the command (none from pytest) and the hardware.
    assert manifest.provenance.code.package_version and manifest.provenance.hardware.cpu_count


def test_every_page_data_function_reads_the_run(full_run):
    from pkt_core.figures import alignment_page, benchmarks_page, mapping_page, projections, runs_page

    folder, written = full_run
    run = open_run(folder)
    for metric in ("linear_cka", "svcca"):
        for view in ("target_source_before", "target_source_after", "target_before_after"):
            spec = alignment_page.alignment_heatmap(run, metric, view)
            np.testing.assert_allclose(spec.data["value"].to_numpy().reshape(written["similarity"][(metric, view)].shape),
                                       written["similarity"][(metric, view)])
        difference = alignment_page.alignment_heatmap(run, metric, alignment_page.DIFFERENCE_VIEW)
        expected = written["similarity"][(metric, "target_source_after")] - written["similarity"][(metric, "target_source_before")]
        np.testing.assert_allclose(difference.data["value"].to_numpy().reshape(expected.shape), expected)
    profiles = alignment_page.alignment_profiles(run, "linear_cka", "interpolated")
    after = written["similarity"][("linear_cka", "target_source_after")]
    mapped = profiles.data[profiles.data["series"] == "after: at mapped source layer"]["value"].to_numpy()
    np.testing.assert_allclose(mapped, [0.25 * after[t, t] + 0.75 * after[t, t + 1] for t in range(N_TARGET)])
    assert alignment_page.missing_measures(run) and "svcca" not in alignment_page.missing_measures(run)
    assert mapping_page.mapping_bipartite(run, ["depth", "interpolated"]).data["map"].nunique() == 3
    assert len(mapping_page.attribution_bars(run).data) == N_SOURCE
    assert len(mapping_page.fidelity_lines(run).data) == 2 * (N_SOURCE + N_TARGET)
    losses = mapping_page.stage_loss_lines(run).data
    # One loss term: its line alone (the total equals it); two steps per stage: first and last step.
    assert set(losses["series"]) == {"layer_cosine, first step", "layer_cosine, last step"}
    last = losses[losses["series"] == "layer_cosine, last step"]
    np.testing.assert_allclose(last["value"], [row["loss_layer_cosine"] for row in written["losses"] if row["step"] == 1])
    summary = benchmarks_page.benchmark_summary(run)
    assert set(summary["from"]) == {"summary.json"} and len(summary) == 3
    assert len(benchmarks_page.per_subject(run)) == 6
    comparison, items = benchmarks_page.paired_items(run, "mmlu")
    assert len(items) == len(ITEM_IDS) and set(items["flip"]) <= {"gained", "lost", "both right", "both wrong"}
    projection = projections.project(run, 1, 2, "pca", "joint", 15, 0.1, 0)
    assert len(projection.points) == 3 * 4
    table = runs_page.runs_table(list_runs([folder.parent]))
    scores = written["scores"]
    assert table.iloc[0]["gain"] == pytest.approx(np.mean(scores["target_after"]) - np.mean(scores["target_before"]))


def _shipped_runs() -> list[Path]:
    return sorted(p for p in SHIPPED.iterdir() if (p / "manifest.json").is_file()) if SHIPPED.is_dir() else []


@pytest.mark.parametrize("folder", _shipped_runs(), ids=lambda p: p.name)
def test_every_shipped_run_reads_through_the_schema(folder):
    listing = read_run(folder)
    assert listing.complete, listing.problem
    run = open_run(folder)
    assert run.manifest.format_version == FORMAT_VERSION
    for name in run.manifest.artefacts:
        if run.manifest.shipped and name in run.manifest.shipped.left_out:
            continue
        if parse_similarity_file_name(Path(name).name):
            assert run.similarity(*_metric_view(run, name)).values.ndim == 2
        elif name.endswith("summary.json"):
            task, role = Path(name).parts[1:3]
            run.evaluation_summary(task, role)
        elif name.endswith("items.parquet"):
            task, role = Path(name).parts[1:3]
            assert len(run.evaluation_items(task, role)) > 0
        elif name.endswith(".parquet"):
            run.table_frame(name)
        elif name.endswith(".safetensors"):
            assert run.tensors(name)
    assert not run.similarity_problems()


def _metric_view(run, name: str) -> tuple[str, str]:
    entry = next(e for e in run.similarity_entries() if e.file == Path(name).name)
    return entry.metric, entry.view


@pytest.mark.parametrize("folder", _shipped_runs(), ids=lambda p: p.name)
def test_the_runs_table_gain_of_every_shipped_run_equals_its_items(folder):
    """The gain shown is the mean item score after minus before, computed here from items.parquet."""
    from pkt_core.figures.runs_page import runs_table

    row = runs_table([read_run(folder)]).iloc[0]
    manifest = open_run(folder).manifest
    task = next(iter(manifest.evaluation))
    means = {role: float(np.mean(pq.read_table(evaluation_folder(folder, task, role) / "items.parquet")
                                 .column("score").to_pylist())) for role in ("target_before", "target_after")}
    assert row["gain"] == pytest.approx(means["target_after"] - means["target_before"], abs=1e-12)
    assert row["gains"] != "not evaluated"
    # The continuous shift: the paired mean of the gold-option mass over the same items, from the files.
    tables = {role: pq.read_table(evaluation_folder(folder, task, role) / "items.parquet").to_pandas().set_index("item_id")
              for role in ("target_before", "target_after")}
    if "gold_prob" in tables["target_before"] and tables["target_before"]["gold_prob"].notna().all():
        paired = tables["target_after"]["gold_prob"] - tables["target_before"]["gold_prob"].loc[tables["target_after"].index]
        assert row["shift"] == pytest.approx(float(paired.mean()), abs=1e-12)
        assert row["shift_of"].startswith(f"{task} gold-option mass, 95% interval")
    else:  # scored before the measure existed: nothing shown rather than a guess
        assert pd.isna(row["shift"]) and row["shift_of"].startswith("none in this run's items")


def test_a_manifest_of_the_wrong_shape_is_named_with_its_field(full_run, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(full_run[0], folder)
    raw = json.loads((folder / "manifest.json").read_text())
    raw["evaluation"]["mmlu"] = 0.5
    (folder / "manifest.json").write_text(json.dumps(raw))
    listing = read_run(folder)
    assert not listing.complete and listing.problem.startswith("manifest.json: field evaluation.mmlu: ")
    with pytest.raises(RunReadError, match="field evaluation.mmlu"):
        open_run(folder)
    raw["evaluation"] = {}
    raw["stages"]["bases"] = {"wall_seconds": "fast"}
    (folder / "manifest.json").write_text(json.dumps(raw))
    assert "field stages.bases.wall_seconds" in read_run(folder).problem


def test_old_and_future_formats_are_refused_with_what_to_do(full_run, tmp_path):
    folder = tmp_path / "old"
    shutil.copytree(full_run[0], folder)
    raw = json.loads((folder / "manifest.json").read_text())
    for version, expected in ((1, "pkt_core.runs.migration"), (FORMAT_VERSION + 1, "newer than this library reads")):
        raw["format_version"] = version
        (folder / "manifest.json").write_text(json.dumps(raw))
        assert expected in read_run(folder).problem


def test_a_truncated_similarity_file_makes_a_complete_run_unreadable(full_run, tmp_path):
    folder = tmp_path / "truncated"
    shutil.copytree(full_run[0], folder)
    (folder / "similarity_linear_cka_target_source_before.json").write_text('{"values": [[0.1,')
    listing = read_run(folder)
    assert not listing.complete
    assert listing.problem.startswith("similarity_linear_cka_target_source_before.json: not readable JSON")


def test_a_non_rectangular_or_nan_matrix_is_refused():
    with pytest.raises(RunFormatError, match="row 1 has 1 values"):
        parse_record(SimilarityMatrixFile, {"metric": "linear_cka", "values": [[0.1, 0.2], [0.3]]}, "x.json")
    with pytest.raises(RunFormatError, match="NaN or inf"):
        parse_record(SimilarityMatrixFile, {"metric": "linear_cka", "values": [[0.1, float("nan")]]}, "x.json")


def test_the_writer_refuses_files_its_readers_would_reject(tmp_path):
    writer = RunWriter(tmp_path / "run", base_manifest("run"))
    with pytest.raises(RunFormatError, match="column 'loss' is missing"):
        writer.save_table("stage_losses.parquet", [{"stage_layer": 0, "step": 0}])
    with pytest.raises(RunFormatError, match="no table kind"):
        writer.save_table("my_table.parquet", [{"a": 1}])
    with pytest.raises(RunFormatError, match="do not match"):
        import torch

        writer.save_tensors("probe_activations.safetensors", {"student.layer.0": torch.zeros(1)})
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="trainable_parameters"):  # checked on assignment, before any write
        writer.manifest.trainable_parameters = "many"
    # A resumed run must carry the same configuration.
    changed = base_manifest("run")
    changed["config"] = {**changed["config"], "steps_per_stage": 9}
    with pytest.raises(RunStoreError, match="steps_per_stage"):
        RunWriter(tmp_path / "run", changed, resume=True)


def test_every_table_kind_names_its_required_columns():
    for name, spec in TABLES.items():
        assert spec.required and spec.description, name


def test_record_json_round_trips_the_manifest(full_run):
    manifest = open_run(full_run[0]).manifest
    again = parse_record(RunManifest, json.loads(json.dumps(record_json(manifest))), "manifest.json")
    assert again == manifest


def test_the_answer_format_panel_counts_the_stored_predictions(full_run):
    from collections import Counter

    from pkt_core.figures.benchmarks_page import letter_distribution_bars

    folder, _ = full_run
    run = open_run(folder)
    spec = letter_distribution_bars(run, "mmlu")
    for role in ("source", "target_before", "target_after"):
        items = pq.read_table(evaluation_folder(folder, "mmlu", role) / "items.parquet").to_pandas()
        expected = Counter(items["prediction"])
        drawn = spec.data[spec.data["model"] == role].set_index("option")["count"]
        assert {k: v for k, v in drawn.items() if v} == dict(expected)
    gold = spec.data[spec.data["model"] == "gold answers"].set_index("option")["count"].to_dict()
    assert gold == {"A": 3, "B": 3, "C": 3, "D": 3}
    before_note = next(n for n in spec.notes if n.startswith("target before"))
    assert "dominated by one option: B for 12 of 12 items" in before_note


@pytest.mark.parametrize("folder", _shipped_runs(), ids=lambda p: p.name)
def test_the_calibrated_accuracy_of_every_shipped_letter_evaluation_matches_a_float64_reference(folder):
    """Batch Calibration recomputed here from items.parquet: log-softmax over the options, the
    mean option probability over the items as the prior, argmax of log p - log prior."""
    from pkt_core.figures.benchmarks_page import calibrated_accuracy

    run = open_run(folder)
    if "mmlu" not in run.evaluated_tasks():
        pytest.skip("no MMLU letter evaluation")
    table = calibrated_accuracy(run, "mmlu").set_index("model")
    reference = {}
    for role in ("source", "target_before", "target_after"):
        items = pq.read_table(evaluation_folder(folder, "mmlu", role) / "items.parquet").to_pandas().set_index("item_id")
        ll = np.array([json.loads(d)["loglikelihoods"] if isinstance(d, str) else d["loglikelihoods"]
                       for d in items["details"]], dtype=np.float64)
        logp = ll - np.log(np.exp(ll - ll.max(1, keepdims=True)).sum(1, keepdims=True)) - ll.max(1, keepdims=True)
        prior = np.exp(logp).mean(0)
        right = pd.Series((logp - np.log(prior)).argmax(1) == np.array(["ABCD".index(t) for t in items["target"]]),
                          index=items.index, dtype=float)
        reference[role] = right
        assert table.loc[role, "calibrated accuracy"] == pytest.approx(right.mean(), abs=1e-12)
    paired = reference["target_after"] - reference["target_before"].loc[reference["target_after"].index]
    assert table.loc["after - before (paired)", "calibrated accuracy"] == pytest.approx(paired.mean(), abs=1e-12)
