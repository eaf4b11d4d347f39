"""CCA, SVCCA and PWCCA against the classic covariance-matrix formulation written here."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from pkt_core.similarity import SimilarityWarning, layer_similarity_matrix, mean_cca, pwcca, svcca

# --- independent reference: CCA from inverse square roots of covariance matrices ---------------


def inverse_sqrt(matrix: np.ndarray) -> np.ndarray:
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return eigenvectors @ np.diag(eigenvalues**-0.5) @ eigenvectors.T


def cca_reference(x: np.ndarray, y: np.ndarray, ridge_x: float = 0.0, ridge_y: float = 0.0):
    """Canonical correlations and X's canonical variates (Hotelling 1936), ridge optional."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    whiten_x = inverse_sqrt(xc.T @ xc + ridge_x * np.eye(x.shape[1]))
    whiten_y = inverse_sqrt(yc.T @ yc + ridge_y * np.eye(y.shape[1]))
    left, correlations, _ = np.linalg.svd(whiten_x @ (xc.T @ yc) @ whiten_y)
    k = min(x.shape[1], y.shape[1])
    return correlations[:k], xc @ whiten_x @ left[:, :k]


def svd_reduce_reference(x: np.ndarray, fraction: float = 0.99, dims: int | None = None) -> np.ndarray:
    """Raghu et al. 2017 step 1: project onto the top singular directions."""
    xc = x - x.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    if dims is None:
        explained = np.cumsum(s**2) / np.sum(s**2)
        dims = next(i + 1 for i, share in enumerate(explained) if share >= fraction)
    return xc @ vt[:dims].T


def pwcca_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Morcos et al. 2018 (their compute_pwcca): alpha_i = sum_j |<h_i, x_j>| over X's neurons."""
    correlations, variates = cca_reference(x, y)
    orthonormal, _ = np.linalg.qr(variates)
    weights = np.abs(orthonormal.T @ x).sum(axis=1)
    return float(weights @ correlations / weights.sum())


def planted_pair(rng: np.random.Generator, n: int = 500, shared: int = 4, noise: float = 0.4):
    """X and Y share a planted `shared`-dimensional subspace; each adds its own decaying noise."""
    z = rng.standard_normal((n, shared))
    x = z @ rng.standard_normal((shared, 30)) + noise * rng.standard_normal((n, 30)) * np.linspace(1.0, 0.05, 30)
    y = np.sin(z) @ rng.standard_normal((shared, 40)) + noise * rng.standard_normal((n, 40)) * np.linspace(1, 0.1, 40)
    return x + 3.0, y - 1.0


# --- agreement ----------------------------------------------------------------------------------


def test_mean_cca_matches_reference():
    rng = np.random.default_rng(20)
    x, y = rng.standard_normal((300, 8)), rng.standard_normal((300, 11))
    y[:, :3] += x[:, :3] @ rng.standard_normal((3, 3))
    correlations, _ = cca_reference(x, y)
    assert mean_cca(x, y) == pytest.approx(correlations.mean(), abs=1e-10)


def test_regularised_cca_matches_ridge_reference_and_is_stable_when_d_exceeds_n():
    rng = np.random.default_rng(21)
    x, y = rng.standard_normal((40, 60)), rng.standard_normal((40, 90))
    y[:, :5] += x[:, :5]
    reg = 0.1
    ridge_x = reg * np.sum((x - x.mean(0)) ** 2) / x.shape[1]
    ridge_y = reg * np.sum((y - y.mean(0)) ** 2) / y.shape[1]
    correlations, _ = cca_reference(x, y, ridge_x, ridge_y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "too few rows" warning once regularised
        value = mean_cca(x, y, regularization=reg)
    # The reference has min(60, 90) = 60 correlations, of which only rank <= n-1 = 39 are non-zero.
    assert value == pytest.approx(correlations[:39].mean(), abs=1e-10)
    assert 0.0 < value < 1.0


def test_unregularised_cca_with_too_few_rows_warns_with_the_bound():
    rng = np.random.default_rng(22)
    x, y = rng.standard_normal((20, 15)), rng.standard_normal((20, 15))
    with pytest.warns(SimilarityWarning, match=r"rank 15 \+ rank 15 exceeds n-1 = 19.*at least 11"):
        value = mean_cca(x, y)
    # Principal angles: two 15-dim subspaces of a 19-dim space share at least 11 dimensions.
    assert value >= 11 / 15 - 1e-12
    matrix = layer_similarity_matrix([x], [y], "mean_cca")
    assert any("too few rows" in note for note in matrix.notes)


def test_mean_cca_is_invariant_to_invertible_linear_maps():
    rng = np.random.default_rng(23)
    x, y = planted_pair(rng, n=200)
    mixing = rng.standard_normal((40, 40)) + 3 * np.eye(40)
    assert mean_cca(x, y @ mixing) == pytest.approx(mean_cca(x, y), abs=1e-9)


def test_identical_subspaces_give_one():
    rng = np.random.default_rng(24)
    z = rng.standard_normal((100, 4))
    x, y = z @ rng.standard_normal((4, 12)), z @ rng.standard_normal((4, 20))
    assert mean_cca(x, y) == pytest.approx(1.0, abs=1e-10)
    assert svcca(x, y) == pytest.approx(1.0, abs=1e-10)
    assert pwcca(x, y) == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("options", [{}, {"variance_fraction": 0.9}, {"dims": 6}])
def test_svcca_matches_reference_on_planted_subspace(options):
    x, y = planted_pair(np.random.default_rng(25))
    reduce = {"fraction": options.get("variance_fraction", 0.99), "dims": options.get("dims")}
    correlations, _ = cca_reference(svd_reduce_reference(x, **reduce), svd_reduce_reference(y, **reduce))
    assert svcca(x, y, **options) == pytest.approx(correlations.mean(), abs=1e-8)


def test_pwcca_matches_reference_on_planted_subspace():
    x, y = planted_pair(np.random.default_rng(26))
    assert pwcca(x, y) == pytest.approx(pwcca_reference(x, y), abs=1e-8)
    # The weighting is X's: swapping the arguments changes the value (declared asymmetric).
    assert abs(pwcca(y, x) - pwcca(x, y)) > 1e-3
    assert pwcca(y, x) == pytest.approx(pwcca_reference(y, x), abs=1e-8)
