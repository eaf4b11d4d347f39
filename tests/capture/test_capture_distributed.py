"""`pkt capture` under torchrun (gloo, 2 processes on the CPU) equals the single-process capture."""

import json
import os
import subprocess
import sys

import numpy as np
from tiny_models import SAMPLE_TEXTS

from pkt_core.capture.activation_store import open_activations


def _run(arguments, env):
    completed = subprocess.run(arguments, capture_output=True, text=True, env=env, timeout=600)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed


def test_two_rank_capture_equals_single_process(tiny_model_folder, tmp_path, isolated_pkt_home):
    data = tmp_path / "prompts.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": text}) for text in SAMPLE_TEXTS * 2))
    env = {**os.environ, "PKT_HOME": str(isolated_pkt_home), "OMP_NUM_THREADS": "1"}
    common = ["--model", str(tiny_model_folder), "--data", str(data), "--batch-size", "2",
              "--outlier-factor", "4", "--drop-first"]
    _run([sys.executable, "-m", "pkt_core.cli", "capture", *common, "--out", str(tmp_path / "single")], env)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
          "-m", "pkt_core.cli", "capture", *common, "--out", str(tmp_path / "ranks")], env)
    single = open_activations(tmp_path / "single")
    ranks = open_activations(tmp_path / "ranks")
    assert ranks.metadata["world_size"] == 2
    assert {shard["file"][:10] for shard in ranks.metadata["shards"]} == {"shard-r000", "shard-r001"}
    np.testing.assert_array_equal(ranks.row_keys(), single.row_keys())
    assert ranks.metadata["dropped_outliers"] == single.metadata["dropped_outliers"]
    for layer in single.layers:
        for site in single.sites:
            np.testing.assert_allclose(ranks.layer(layer, site), single.layer(layer, site), atol=1e-5, rtol=1e-5)
