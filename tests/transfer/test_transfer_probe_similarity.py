"""The CKA / CCA family on probe rows: every measure recorded, and CCA on a principal subspace so
that no canonical correlation is 1 by construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pkt_core.transfer.probe_similarity import (
    PROBE_MEASURES,
    principal_subspace,
    probe_similarity_records,
    subspace_size,
)


def _mean_cca_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Mean canonical correlation in float64: singular values of Q_x^T Q_y for orthonormal bases
    of the centred columns (Golub & Van Loan)."""
    qx, _ = np.linalg.qr(x - x.mean(0))
    qy, _ = np.linalg.qr(y - y.mean(0))
    return float(np.linalg.svd(qx.T @ qy, compute_uv=False).mean())


def _top_k(x: np.ndarray, k: int) -> np.ndarray:
    centred = x - x.mean(0)
    values, vectors = np.linalg.eigh(centred.T @ centred)
    return centred @ vectors[:, ::-1][:, :k]


def test_the_subspace_rule_keeps_ten_rows_per_dimension():
    assert subspace_size(1024, [896, 1536]) == 64
    assert subspace_size(200, [30, 50]) == 20
    assert subspace_size(100, [4, 50]) == 4
    assert subspace_size(5, [8]) == 1


def test_principal_subspace_keeps_the_variance_of_the_top_directions():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 12)) * np.linspace(3, 0.1, 12)
    projected, kept = principal_subspace(x, 4)
    centred = x - x.mean(0)
    eigenvalues = np.sort(np.linalg.eigvalsh(centred.T @ centred))[::-1]
    assert kept == pytest.approx(eigenvalues[:4].sum() / eigenvalues.sum(), rel=1e-12)
    # Same span as the top-4 eigenvectors: identical canonical correlations with any other data.
    y = rng.standard_normal((300, 6))
    assert _mean_cca_reference(projected, y) == pytest.approx(_mean_cca_reference(_top_k(x, 4), y), rel=1e-10)


def test_every_measure_is_recorded_and_cca_is_not_one_by_construction():
    rng = np.random.default_rng(1)
    n, width_a, width_b = 120, 40, 60
    shared = rng.standard_normal((n, 3))
    rows_a = {l: torch.from_numpy(shared @ rng.standard_normal((3, width_a)) + rng.standard_normal((n, width_a)))
              for l in range(2)}
    rows_b = {l: torch.from_numpy(shared @ rng.standard_normal((3, width_b)) + rng.standard_normal((n, width_b)))
              for l in range(3)}
    made, skipped = probe_similarity_records(rows_a, rows_b, "target_source_before", "test rows")
    records = {r.metric: r for r in made}
    assert not skipped
    assert set(records) == set(PROBE_MEASURES)
    k = subspace_size(n, [width_a, width_b])
    assert k == 12
    for metric in ("svcca", "pwcca", "mean_cca"):
        record = records[metric]
        assert record.subspace["k"] == k and len(record.subspace["variance_kept_rows"]) == 2
        assert record.shape == (2, 3) and f"top {k} principal directions" in record.notes[0]
    # The reference: mean CCA of the top-k principal directions, from QR; far from 1, whereas the
    # full widths (40 and 60 dims for 120 rows) push every correlation towards 1.
    for a in range(2):
        for b in range(3):
            x, y = rows_a[a].numpy(), rows_b[b].numpy()
            expected = _mean_cca_reference(_top_k(x, k), _top_k(y, k))
            assert records["mean_cca"].values[a][b] == pytest.approx(expected, abs=1e-8)
            assert expected < 0.6 < _mean_cca_reference(x, y)
    assert records["linear_cka"].dims_rows == [width_a] * 2 and records["linear_cka"].dims_columns == [width_b] * 3
    assert records["linear_cka"].subspace is None and records["procrustes"].kind == "score"


def test_a_measure_the_rows_cannot_support_is_left_out_with_the_reason():
    rows = {0: torch.randn(3, 5, dtype=torch.float64)}
    made, skipped = probe_similarity_records(rows, rows, "target_before_after", "three rows")
    assert "linear_cka" in {r.metric for r in made}
    assert skipped and all("rows" in why for why in skipped.values())
