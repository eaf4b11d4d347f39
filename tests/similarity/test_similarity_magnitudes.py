"""Extreme but finite magnitudes: every measure against direct float64 formulas on rescaled data.

All measures are invariant to isotropic scaling, so ``measure(c * x, y)`` must equal the
textbook formula applied to ``x`` and ``y`` themselves, at any finite ``c``: 1e80 and 1e155
(fourth powers beyond float64 in HSIC), 1e-170 (squares below the smallest float64), and a
column whose mean overflows. The references below are written out here, independently of
the engine, and only ever see data of ordinary magnitude.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.spatial.distance import cdist, pdist, squareform
from similarity_references import hsic_biased_reference, hsic_unbiased_reference, run_two_gloo_ranks

from pkt_core.errors import SimilarityInputError
from pkt_core.similarity import MEASURES, MinibatchCKA, layer_similarity_matrix

SCALES = [1e80, 1e155, 1e-170, 1e300, 1e-300]

# --- independent references (textbook formulas, ordinary magnitudes only) ---------------------


def centred(x: np.ndarray) -> np.ndarray:
    return x - x.mean(axis=0)


def cka(k: np.ndarray, l: np.ndarray, hsic) -> float:
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def rbf_gram(x: np.ndarray) -> np.ndarray:
    sq = pdist(x, "sqeuclidean")
    return np.exp(-squareform(sq) / (2 * np.median(sq)))


def canonical_correlations(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cosines of the principal angles between the centred column spaces (Björck & Golub 1973)."""
    qx, _ = np.linalg.qr(centred(x))
    qy, _ = np.linalg.qr(centred(y))
    return np.linalg.svd(qx.T @ qy, compute_uv=False)[: min(x.shape[1], y.shape[1])]


def svd_reduced(x: np.ndarray, fraction: float = 0.99) -> np.ndarray:
    xc = centred(x)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    keep = int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), fraction)) + 1
    return xc @ vt[:keep].T


def pwcca_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Morcos et al. 2018: CCA by whitening, weights alpha_i = sum_j |<h_i, x_j>|."""
    xc, yc = centred(x), centred(y)

    def inverse_sqrt(m):
        values, vectors = np.linalg.eigh(m)
        return vectors @ np.diag(values**-0.5) @ vectors.T

    whiten_x = inverse_sqrt(xc.T @ xc)
    left, correlations, _ = np.linalg.svd(whiten_x @ (xc.T @ yc) @ inverse_sqrt(yc.T @ yc))
    k = min(x.shape[1], y.shape[1])
    orthonormal, _ = np.linalg.qr(xc @ whiten_x @ left[:, :k])
    weights = np.abs(orthonormal.T @ xc).sum(axis=1)
    return float(weights @ correlations[:k] / weights.sum())


def procrustes_reference(x: np.ndarray, y: np.ndarray) -> float:
    xc, yc = centred(x), centred(y)
    return float(np.linalg.svd(xc.T @ yc, compute_uv=False).sum() / (np.linalg.norm(xc) * np.linalg.norm(yc)))


def knn_reference(x: np.ndarray, y: np.ndarray, k: int = 10) -> float:
    def neighbours(points):
        distances = cdist(points, points)
        np.fill_diagonal(distances, np.inf)
        return [set(row) for row in np.argsort(distances, axis=1)[:, :k]]

    return float(np.mean([len(a & b) / k for a, b in zip(neighbours(x), neighbours(y))]))


REFERENCES = {
    "linear_cka": lambda x, y: cka(x @ x.T, y @ y.T, hsic_biased_reference),
    "linear_cka_unbiased": lambda x, y: cka(x @ x.T, y @ y.T, hsic_unbiased_reference),
    "rbf_cka": lambda x, y: cka(rbf_gram(x), rbf_gram(y), hsic_biased_reference),
    "rbf_cka_unbiased": lambda x, y: cka(rbf_gram(x), rbf_gram(y), hsic_unbiased_reference),
    "mean_cca": lambda x, y: float(canonical_correlations(x, y).mean()),
    "svcca": lambda x, y: float(canonical_correlations(svd_reduced(x), svd_reduced(y)).mean()),
    "pwcca": pwcca_reference,
    "procrustes": procrustes_reference,
    "procrustes_distance": lambda x, y: float(np.sqrt(2 - 2 * procrustes_reference(x, y))),
    "mutual_knn": knn_reference,
}


def related_pair(seed: int = 0, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Two representations sharing a 3-dimensional signal, with offsets far from zero."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 3))
    x = z @ rng.standard_normal((3, 8)) + 0.5 * rng.standard_normal((n, 8)) + 3.0
    y = np.tanh(z) @ rng.standard_normal((3, 5)) + 0.5 * rng.standard_normal((n, 5)) - 2.0
    return x, y


def test_every_measure_has_a_reference_here():
    assert set(REFERENCES) == set(MEASURES)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_extreme_magnitudes_give_the_value_of_the_rescaled_data(name, scale):
    x, y = related_pair()
    expected = REFERENCES[name](x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow/underflow RuntimeWarning on the way either
        for got in (MEASURES[name](scale * x, y), MEASURES[name](x, scale * y), MEASURES[name](scale * x, scale * y)):
            assert got == pytest.approx(expected, abs=1e-9), (name, scale)


@pytest.mark.parametrize("form", ["gram", "feature"])
def test_layer_matrix_with_layers_at_different_magnitudes(form):
    x, y = related_pair(1)
    layers_a, layers_b = [1e155 * x, 1e-170 * x, x], [1e80 * y, y]
    result = layer_similarity_matrix(layers_a, layers_b, "linear_cka", form=form)
    expected = cka(x @ x.T, y @ y.T, hsic_biased_reference)
    np.testing.assert_allclose(result.values, np.full((3, 2), expected), rtol=0, atol=1e-10)


def test_blocked_gram_form_at_extreme_magnitude():
    x, y = related_pair(2)
    # A budget below one stacked Gram matrix forces row blocks.
    result = layer_similarity_matrix([1e155 * x], [1e-170 * y], "linear_cka_unbiased", form="gram",
                                     memory_budget_bytes=16 * x.shape[0] * 8)
    assert result.form == "gram-blocked"
    assert result.values[0, 0] == pytest.approx(cka(x @ x.T, y @ y.T, hsic_unbiased_reference), abs=1e-10)


def test_rbf_bandwidths_are_reported_in_the_units_of_the_data():
    x, y = related_pair(3)
    result = layer_similarity_matrix([1e155 * x], [y], "rbf_cka")
    assert result.options["bandwidths_a"][0] == pytest.approx(1e155 * np.sqrt(np.median(pdist(x, "sqeuclidean"))),
                                                              rel=1e-12)
    assert result.options["bandwidths_b"][0] == pytest.approx(np.sqrt(np.median(pdist(y, "sqeuclidean"))), rel=1e-12)


def test_a_column_whose_mean_overflows_is_compared_not_refused():
    x, y = related_pair(4)
    n = x.shape[0]
    # 2**1023 (1 + r) with r in [0, 1/2) on a 2**-40 grid: every value is finite and exact, their sum
    # is not; distinct gaps, so the nearest neighbours have no ties.
    offsets = np.round(np.random.default_rng(40).uniform(0.0, 0.5, n) * 2.0**40) / 2.0**40
    huge = np.ldexp(1.0 + offsets, 1023)
    with np.errstate(over="ignore"):
        assert not np.isfinite(huge.sum())
    with_huge = np.column_stack([huge, x[:, 1:]])
    # The same data divided by 2**1023 (exact): the huge column becomes 1 + r, the rest ~1e-308.
    rescaled = np.column_stack([1.0 + offsets, np.ldexp(x[:, 1:], -1023)])
    for name in ("linear_cka", "procrustes", "mutual_knn"):
        assert MEASURES[name](with_huge, y) == pytest.approx(REFERENCES[name](rescaled, y), abs=1e-9), name


def test_non_finite_values_are_still_refused_with_their_location():
    x, y = related_pair(5)
    x = 1e300 * x
    x[3, 4] = np.inf
    for name in MEASURES:
        with pytest.raises(SimilarityInputError, match="row 3, column 4"):
            MEASURES[name](x, y)


# --- the minibatch accumulator keeps one scale per layer across batches ----------------------


def minibatch_reference(batches_a: list[np.ndarray], batches_b: list[np.ndarray]) -> float:
    """Nguyen et al. 2021, eq. (3) on the given (ordinary-magnitude) batches."""
    def total(xs, ys):
        return sum(hsic_unbiased_reference(x @ x.T, y @ y.T) for x, y in zip(xs, ys))

    return total(batches_a, batches_b) / np.sqrt(total(batches_a, batches_a) * total(batches_b, batches_b))


def split(x: np.ndarray, rows: int = 20) -> list[np.ndarray]:
    return [x[s:s + rows] for s in range(0, x.shape[0], rows)]


def test_minibatch_with_batches_at_very_different_magnitudes():
    x, y = related_pair(6)
    xs, ys = split(x), split(y)
    # Batch magnitudes 1e-150, 1e150 (larger than all before it), then 1 (smaller than the largest).
    factors_x, factors_y = [1e-150, 1e150, 1.0], [1.0, 1e-100, 1e100]
    accumulator = MinibatchCKA(1, 1)
    for bx, by, fx, fy in zip(xs, ys, factors_x, factors_y):
        accumulator.update([fx * bx], [fy * by])
    # The reference sees every batch divided by the largest factor of its side.
    expected = minibatch_reference([f / 1e150 * b for f, b in zip(factors_x, xs)],
                                   [f / 1e100 * b for f, b in zip(factors_y, ys)])
    assert accumulator.result().values[0, 0] == pytest.approx(expected, abs=1e-10)


def test_minibatch_at_one_extreme_scale_is_the_plain_minibatch_value():
    x, y = related_pair(7)
    xs, ys = split(x), split(y)
    accumulator = MinibatchCKA(2, 1)
    for bx, by in zip(xs, ys):
        accumulator.update([1e155 * bx, 1e-170 * bx], [by])
    np.testing.assert_allclose(accumulator.result().values, np.full((2, 1), minibatch_reference(xs, ys)),
                               rtol=0, atol=1e-10)


def test_merging_accumulators_kept_at_different_scales():
    x, y = related_pair(8)
    xs, ys = split(x), split(y)
    small, large = MinibatchCKA(1, 1), MinibatchCKA(1, 1)
    small.update([1e-120 * xs[0]], [ys[0]])
    large.update([1e120 * xs[1]], [ys[1]])
    large.update([xs[2]], [1e-200 * ys[2]])
    small.merge(large)
    expected = minibatch_reference([1e-240 * xs[0], xs[1], 1e-120 * xs[2]], [ys[0], ys[1], 1e-200 * ys[2]])
    assert small.result().values[0, 0] == pytest.approx(expected, abs=1e-10)
    assert (small.n_batches, small.n_rows) == (3, 60)


def test_gloo_all_reduce_aligns_the_scales_of_the_ranks(tmp_path):
    x, y = related_pair(9, n=64)
    xs, ys = split(x, 16), split(y, 16)
    # The worker gives batches 0 and 2 to rank 0, 1 and 3 to rank 1: the ranks see different scales.
    factors = [1e-150, 1e150, 1e-150, 1.0]
    scaled_x = np.concatenate([f * b for f, b in zip(factors, xs)])
    data_file = tmp_path / "data.npz"
    np.savez(data_file, layers_a=scaled_x[None], layers_b=y[None], batch_rows=16)
    out_file = tmp_path / "result.npz"
    run_two_gloo_ranks(tmp_path, data_file, out_file)
    expected = minibatch_reference([f / 1e150 * b for f, b in zip(factors, xs)], ys)
    assert float(np.load(out_file)["values"][0, 0]) == pytest.approx(expected, abs=1e-10)
