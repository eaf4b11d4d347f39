import json

import pytest

from pkt_core.runs.reader import RunReadError, open_run
from pkt_core.runs.shipping import ShippingError, main, ship_run


def test_shipped_run_keeps_everything_but_the_delta(tmp_path):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"status": "complete", "weights_delta": {"file": "target_delta.safetensors"}}))
    (run / "target_delta.safetensors").write_bytes(b"x" * 100)
    (run / "attribution.parquet").write_bytes(b"table")
    (run / "evaluation" / "mmlu").mkdir(parents=True)
    (run / "evaluation" / "mmlu" / "summary.json").write_text("{}")
    shipped = ship_run(run, tmp_path / "cached_runs", "pkt transfer --pair p --task mmlu")
    assert sorted(p.name for p in shipped.iterdir()) == ["attribution.parquet", "evaluation", "manifest.json"]
    manifest = open_run(shipped).manifest
    assert manifest["shipped"] == {"left_out": ["target_delta.safetensors"], "stored_float16": [],
                                   "reproduce": "pkt transfer --pair p --task mmlu"}
    assert manifest["weights_delta"]["file"] is None
    try:
        open_run(shipped).weight_delta()
    except RunReadError as error:
        assert "without its weight delta" in str(error)
    else:
        raise AssertionError("a shipped run has no delta to give")


def test_a_run_can_be_shipped_without_what_only_the_projections_read(tmp_path):
    run = tmp_path / "runs" / "r3"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"status": "complete", "weights_delta": {"file": "target_delta.safetensors"}}))
    for name in ("target_delta.safetensors", "probe_activations.safetensors", "cross_map.safetensors",
                 "attribution.parquet", "mappings.json"):
        (run / name).write_bytes(b"x")
    main(["ship", str(run), "--to", str(tmp_path / "cached_runs"), "--reproduce", "cmd",
          "--leave-out", "probe_activations.safetensors", "--leave-out", "cross_map.safetensors"])
    shipped = tmp_path / "cached_runs" / "r3"
    assert sorted(p.name for p in shipped.iterdir()) == ["attribution.parquet", "manifest.json", "mappings.json"]
    manifest = open_run(shipped).manifest
    assert manifest["shipped"]["left_out"] == ["target_delta.safetensors", "probe_activations.safetensors",
                                               "cross_map.safetensors"]
    assert manifest["weights_delta"]["file"] is None
    assert (run / "probe_activations.safetensors").exists()  # the source run keeps everything
    with pytest.raises(ShippingError, match="the app needs it"):
        ship_run(run, tmp_path / "elsewhere", "cmd", leave_out=["mappings.json"])
    assert not (tmp_path / "elsewhere").exists()


def test_the_cross_map_is_shipped_in_float16_within_its_rounding(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    run = tmp_path / "runs" / "r2"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"status": "complete"}))
    generator = torch.Generator().manual_seed(0)
    original = torch.randn(48, 80, generator=generator, dtype=torch.float64)
    save_file({"cross_map": original.float()}, run / "cross_map.safetensors")
    shipped = ship_run(run, tmp_path / "cached_runs", "cmd")
    stored = load_file(shipped / "cross_map.safetensors")["cross_map"]
    assert stored.dtype == torch.float16
    # float16 keeps 11 significant bits: relative error at most 2^-11 per entry (normal range).
    relative = ((stored.double() - original).abs() / original.abs()).max()
    assert relative <= 2.0 ** -11 + 1e-7
    assert (shipped / "cross_map.safetensors").stat().st_size < (run / "cross_map.safetensors").stat().st_size * 0.6
    assert open_run(shipped).manifest["shipped"]["stored_float16"] == ["cross_map.safetensors"]


def test_the_shipped_runs_readme_is_what_the_manifests_say():
    from pathlib import Path

    from pkt_core.runs.shipping import BEGIN_MARK, END_MARK, readme_section

    root = Path(__file__).resolve().parents[2] / "cached_runs"
    text = (root / "README.md").read_text()
    generated = text[text.index(BEGIN_MARK): text.index(END_MARK) + len(END_MARK)]
    assert generated == readme_section(root), "run `python -m pkt_core.runs.shipping readme` after shipping a run"
    assert generated.count("| `") >= 1


def test_the_results_table_reads_each_task_of_each_complete_run(tmp_path):
    from pkt_core.runs.shipping import results_rows, results_table

    def metric(mean):
        return {"acc": {"mean": mean, "low": mean - 0.05, "high": mean + 0.05}}

    complete = tmp_path / "kd-run"
    complete.mkdir()
    (complete / "manifest.json").write_text(json.dumps({
        "status": "complete", "method": "kd", "variant": "control", "task": "mmlu",
        "data": {"alignment_ids": ["a", "b"]}, "environment": {"cpu_count": 2, "gpus": []},
        "cost": {"wall_seconds": 1234.4, "peak_rss_mib": 2048.0, "trainable_parameters": 2_500_000},
        "evaluation": {"mmlu": {"source": {"metrics": metric(0.5)}, "target_before": {"metrics": metric(0.25), "items": 4},
                                "target_after": {"metrics": metric(0.3)},
                                "comparison_target_before_after": {"right_to_wrong": 1, "wrong_to_right": 3,
                                                                   "mcnemar_p": 0.625}}}}))
    partial = tmp_path / "failed-run"
    partial.mkdir()
    (partial / "manifest.json").write_text(json.dumps({"status": "failed"}))
    [row] = results_rows(tmp_path)
    assert row["run"] == "kd-run" and row["before"]["mean"] == 0.25 and row["after"]["mean"] == 0.3
    table = results_table(tmp_path)
    assert ("| `kd-run` | logit distillation (control) | mmlu (4), acc | 0.250 (0.200-0.300) | 0.300 (0.250-0.350) "
            "| 1 / 3, p = 0.62 | 0.500 (0.450-0.550) | 2.5 M | 1,234 s, 2.0 GiB, 2-core CPU |") in table
    assert "failed-run" not in table


def test_the_results_table_one_is_what_the_shipped_manifests_say():
    from pathlib import Path

    from pkt_core.runs.shipping import TABLE_BEGIN, TABLE_END, paper_table

    repository = Path(__file__).resolve().parents[2]
    text = (repository / "benchmarks" / "RESULTS.md").read_text()
    generated = text[text.index(TABLE_BEGIN) + len(TABLE_BEGIN): text.index(TABLE_END)].strip()
    assert generated == paper_table(repository / "cached_runs"), "run `python -m pkt_core.runs.shipping readme`"
    assert "| target (untouched) |" in generated and "| source |" in generated
