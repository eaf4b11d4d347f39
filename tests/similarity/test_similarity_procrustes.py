"""Orthogonal Procrustes against SciPy's solver (a second method: fit the rotation, measure the residual)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import orthogonal_procrustes

from pkt_core.similarity import procrustes_distance, procrustes_similarity


def normalised_padded(x: np.ndarray, width: int) -> np.ndarray:
    xc = x - x.mean(0)
    xc = xc / np.linalg.norm(xc)
    return np.hstack([xc, np.zeros((x.shape[0], width - x.shape[1]))])


@pytest.mark.parametrize("n, d1, d2", [(50, 6, 9), (20, 30, 12)])
def test_matches_fitted_rotation_residual(n, d1, d2):
    rng = np.random.default_rng(n + d1)
    x = rng.standard_normal((n, d1))
    y = np.hstack([x[:, :3] @ rng.standard_normal((3, 3)), rng.standard_normal((n, d2 - 3))]) + 4.0
    width = max(d1, d2)
    a, b = normalised_padded(x, width), normalised_padded(y, width)
    rotation, _ = orthogonal_procrustes(a, b)
    residual = np.linalg.norm(a @ rotation - b)
    assert procrustes_distance(x, y) == pytest.approx(residual, abs=1e-10)
    assert procrustes_similarity(x, y) == pytest.approx(1 - residual**2 / 2, abs=1e-10)


def test_rotated_scaled_shifted_copy_is_identical():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 8))
    q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    y = 0.3 * x @ q + 7.0
    assert procrustes_similarity(x, y) == pytest.approx(1.0, abs=1e-12)
    assert procrustes_distance(x, y) == pytest.approx(0.0, abs=1e-6)  # sqrt of a ~1e-15 rounding residue


def test_distance_is_a_metric_on_random_triples():
    # Williams et al. 2021: the Procrustes distance satisfies the triangle inequality.
    rng = np.random.default_rng(2)
    for _ in range(20):
        x, y, z = (rng.standard_normal((30, d)) for d in (4, 6, 5))
        assert procrustes_distance(x, z) <= procrustes_distance(x, y) + procrustes_distance(y, z) + 1e-12
