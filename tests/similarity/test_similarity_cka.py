"""CKA against direct float64 formulas written here, and its published properties."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform
from similarity_references import hsic_biased_reference, hsic_unbiased_reference

from pkt_core.errors import SimilarityInputError
from pkt_core.similarity import DegenerateRepresentationError, linear_cka, linear_cka_matrix, rbf_cka

# --- independent references: the textbook formulas, O(n^3), on uncentred data ---------------


def cka_reference(k: np.ndarray, l: np.ndarray, estimator: str) -> float:
    hsic = hsic_biased_reference if estimator == "biased" else hsic_unbiased_reference
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def rbf_gram_reference(x: np.ndarray, multiplier: float) -> np.ndarray:
    sq = pdist(x, "sqeuclidean")
    sigma2 = multiplier**2 * np.median(sq)
    return np.exp(-squareform(sq) / (2 * sigma2))


def related_pair(rng: np.random.Generator, n: int, d1: int, d2: int) -> tuple[np.ndarray, np.ndarray]:
    """Two representations sharing a 3-dimensional signal, with offsets far from zero."""
    z = rng.standard_normal((n, 3))
    x = z @ rng.standard_normal((3, d1)) + 0.7 * rng.standard_normal((n, d1)) + 5.0
    y = np.tanh(z) @ rng.standard_normal((3, d2)) + 0.7 * rng.standard_normal((n, d2)) - 3.0
    return x, y


# --- agreement with the formulas ------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("form", ["gram", "feature"])
@pytest.mark.parametrize("shape", [(50, 13, 80), (90, 7, 5)])
def test_linear_cka_matches_direct_formula(estimator, form, shape):
    rng = np.random.default_rng(sum(shape))
    x, y = related_pair(rng, *shape)
    expected = cka_reference(x @ x.T, y @ y.T, estimator)
    got = linear_cka_matrix([x], [y], estimator=estimator, form=form).values[0, 0]
    assert abs(got - expected) < 1e-10


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("multiplier", [1.0, 2.5])
def test_rbf_cka_matches_direct_formula(estimator, multiplier):
    x, y = related_pair(np.random.default_rng(3), 40, 6, 9)
    expected = cka_reference(rbf_gram_reference(x, multiplier), rbf_gram_reference(y, multiplier), estimator)
    assert abs(rbf_cka(x, y, estimator=estimator, bandwidth_multiplier=multiplier) - expected) < 1e-10


def test_float32_input_is_computed_in_float64():
    x, y = related_pair(np.random.default_rng(4), 60, 20, 30)
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    # The reference sees exactly the float32 values, promoted to float64.
    expected = cka_reference(x32.astype(np.float64) @ x32.T.astype(np.float64),
                             y32.astype(np.float64) @ y32.T.astype(np.float64), "biased")
    assert abs(linear_cka(x32, y32) - expected) < 1e-10


# --- published properties ---------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_self_similarity_is_one(estimator):
    x, _ = related_pair(np.random.default_rng(5), 30, 12, 4)
    assert linear_cka(x, x, estimator=estimator) == pytest.approx(1.0, abs=1e-12)
    assert rbf_cka(x, x, estimator=estimator) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_invariant_to_orthogonal_maps_isotropic_scaling_and_translation(estimator):
    rng = np.random.default_rng(6)
    x, y = related_pair(rng, 45, 10, 16)
    q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    moved = 4.2 * (y @ q) + rng.standard_normal(16) * 10
    for function in (linear_cka, rbf_cka):
        assert function(x, moved, estimator=estimator) == pytest.approx(function(x, y, estimator=estimator), abs=1e-10)


def test_not_invariant_to_general_invertible_maps():
    # Kornblith et al. 2019, sec. 3: CKA deliberately is not invariant to invertible linear maps.
    rng = np.random.default_rng(7)
    x, y = related_pair(rng, 45, 10, 16)
    stretch = np.diag(np.linspace(0.05, 20.0, 16)) @ rng.standard_normal((16, 16))
    assert abs(linear_cka(x, y @ stretch) - linear_cka(x, y)) > 1e-3


def test_independent_gaussians_unbiased_near_zero_biased_positive():
    # Unbiased HSIC has expectation 0 under independence (Song et al. 2012); the biased one is
    # inflated by O(1/n) terms, which at n = 24 << d dominate (Murphy et al. 2024).
    rng = np.random.default_rng(8)
    biased, unbiased = [], []
    for _ in range(40):
        x, y = rng.standard_normal((24, 64)), rng.standard_normal((24, 48))
        biased.append(linear_cka(x, y))
        unbiased.append(linear_cka(x, y, estimator="unbiased"))
    biased, unbiased = np.array(biased), np.array(unbiased)

    def standard_error(values):
        return values.std(ddof=1) / np.sqrt(len(values))

    assert abs(unbiased.mean()) < 4 * standard_error(unbiased)
    assert biased.mean() > 4 * standard_error(biased)
    assert biased.mean() > unbiased.mean() + 4 * np.hypot(standard_error(biased), standard_error(unbiased))


def test_negative_unbiased_value_is_returned_and_reported():
    rng = np.random.default_rng(9)
    for _ in range(50):  # independent data: about half the draws are negative
        x, y = rng.standard_normal((16, 5)), rng.standard_normal((16, 7))
        expected = cka_reference(x @ x.T, y @ y.T, "unbiased")
        if expected < 0:
            break
    result = linear_cka_matrix([x], [y], estimator="unbiased")
    assert result.values[0, 0] == pytest.approx(expected, abs=1e-10)
    assert result.negative_entries == 1
    assert any("negative" in note for note in result.notes)


# --- guards -----------------------------------------------------------------------------------


def test_unbiased_needs_four_rows():
    x = np.random.default_rng(0).standard_normal((3, 5))
    with pytest.raises(SimilarityInputError, match="at least 4"):
        linear_cka(x, x, estimator="unbiased")
    assert np.isfinite(linear_cka(x, x))  # the biased estimator is defined at n = 3


@pytest.mark.parametrize("bad, word", [(np.nan, "1 NaN"), (np.inf, "1 infinite")])
def test_non_finite_input_is_refused_with_its_location(bad, word):
    x = np.random.default_rng(0).standard_normal((10, 4))
    x[7, 2] = bad
    for function in (linear_cka, rbf_cka):
        with pytest.raises(SimilarityInputError, match=f"{word}.*row 7, column 2"):
            function(x, np.ones((10, 1)) * np.arange(10)[:, None])


def test_constant_representation_is_refused():
    x = np.random.default_rng(0).standard_normal((10, 4))
    constant = np.full((10, 3), 2.5)
    with pytest.raises(DegenerateRepresentationError, match="constant"):
        linear_cka(x, constant)


def test_constant_columns_are_ignored():
    rng = np.random.default_rng(1)
    x, y = related_pair(rng, 30, 6, 8)
    padded = np.hstack([y, np.full((30, 3), 1e6)])
    assert linear_cka(x, padded) == pytest.approx(linear_cka(x, y), abs=1e-12)


def test_rbf_with_mostly_duplicate_rows_is_refused():
    x = np.zeros((10, 3))
    x[0] = 1.0  # 36 of the 45 pairwise distances are 0, so the median is 0
    with pytest.raises(DegenerateRepresentationError, match="median distance"):
        rbf_cka(x, np.random.default_rng(0).standard_normal((10, 2)))


def test_shape_errors_are_clear():
    rng = np.random.default_rng(0)
    with pytest.raises(SimilarityInputError, match="same samples"):
        linear_cka(rng.standard_normal((10, 3)), rng.standard_normal((11, 3)))
    with pytest.raises(SimilarityInputError, match="2-D"):
        linear_cka(rng.standard_normal(10), rng.standard_normal((10, 3)))
    with pytest.raises(SimilarityInputError, match="estimator"):
        linear_cka(rng.standard_normal((10, 3)), rng.standard_normal((10, 3)), estimator="debiased")
