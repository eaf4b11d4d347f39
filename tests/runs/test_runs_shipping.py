import json

import pytest

from run_builders import write_full_run

from pkt_core.runs.catalogue import read_run
from pkt_core.runs.reader import RunReadError, open_run
from pkt_core.runs.shipping import ShippingError, main, ship_run


def _files(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_shipped_run_keeps_everything_but_the_delta(tmp_path):
    run, _ = write_full_run(tmp_path / "runs" / "r1")
    shipped = ship_run(run, tmp_path / "cached_runs", "pkt transfer --pair p --task mmlu")
    assert _files(shipped) == _files(run) - {"target_delta.safetensors"}
    assert read_run(shipped).complete, read_run(shipped).problem
    manifest = open_run(shipped).manifest
    assert manifest.shipped.model_dump() == {"left_out": ["target_delta.safetensors"],
                                             "stored_float16": ["cross_map.safetensors"],
                                             "reproduce": "pkt transfer --pair p --task mmlu"}
    assert manifest.weights_delta.file is None
    with pytest.raises(RunReadError, match="without its weight delta"):
        open_run(shipped).weight_delta()


def test_a_run_can_be_shipped_without_what_only_the_projections_read(tmp_path):
    run, _ = write_full_run(tmp_path / "runs" / "r3")
    main(["ship", str(run), "--to", str(tmp_path / "cached_runs"), "--reproduce", "cmd",
          "--leave-out", "probe_activations.safetensors", "--leave-out", "cross_map.safetensors"])
    shipped = tmp_path / "cached_runs" / "r3"
    assert _files(shipped) == _files(run) - {"target_delta.safetensors", "probe_activations.safetensors",
                                             "cross_map.safetensors"}
    manifest = open_run(shipped).manifest
    assert manifest.shipped.left_out == ["target_delta.safetensors", "probe_activations.safetensors",
                                         "cross_map.safetensors"]
    assert (run / "probe_activations.safetensors").exists()  # the source run keeps everything
    with pytest.raises(ShippingError, match="the app needs it"):
        ship_run(run, tmp_path / "elsewhere", "cmd", leave_out=["mappings.json"])
    assert not (tmp_path / "elsewhere").exists()


def test_the_cross_map_is_shipped_in_float16_within_its_rounding(tmp_path):
    import torch
    from safetensors.torch import load_file

    run, written = write_full_run(tmp_path / "runs" / "r2", cross_map_shape=(48, 80))
    shipped = ship_run(run, tmp_path / "cached_runs", "cmd")
    stored = load_file(shipped / "cross_map.safetensors")["cross_map"]
    original = written["cross_map"].double()
    assert stored.dtype == torch.float16
    # float16 keeps 11 significant bits: relative error at most 2^-11 per entry (normal range).
    relative = ((stored.double() - original).abs() / original.abs()).max()
    assert relative <= 2.0 ** -11 + 1e-7
    assert (shipped / "cross_map.safetensors").stat().st_size < (run / "cross_map.safetensors").stat().st_size * 0.6
    assert open_run(shipped).manifest.shipped.stored_float16 == ["cross_map.safetensors"]


def test_the_shipped_runs_readme_is_what_the_manifests_say():
    from pathlib import Path

    from pkt_core.runs.shipping import BEGIN_MARK, END_MARK, readme_section

    root = Path(__file__).resolve().parents[2] / "cached_runs"
    text = (root / "README.md").read_text()
    generated = text[text.index(BEGIN_MARK): text.index(END_MARK) + len(END_MARK)]
    assert generated == readme_section(root), "run `python -m pkt_core.runs.shipping readme` after shipping a run"
    assert generated.count("| `") >= 1


def test_the_results_table_reads_each_task_of_each_complete_run(tmp_path):
    import numpy as np

    from pkt_core.runs.shipping import results_rows, results_table

    run, written = write_full_run(tmp_path / "kd-run", method="kd")
    failed, _ = write_full_run(tmp_path / "failed-run")
    raw = json.loads((failed / "manifest.json").read_text())
    raw["status"] = "failed"
    (failed / "manifest.json").write_text(json.dumps(raw))
    [row] = results_rows(tmp_path)
    means = {role: float(np.mean(scores)) for role, scores in written["scores"].items()}
    assert row["run"] == "kd-run" and row["before"]["mean"] == means["target_before"]
    assert row["after"]["mean"] == means["target_after"] and row["source"]["mean"] == means["source"]
    comparison = open_run(run).comparison("mmlu")
    cell = lambda m: f"{m:.3f} ({m - 0.1:.3f}-{m + 0.1:.3f})"  # noqa: E731  (the builder's intervals: mean +- 0.1)
    table = results_table(tmp_path)
    assert (f"| `kd-run` | logit distillation (control) | mmlu (12), acc | {cell(means['target_before'])} "
            f"| {cell(means['target_after'])} | {comparison.right_to_wrong} / {comparison.wrong_to_right}, "
            f"p = {comparison.mcnemar_p:.2f} | {cell(means['source'])} | 0.0 M | 2 s") in table
    assert "failed-run" not in table


def test_table_1_cells_pair_the_gold_option_mass_item_by_item_and_give_the_gap_closed(tmp_path):
    import numpy as np

    from pkt_core.runs.shipping import paper_table, results_rows

    _, written = write_full_run(tmp_path / "kd-run", method="kd")
    gold = {role: np.asarray(values, dtype=np.float64) for role, values in written["gold_prob"].items()}
    [row] = results_rows(tmp_path)
    record = row["continuous"]
    assert record["measure"] == "gold_prob"
    # Independent of the code: the paired mean and the ratio of mean differences, in float64.
    assert np.isclose(record["after_minus_before"]["mean"], np.mean(gold["target_after"] - gold["target_before"]))
    assert np.isclose(record["source_minus_before"]["mean"], np.mean(gold["source"] - gold["target_before"]))
    closed = (gold["target_after"].mean() - gold["target_before"].mean()) / (
        gold["source"].mean() - gold["target_before"].mean())
    assert np.isclose(record["gap_closed"]["mean"], closed)
    low, high = record["after_minus_before"]["low"], record["after_minus_before"]["high"]
    assert low <= record["after_minus_before"]["mean"] <= high
    table = paper_table(tmp_path)
    shift = np.mean(gold["target_after"] - gold["target_before"])
    assert f"gold-option mass {shift:+.3f} ({low:+.3f} to {high:+.3f}); gap closed {closed:.2f}" in table
    assert f"source - target: gold-option mass {np.mean(gold['source'] - gold['target_before']):+.3f}" in table
