"""The contiguous sub-block of a given shape with the largest summed score.

Seeking Neural Nuggets (Zhong et al., ICLR 2024) cuts from every source weight matrix the
window of the target matrix's shape that holds the most sensitivity. A brute-force scan costs
``(m - p + 1)(n - q + 1) p q`` additions (about 10^15 for a 1.5B -> 0.5B MLP matrix); a
summed-area table gives every window's sum in four look-ups, so the search is ``O(m n)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pkt_core.errors import PktError


class SubBlockError(PktError):
    """The asked-for window does not fit the matrix, or the scores are unusable."""


@dataclass(frozen=True)
class SubBlock:
    row: int  # first row of the window
    col: int  # first column
    rows: int
    cols: int
    total: float  # summed score inside the window
    matrix_total: float  # summed score of the whole matrix

    def slices(self) -> tuple[slice, slice]:
        return slice(self.row, self.row + self.rows), slice(self.col, self.col + self.cols)

    def record(self) -> dict:
        return {"row_start": self.row, "col_start": self.col, "rows": self.rows, "cols": self.cols,
                "block_score": self.total, "matrix_score": self.matrix_total,
                "block_score_fraction": self.total / self.matrix_total if self.matrix_total else 0.0}


def summed_area_table(scores: np.ndarray) -> np.ndarray:
    """``table[i, j] = scores[:i, :j].sum()``, with a leading row and column of zeros (float64)."""
    table = np.zeros((scores.shape[0] + 1, scores.shape[1] + 1), dtype=np.float64)
    np.cumsum(np.cumsum(np.asarray(scores, dtype=np.float64), axis=0), axis=1, out=table[1:, 1:])
    return table


def window_sums(scores: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Sum of every ``rows x cols`` window; entry ``[i, j]`` is the window starting at (i, j)."""
    table = summed_area_table(scores)
    return table[rows:, cols:] - table[:-rows, cols:] - table[rows:, :-cols] + table[:-rows, :-cols]


def max_sum_subblock(scores: np.ndarray, shape: tuple[int, int]) -> SubBlock:
    """The ``shape`` window of ``scores`` with the largest sum (the first one, row-major, on ties)."""
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise SubBlockError(f"scores must be a matrix, got shape {scores.shape}")
    rows, cols = shape
    if rows < 1 or cols < 1 or rows > scores.shape[0] or cols > scores.shape[1]:
        raise SubBlockError(f"a {rows} x {cols} window does not fit a {scores.shape[0]} x {scores.shape[1]} matrix")
    if not np.isfinite(scores).all():
        raise SubBlockError("scores hold NaN or infinity")
    sums = window_sums(scores, rows, cols)
    row, col = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return SubBlock(int(row), int(col), rows, cols, float(sums[row, col]), float(scores.sum(dtype=np.float64)))
