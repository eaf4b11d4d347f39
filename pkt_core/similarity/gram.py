"""Kernel (Gram) matrices of one representation: linear and RBF, written into caller-owned buffers.

The caller owns the buffers so that the layer-matrix engine can write each layer's Gram
matrix straight into its row of one stacked array and compare all layers with one GEMM.
Inputs here are already validated, centred float64 arrays, divided by a power of two so that
their largest entry is below 1 (see ``validation``): squared distances and Gram entries then
stay far from overflow and underflow whatever the magnitude of the user's data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pkt_core.similarity.errors import DegenerateRepresentationError


def linear_gram_rows(xc: np.ndarray, row_start: int, row_stop: int, out: np.ndarray) -> None:
    """Rows ``row_start:row_stop`` of ``xc @ xc.T`` into ``out``.

    For the full matrix NumPy recognises ``a @ a.T`` and calls SYRK, which does half the
    flops of a general GEMM; that is why the full case is written exactly this way.
    """
    if row_start == 0 and row_stop == xc.shape[0]:
        np.matmul(xc, xc.T, out=out)
    else:
        np.matmul(xc[row_start:row_stop], xc.T, out=out)


def double_centre_inplace(gram: np.ndarray) -> None:
    """``gram <- H gram H`` with ``H = I - 11^T/n``, for a symmetric ``gram``, in O(n^2)."""
    row_means = gram.mean(axis=1)
    grand_mean = row_means.mean()
    gram -= row_means[:, None]
    gram -= row_means[None, :]
    gram += grand_mean


def median_pairwise_sq_distance(sq_distances: np.ndarray) -> float:
    """Median of the squared distances over distinct pairs ``i < j``.

    The zero self-distances are left out: at small n they would pull the median (and so
    the bandwidth) down, and they carry no information about the data's scale.
    """
    upper = np.triu_indices(sq_distances.shape[0], k=1)
    return float(np.median(sq_distances[upper]))


@dataclass
class RbfGram:
    """Fills RBF Gram matrices ``exp(-|x_i - x_j|^2 / (2 sigma^2))``, with
    ``sigma^2 = bandwidth_multiplier^2 * median_{i<j} |x_i - x_j|^2``, and remembers
    each ``sigma^2`` it chose, in the units of the rescaled layer it was given (the caller
    converts them back for the result's metadata)."""

    bandwidth_multiplier: float = 1.0
    sq_bandwidths: list[float] = field(default_factory=list)

    def fill(self, xc: np.ndarray, out: np.ndarray, name: str) -> None:
        np.matmul(xc, xc.T, out=out)
        sq_norms = np.diagonal(out).copy()
        out *= -2.0
        out += sq_norms[:, None]
        out += sq_norms[None, :]
        np.maximum(out, 0.0, out=out)  # rounding can make tiny distances negative
        np.fill_diagonal(out, 0.0)
        median = median_pairwise_sq_distance(out)
        if median <= 0.0:
            raise DegenerateRepresentationError(
                f"{name}: the median distance between rows is 0 (at least half of the row pairs "
                "are identical), so the median-distance RBF bandwidth is undefined; "
                "deduplicate the rows or use a linear measure."
            )
        sq_bandwidth = self.bandwidth_multiplier**2 * median
        self.sq_bandwidths.append(sq_bandwidth)
        out *= -1.0 / (2.0 * sq_bandwidth)
        np.exp(out, out=out)
