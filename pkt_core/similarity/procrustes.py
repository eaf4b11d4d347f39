"""Orthogonal Procrustes similarity and distance (Schönemann 1966; Ding et al. 2021).

Both inputs are centred and scaled to unit Frobenius norm; the narrower one is padded
with zero columns (which changes nothing below). The best rotation ``R`` gives
``min_R ||X R - Y||_F^2 = 2 - 2 ||X'Y||_*`` (nuclear norm), so

* similarity ``= ||X'Y||_*`` in [0, 1], 1 exactly when ``Y = X Q`` for an orthogonal ``Q``;
* distance ``= sqrt(2 - 2 similarity)`` in [0, sqrt(2)], a metric on representations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pkt_core.similarity.pairwise import pairwise_values
from pkt_core.similarity.result import LayerMatrix
from pkt_core.similarity.spectral import SpectralBasis, spectral_basis


def _similarity(a: SpectralBasis, b: SpectralBasis) -> float:
    # X'Y = V_a S_a U_a' U_b S_b V_b' has the singular values of S_a U_a' U_b S_b (r_a x r_b).
    cross = (a.u * a.s).T @ (b.u * b.s)
    # The singular values are the square roots of the eigenvalues of the smaller Gram matrix of
    # ``cross``: a symmetric eigenproblem costs a fraction of an SVD, and on layers hundreds wide
    # compared pair by pair that is most of the measure's cost.
    gram = cross @ cross.T if cross.shape[0] <= cross.shape[1] else cross.T @ cross
    nuclear = float(np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0.0, None)).sum())
    return min(1.0, nuclear / float(np.linalg.norm(a.s) * np.linalg.norm(b.s)))


def _distance(a: SpectralBasis, b: SpectralBasis) -> float:
    return float(np.sqrt(max(0.0, 2.0 - 2.0 * _similarity(a, b))))


def procrustes_similarity(x: Any, y: Any) -> float:
    return _similarity(spectral_basis(x, "x"), spectral_basis(y, "y"))


def procrustes_distance(x: Any, y: Any) -> float:
    return _distance(spectral_basis(x, "x"), spectral_basis(y, "y"))


def _matrix(
    metric: str,
    compare: Callable[[SpectralBasis, SpectralBasis], float],
    layers_a: Sequence[Any],
    layers_b: Sequence[Any],
    names_a: Sequence[str] | None,
    names_b: Sequence[str] | None,
) -> LayerMatrix:
    values = pairwise_values(layers_a, layers_b, spectral_basis, compare, names_a, names_b)
    return LayerMatrix(values, metric, int(np.shape(layers_a[0])[0]), "pairwise")


def procrustes_similarity_matrix(
    layers_a: Sequence[Any], layers_b: Sequence[Any], *,
    names_a: Sequence[str] | None = None, names_b: Sequence[str] | None = None,
) -> LayerMatrix:
    return _matrix("procrustes", _similarity, layers_a, layers_b, names_a, names_b)


def procrustes_distance_matrix(
    layers_a: Sequence[Any], layers_b: Sequence[Any], *,
    names_a: Sequence[str] | None = None, names_b: Sequence[str] | None = None,
) -> LayerMatrix:
    return _matrix("procrustes_distance", _distance, layers_a, layers_b, names_a, names_b)
