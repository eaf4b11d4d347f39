import json

import pytest

from run_builders import write_full_run

from pkt_core.runs.catalogue import read_run
from pkt_core.runs.reader import RunReadError, open_run
from pkt_core.runs.shipping import ShippingError, main, ship_run


def _files(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


# The source and untouched-target evaluations move to the shared folder (test_runs_shared_folders.py).
SHARED_EVALUATIONS = {f"evaluation/mmlu/{role}/{file}" for role in ("source", "target_before")
                      for file in ("summary.json", "items.parquet")}


def test_shipped_run_keeps_everything_but_the_delta(tmp_path):
    run, _ = write_full_run(tmp_path / "runs" / "r1")
    shipped = ship_run(run, tmp_path / "cached_runs", "pkt transfer --pair p --task mmlu")
    # The map is wholly in the shared parts beside the run (test_runs_shared_tensors.py); it still reads.
    assert _files(shipped) == _files(run) - {"target_delta.safetensors", "cross_map.safetensors"} - SHARED_EVALUATIONS
    assert read_run(shipped).complete, read_run(shipped).problem
    manifest = open_run(shipped).manifest
    shared = manifest.shipped.shared_parts
    assert manifest.shipped.model_dump() == {"left_out": ["target_delta.safetensors"],
                                             "stored_float16": ["cross_map.safetensors"],
                                             "reproduce": "pkt transfer --pair p --task mmlu",
                                             "shared_parts": shared,
                                             "shared_folders": manifest.shipped.shared_folders}
    assert set(manifest.shipped.shared_folders) == {"evaluation/mmlu/source", "evaluation/mmlu/target_before"}
    assert set(shared) == {"probe_activations.safetensors", "cross_map.safetensors"}
    assert open_run(shipped).has("cross_map.safetensors")
    assert manifest.weights_delta.file is None
    with pytest.raises(RunReadError, match="without its weight delta"):
        open_run(shipped).weight_delta()


def test_a_run_can_be_shipped_without_what_only_the_projections_read(tmp_path):
    run, _ = write_full_run(tmp_path / "runs" / "r3")
    main(["ship", str(run), "--to", str(tmp_path / "cached_runs"), "--reproduce", "cmd",
          "--leave-out", "probe_activations.safetensors", "--leave-out", "cross_map.safetensors"])
    shipped = tmp_path / "cached_runs" / "r3"
    assert _files(shipped) == _files(run) - {"target_delta.safetensors", "probe_activations.safetensors",
                                             "cross_map.safetensors"} - SHARED_EVALUATIONS
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
    stored = open_run(shipped).tensors("cross_map.safetensors")["cross_map"]
    original = written["cross_map"].double()
    assert stored.dtype == torch.float16
    # float16 keeps 11 significant bits: relative error at most 2^-11 per entry (normal range).
    relative = ((stored.double() - original).abs() / original.abs()).max()
    assert relative <= 2.0 ** -11 + 1e-7
    [digest] = open_run(shipped).manifest.shipped.shared_parts["cross_map.safetensors"]
    part = shipped.parent / "_shared" / f"{digest}.safetensors"
    assert torch.equal(load_file(part)["cross_map"], stored)
    assert part.stat().st_size < (run / "cross_map.safetensors").stat().st_size * 0.6
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


def test_table_1_keeps_ablations_and_older_rates_apart_and_gives_the_spread_between_seeds(tmp_path):
    import numpy as np

    from pkt_core.runs.shipping import paper_table, results_rows

    kd = {"losses": {"output_kl": 1.0}, "learning_rate": 3e-5}
    for seed in (0, 1, 2):  # a seed study: one run per alignment-sample seed, the rest alike
        write_full_run(tmp_path / f"kd-seed{seed}", seed=seed, method="kd", config={**kd, "seed": seed})
    write_full_run(tmp_path / "kd-old-rate", method="kd", config={**kd, "learning_rate": 1e-4})
    write_full_run(tmp_path / "v1-layer-only", config={"losses": {"layer_cosine": 1.0}, "learning_rate": 3e-5})
    write_full_run(tmp_path / "v1-both", config={"losses": {"layer_cosine": 1.0, "output_cosine": 1.0},
                                                   "learning_rate": 3e-5})
    rows = {row["run"]: row for row in results_rows(tmp_path)}
    table = paper_table(tmp_path)
    titles = [line.split(" | ")[0].lstrip("| ") for line in table.splitlines()[4:]]
    budget = "2 samples x 2 steps, fp32"
    assert titles == [f"SemAlign v1 ({budget})", f"SemAlign v1 ({budget}, losses layer_cosine=1)"] + [
        f"logit distillation (control) ({budget}, seed {s})" for s in (0, 1, 2)] + [
        f"logit distillation (control) ({budget}, spread over seeds 0, 1, 2)",
        f"logit distillation (control) ({budget}, lr 1e-4)"]
    # The spread row, from the rows' own before / after means and item-paired gold mass (float64 here).
    changes = [rows[f"kd-seed{s}"]["after"]["mean"] - rows[f"kd-seed{s}"]["before"]["mean"] for s in (0, 1, 2)]
    spread = next(line for line in table.splitlines() if "spread over seeds" in line)
    assert (f"change {' / '.join(f'{c:+.3f}' for c in changes)}: mean {np.mean(changes):+.3f}, "
            f"range {max(changes) - min(changes):.3f}") in spread
    shifts = [rows[f"kd-seed{s}"]["continuous"]["after_minus_before"]["mean"] for s in (0, 1, 2)]
    assert f"gold-option mass {' / '.join(f'{x:+.3f}' for x in shifts)}: mean {np.mean(shifts):+.3f}" in spread


def test_a_run_evaluated_on_several_tasks_costs_once_in_table_1():
    from pkt_core.runs.shipping import _cost_cell

    row = {"run": "r", "alignment_task": "mmlu", "wall_seconds": 1476.0, "peak_rss_mib": 18574.7, "dtype": "bf16 autocast"}
    other = {**row, "run": "s", "alignment_task": "humaneval", "wall_seconds": 30.0, "peak_rss_mib": 1024.0, "dtype": "fp32"}
    assert _cost_cell([{**row, "task": "mmlu"}, {**row, "task": "mmlu-rc"}]) == "mmlu: 1,476 s, 18.1 GiB, bf16 autocast"
    assert _cost_cell([row, other]) == "mmlu: 1,476 s, 18.1 GiB, bf16 autocast; humaneval: 30 s, 1.0 GiB, fp32"
    assert _cost_cell([{**row, "peak_rss_mib": None}]) == "-"


def test_shipping_stores_an_alignment_pools_ids_as_their_digest_and_keeps_the_rest(tmp_path):
    from pkt_core.evaluation.splits import alignment_pool, ids_digest, split_record
    from pkt_core.evaluation.splits import evaluation_items as evaluated

    run, _ = write_full_run(tmp_path / "runs" / "r5")
    pool = alignment_pool("mmlu")
    now = split_record("mmlu", evaluated("mmlu"))
    summary = run / "evaluation" / "mmlu" / "source" / "summary.json"
    raw = json.loads(summary.read_text())
    # As the evaluator wrote summaries before: the pool's 1,816 ids listed.
    raw["splits"] = {**now, "alignment_pool": {"rule": pool.rule, "count": len(pool.ids), "ids": pool.ids}}
    summary.write_text(json.dumps(raw))
    shipped = ship_run(run, tmp_path / "cached_runs", "cmd")
    stored = json.loads((open_run(shipped).evaluation_folder("mmlu", "source") / "summary.json").read_text())
    assert stored["splits"]["alignment_pool"] == {"rule": pool.rule, "count": 1816, "ids_digest": ids_digest(pool.ids)}
    assert stored["splits"] == now
    assert {k: v for k, v in stored.items() if k != "splits"} == {k: v for k, v in raw.items() if k != "splits"}
    assert read_run(shipped).complete
