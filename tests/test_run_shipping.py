import json

from pkt_core.run_reader import RunReadError, open_run
from pkt_core.run_shipping import ship_run


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
