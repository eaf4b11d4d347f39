"""Canonical correlation analysis: mean CCA, SVCCA (Raghu et al. 2017), PWCCA (Morcos et al. 2018).

Computed from each representation's centred thin SVD, never from inverted covariance
matrices: with ``X - mean = U_x S_x V_x'``, the canonical correlations are the singular
values of ``U_x' U_y`` (the cosines of the principal angles between the two column
spaces). With ridge regularisation ``eps`` the columns of ``U`` are shrunk by
``s / sqrt(s^2 + eps)``, which is exactly the SVD form of
``(X'X + eps I)^-1/2 X'Y (Y'Y + eps I)^-1/2``; ``eps = regularization * ||X - mean||_F^2 / d``
(a fraction of the mean variance per feature, so isotropic scaling leaves it unchanged).

When ``rank(X) + rank(Y) > n - 1`` the two column spaces must intersect inside the
(n-1)-dimensional space of centred vectors, so that many correlations are 1 *by
construction*: this is the usual "CCA with more features than samples" trap. It is
reported (a :class:`SimilarityWarning` for one pair, a note on a layer matrix) and
``regularization > 0`` or SVCCA avoid it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pkt_core.errors import SimilarityInputError
from pkt_core.similarity.errors import SimilarityWarning
from pkt_core.similarity.pairwise import pairwise_values
from pkt_core.similarity.result import LayerMatrix
from pkt_core.similarity.spectral import SpectralBasis, spectral_basis

DEFAULT_VARIANCE_FRACTION = 0.99


@dataclass(frozen=True)
class CanonicalSolution:
    correlations: np.ndarray  # (k,), descending, in [0, 1]; k = min(rank_a, rank_b)
    rotation_a: np.ndarray  # (rank_a, k): canonical directions in A's (shrunk) basis; k = 0 if not asked
    forced_units: int  # correlations that are 1 only because n is too small


def _check_regularization(regularization: float) -> float:
    if not np.isfinite(regularization) or regularization < 0:
        raise SimilarityInputError(f"regularization must be a number >= 0; got {regularization}.")
    return float(regularization)


def _shrunk_basis(basis: SpectralBasis, regularization: float) -> np.ndarray:
    if regularization == 0.0:
        return basis.u
    ridge = regularization * float(np.sum(basis.s**2)) / basis.n_features
    return basis.u * (basis.s / np.sqrt(basis.s**2 + ridge))


def canonical_solution(
    a: SpectralBasis, b: SpectralBasis, regularization: float = 0.0, with_directions: bool = True
) -> CanonicalSolution:
    """Canonical correlations (and, if asked, A's canonical directions; the SVD without
    vectors is several times cheaper, and mean CCA / SVCCA do not need them)."""
    cross = _shrunk_basis(a, regularization).T @ _shrunk_basis(b, regularization)
    if with_directions:
        left, correlations, _ = np.linalg.svd(cross, full_matrices=False)
    else:
        left, correlations = np.empty((a.rank, 0)), np.linalg.svd(cross, compute_uv=False)
    forced = max(0, a.rank + b.rank - (a.n_rows - 1)) if regularization == 0.0 else 0
    # Cosines of principal angles: rounding can push them a hair above 1.
    return CanonicalSolution(np.clip(correlations, 0.0, 1.0), left, forced)


def _forced_units_message(a: SpectralBasis, b: SpectralBasis, forced: int) -> str:
    return (
        f"{a.name} vs {b.name}: rank {a.rank} + rank {b.rank} exceeds n-1 = {a.n_rows - 1}, so at least "
        f"{forced} canonical correlations are 1 by construction; pass regularization > 0, use svcca, "
        "or use more rows."
    )


def svd_reduced(basis: SpectralBasis, variance_fraction: float, dims: int | None) -> SpectralBasis:
    """SVCCA's first step: the top singular directions holding ``variance_fraction`` of the
    variance, or exactly ``dims`` of them (capped at the rank)."""
    if dims is not None:
        if int(dims) != dims or dims < 1:
            raise SimilarityInputError(f"dims must be a positive integer; got {dims}.")
        return basis.truncated(min(int(dims), basis.rank))
    if not 0.0 < variance_fraction <= 1.0:
        raise SimilarityInputError(f"variance_fraction must be in (0, 1]; got {variance_fraction}.")
    energy = np.cumsum(basis.s**2) / np.sum(basis.s**2)
    k = int(np.searchsorted(energy, variance_fraction)) + 1
    return basis.truncated(min(k, basis.rank))


def _mean_cca_value(a: SpectralBasis, b: SpectralBasis, regularization: float) -> tuple[float, int]:
    solution = canonical_solution(a, b, regularization, with_directions=False)
    return float(solution.correlations.mean()), solution.forced_units


def _pwcca_value(a: SpectralBasis, b: SpectralBasis, regularization: float) -> tuple[float, int]:
    """Morcos et al.: weight each correlation by how much of A's neurons its canonical
    variate accounts for, ``alpha_i = sum_j |<h_i, x_j>|`` with ``h_i`` orthonormalised."""
    solution = canonical_solution(a, b, regularization)
    variates = _shrunk_basis(a, regularization) @ solution.rotation_a  # (n, k)
    orthonormal, _ = np.linalg.qr(variates)
    # <h_i, x_j> for all neurons j, using X - mean = U S V' (h is orthogonal to 1, so
    # the mean does not change these inner products).
    weights = np.abs(((orthonormal.T @ a.u) * a.s) @ a.vt).sum(axis=1)
    return float(weights @ solution.correlations / weights.sum()), solution.forced_units


def _warn_forced(a: SpectralBasis, b: SpectralBasis, forced: int) -> None:
    if forced:
        warnings.warn(_forced_units_message(a, b, forced), SimilarityWarning, stacklevel=3)


def mean_cca(x: Any, y: Any, *, regularization: float = 0.0) -> float:
    """Mean of the ``min(rank X, rank Y)`` canonical correlations of two representations."""
    regularization = _check_regularization(regularization)
    a, b = spectral_basis(x, "x"), spectral_basis(y, "y")
    value, forced = _mean_cca_value(a, b, regularization)
    _warn_forced(a, b, forced)
    return value


def svcca(x: Any, y: Any, *, variance_fraction: float = DEFAULT_VARIANCE_FRACTION, dims: int | None = None) -> float:
    """SVCCA: reduce each input to its top singular directions (99% of the variance by
    default, or ``dims``), then the mean canonical correlation of the reduced inputs."""
    a = svd_reduced(spectral_basis(x, "x"), variance_fraction, dims)
    b = svd_reduced(spectral_basis(y, "y"), variance_fraction, dims)
    value, forced = _mean_cca_value(a, b, 0.0)
    _warn_forced(a, b, forced)
    return value


def pwcca(x: Any, y: Any, *, regularization: float = 0.0) -> float:
    """Projection-weighted CCA of ``x`` onto ``y`` (asymmetric: the weights come from ``x``)."""
    regularization = _check_regularization(regularization)
    a, b = spectral_basis(x, "x"), spectral_basis(y, "y")
    value, forced = _pwcca_value(a, b, regularization)
    _warn_forced(a, b, forced)
    return value


def _cca_family_matrix(
    metric: str,
    layers_a: Sequence[Any],
    layers_b: Sequence[Any],
    prepare: Callable[[Any, str], SpectralBasis],
    value: Callable[[SpectralBasis, SpectralBasis], tuple[float, int]],
    options: dict[str, Any],
    names_a: Sequence[str] | None,
    names_b: Sequence[str] | None,
) -> LayerMatrix:
    forced_pairs: list[str] = []

    def compare(a: SpectralBasis, b: SpectralBasis) -> float:
        result, forced = value(a, b)
        if forced:
            forced_pairs.append(_forced_units_message(a, b, forced))
        return result

    values = pairwise_values(layers_a, layers_b, prepare, compare, names_a, names_b)
    notes: tuple[str, ...] = ()
    if forced_pairs:
        notes = (f"{len(forced_pairs)} of {values.size} pairs have too few rows for CCA; e.g. {forced_pairs[0]}",)
    n_rows = int(np.shape(layers_a[0])[0])
    return LayerMatrix(values, metric, n_rows, "pairwise", options, notes)


def mean_cca_matrix(
    layers_a: Sequence[Any], layers_b: Sequence[Any], *, regularization: float = 0.0,
    names_a: Sequence[str] | None = None, names_b: Sequence[str] | None = None,
) -> LayerMatrix:
    regularization = _check_regularization(regularization)
    return _cca_family_matrix(
        "mean_cca", layers_a, layers_b, spectral_basis,
        lambda a, b: _mean_cca_value(a, b, regularization), {"regularization": regularization}, names_a, names_b,
    )


def svcca_matrix(
    layers_a: Sequence[Any], layers_b: Sequence[Any], *, variance_fraction: float = DEFAULT_VARIANCE_FRACTION,
    dims: int | None = None, names_a: Sequence[str] | None = None, names_b: Sequence[str] | None = None,
) -> LayerMatrix:
    def prepare(layer: Any, name: str) -> SpectralBasis:
        return svd_reduced(spectral_basis(layer, name), variance_fraction, dims)

    return _cca_family_matrix(
        "svcca", layers_a, layers_b, prepare, lambda a, b: _mean_cca_value(a, b, 0.0),
        {"variance_fraction": variance_fraction, "dims": dims}, names_a, names_b,
    )


def pwcca_matrix(
    layers_a: Sequence[Any], layers_b: Sequence[Any], *, regularization: float = 0.0,
    names_a: Sequence[str] | None = None, names_b: Sequence[str] | None = None,
) -> LayerMatrix:
    regularization = _check_regularization(regularization)
    return _cca_family_matrix(
        "pwcca", layers_a, layers_b, spectral_basis,
        lambda a, b: _pwcca_value(a, b, regularization), {"regularization": regularization}, names_a, names_b,
    )
