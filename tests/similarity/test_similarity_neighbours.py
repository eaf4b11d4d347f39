"""Mutual k-NN overlap against a brute-force loop over SciPy's distance matrix."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from pkt_core.errors import SimilarityInputError
from pkt_core.similarity import mutual_knn_overlap


def knn_sets_reference(x: np.ndarray, k: int, metric: str) -> list[set[int]]:
    points = x - x.mean(0)
    distances = cdist(points, points, "cosine" if metric == "cosine" else "euclidean")
    sets = []
    for i, row in enumerate(distances):
        order = [j for j in np.argsort(row, kind="stable") if j != i]
        sets.append(set(order[:k]))
    return sets


def overlap_reference(x, y, k, metric="euclidean") -> float:
    a, b = knn_sets_reference(x, k, metric), knn_sets_reference(y, k, metric)
    return float(np.mean([len(sa & sb) / k for sa, sb in zip(a, b)]))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("k", [1, 5, 12])
def test_matches_brute_force(metric, k):
    rng = np.random.default_rng(k)
    x = rng.standard_normal((80, 6))
    y = x @ rng.standard_normal((6, 9)) + 0.8 * rng.standard_normal((80, 9))
    assert mutual_knn_overlap(x, y, k=k, neighbour_metric=metric) == pytest.approx(
        overlap_reference(x, y, k, metric), abs=1e-15
    )


def test_same_neighbourhoods_score_one_and_unrelated_ones_about_chance():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 5))
    assert mutual_knn_overlap(x, 2.0 * x[:, ::-1] + 1.0) == 1.0
    # Unrelated data: each of the k neighbours is shared with probability k/(n-1).
    chance = np.mean([mutual_knn_overlap(x, rng.standard_normal((300, 5))) for _ in range(5)])
    assert chance == pytest.approx(10 / 299, rel=0.2)  # exact expectation by exchangeability of rows


def test_k_must_leave_neighbours():
    x = np.random.default_rng(0).standard_normal((5, 3))
    with pytest.raises(SimilarityInputError, match="at least 6"):
        mutual_knn_overlap(x, x, k=5)
    with pytest.raises(SimilarityInputError, match="positive integer"):
        mutual_knn_overlap(x, x, k=0)
