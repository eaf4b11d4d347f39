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
    assert manifest["shipped"] == {"left_out": ["target_delta.safetensors"], "reproduce": "pkt transfer --pair p --task mmlu"}
    assert manifest["weights_delta"]["file"] is None
    try:
        open_run(shipped).weight_delta()
    except RunReadError as error:
        assert "without its weight delta" in str(error)
    else:
        raise AssertionError("a shipped run has no delta to give")
