"""Mutual k-nearest-neighbour overlap: a rank-based view to put next to CKA.

For each sample, the k nearest other samples in A and in B; the score is the mean
fraction shared, ``mean_i |N_A(i) ∩ N_B(i)| / k`` in [0, 1] (1: same neighbourhoods
everywhere; about ``k / (n - 1)`` for unrelated representations). It only sees the order of
distances, so unlike CKA it is not dominated by a few high-variance directions.
Ties at the k-th distance are broken arbitrarily (but deterministically). Rows are centred
first, so ``neighbour_metric="cosine"`` compares the angles of rows around the mean row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pkt_core.errors import SimilarityInputError
from pkt_core.similarity.pairwise import pairwise_values
from pkt_core.similarity.result import LayerMatrix
from pkt_core.similarity.validation import centred_float64

NEIGHBOUR_METRICS: tuple[str, ...] = ("euclidean", "cosine")
DEFAULT_K = 10


def _check_options(k: int, neighbour_metric: str) -> None:
    if int(k) != k or k < 1:
        raise SimilarityInputError(f"k must be a positive integer; got {k}.")
    if neighbour_metric not in NEIGHBOUR_METRICS:
        raise SimilarityInputError(f"neighbour_metric must be one of {NEIGHBOUR_METRICS}; got {neighbour_metric!r}.")


def nearest_neighbours(x: Any, name: str, k: int = DEFAULT_K, neighbour_metric: str = "euclidean") -> np.ndarray:
    """``(n, k)`` indices of each row's k nearest other rows (unordered within a row)."""
    _check_options(k, neighbour_metric)
    points = centred_float64(x, name, min_rows=int(k) + 1, why=f"k-NN with k={k}")
    if neighbour_metric == "cosine":
        norms = np.linalg.norm(points, axis=1)
        if not (norms > 0).all():
            raise SimilarityInputError(
                f"{name}: row {int(np.argmin(norms))} is the mean row (zero after centring), so its "
                "cosine neighbours are undefined; use neighbour_metric='euclidean'."
            )
        points = points / norms[:, None]
    gram = points @ points.T
    sq_norms = np.diagonal(gram).copy()
    sq_distances = sq_norms[:, None] + sq_norms[None, :] - 2.0 * gram
    np.fill_diagonal(sq_distances, np.inf)  # a row is not its own neighbour
    return np.argpartition(sq_distances, int(k) - 1, axis=1)[:, : int(k)]


def _overlap(neighbours_a: np.ndarray, neighbours_b: np.ndarray) -> float:
    n, k = neighbours_a.shape
    # Encode (row, neighbour) as one integer so one set intersection counts all rows at once.
    offsets = np.arange(n, dtype=np.int64)[:, None] * n
    shared = np.intersect1d(neighbours_a + offsets, neighbours_b + offsets, assume_unique=True).size
    return shared / (n * k)


def mutual_knn_overlap(x: Any, y: Any, *, k: int = DEFAULT_K, neighbour_metric: str = "euclidean") -> float:
    return _overlap(nearest_neighbours(x, "x", k, neighbour_metric), nearest_neighbours(y, "y", k, neighbour_metric))


def mutual_knn_matrix(
    layers_a: Sequence[Any], layers_b: Sequence[Any], *, k: int = DEFAULT_K, neighbour_metric: str = "euclidean",
    names_a: Sequence[str] | None = None, names_b: Sequence[str] | None = None,
) -> LayerMatrix:
    _check_options(k, neighbour_metric)

    def prepare(layer: Any, name: str) -> np.ndarray:
        return nearest_neighbours(layer, name, k, neighbour_metric)

    values = pairwise_values(layers_a, layers_b, prepare, _overlap, names_a, names_b)
    n_rows = int(np.shape(layers_a[0])[0])
    return LayerMatrix(
        values, "mutual_knn", n_rows, "pairwise", {"k": int(k), "neighbour_metric": neighbour_metric},
        notes=(f"chance level for unrelated representations is about k/(n-1) = {k / (n_rows - 1):.3g}.",),
    )
