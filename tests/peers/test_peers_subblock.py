"""Max-sum sub-block search (Seeking Neural Nuggets' extraction) against a brute-force scan."""

import numpy as np
import pytest

from pkt_core.peers.subblock import SubBlockError, max_sum_subblock, summed_area_table


def _brute_force(scores: np.ndarray, rows: int, cols: int) -> tuple[int, int, float]:
    best = (-1, -1, -np.inf)
    for i in range(scores.shape[0] - rows + 1):
        for j in range(scores.shape[1] - cols + 1):
            total = float(scores[i : i + rows, j : j + cols].sum())
            if total > best[2]:
                best = (i, j, total)
    return best


def test_summed_area_table_holds_every_prefix_sum():
    scores = np.random.default_rng(0).random((5, 7))
    table = summed_area_table(scores)
    for i in range(6):
        for j in range(8):
            assert table[i, j] == pytest.approx(scores[:i, :j].sum(), abs=1e-12)


def test_planted_block_is_found():
    rng = np.random.default_rng(1)
    scores = rng.random((60, 80)) * 0.1
    scores[23:33, 41:53] += 1.0  # a 10 x 12 block of high sensitivity
    block = max_sum_subblock(scores, (10, 12))
    assert (block.row, block.col, block.rows, block.cols) == (23, 41, 10, 12)
    assert block.total == pytest.approx(scores[23:33, 41:53].sum())
    assert block.matrix_total == pytest.approx(scores.sum())


@pytest.mark.parametrize("shape,window", [((9, 11), (3, 4)), ((6, 6), (6, 6)), ((7, 5), (1, 1)), ((8, 13), (8, 2))])
def test_matches_a_brute_force_scan(shape, window):
    scores = np.random.default_rng(sum(shape) + sum(window)).random(shape)
    block = max_sum_subblock(scores, window)
    row, col, total = _brute_force(scores, *window)
    assert (block.row, block.col) == (row, col)
    assert block.total == pytest.approx(total, rel=1e-12)


def test_a_window_larger_than_the_matrix_is_refused():
    with pytest.raises(SubBlockError, match="does not fit"):
        max_sum_subblock(np.ones((4, 4)), (5, 2))
    with pytest.raises(SubBlockError, match="NaN"):
        max_sum_subblock(np.full((3, 3), np.nan), (2, 2))
