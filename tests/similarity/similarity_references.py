"""What several similarity tests share: the textbook HSIC estimators (float64, O(n^3), on uncentred
Gram matrices; the independent references) and a two-rank gloo run of the minibatch accumulator."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

WORKER = Path(__file__).with_name("similarity_gloo_worker.py")
REPO_ROOT = Path(__file__).resolve().parents[2]


def hsic_biased_reference(k: np.ndarray, l: np.ndarray) -> float:
    """Gretton et al. 2005: tr(K H L H) / (n-1)^2 with H the centring matrix."""
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ l @ h)) / (n - 1) ** 2


def hsic_unbiased_reference(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. 2012, eq. (5), written out term by term."""
    n = k.shape[0]
    kt, lt = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
    ones = np.ones(n)
    value = (
        np.trace(kt @ lt)
        + (ones @ kt @ ones) * (ones @ lt @ ones) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (ones @ kt @ lt @ ones)
    )
    return float(value) / (n * (n - 3))


def run_two_gloo_ranks(tmp_path: Path, data_file: Path, out_file: Path) -> None:
    """Run the accumulator in two processes (gloo all-reduce) on ``data_file``; results in ``out_file``."""
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    ranks = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(rank), "2", str(tmp_path / "store"), str(data_file), str(out_file)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank in range(2)
    ]
    # A deadlock guard, not a speed check: a broken rendezvous would otherwise hang the suite.
    outputs = [process.communicate(timeout=300)[0] for process in ranks]
    assert all(process.returncode == 0 for process in ranks), "\n".join(outputs)
