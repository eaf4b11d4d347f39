"""pass@k against its closed form, McNemar against scipy's binomial test, bootstrap against scipy."""

import math

import numpy as np
import pytest
from scipy import stats

from pkt_core.evaluation.metrics import (
    MetricInputError,
    bootstrap_interval,
    compare_paired,
    mcnemar_exact_p,
    pass_at_k,
)


@pytest.mark.parametrize("n", [1, 5, 20, 200])
def test_pass_at_k_equals_the_closed_form(n):
    for correct in range(n + 1):
        for k in range(1, n + 1):
            expected = 1 - math.comb(n - correct, k) / math.comb(n, k)
            assert pass_at_k(n, correct, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_1_is_the_fraction_correct_and_bad_input_is_refused():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(1, 0, 1) == 0.0
    with pytest.raises(MetricInputError):
        pass_at_k(5, 6, 1)
    with pytest.raises(MetricInputError):
        pass_at_k(5, 2, 6)


@pytest.mark.parametrize("flips", [(0, 0), (0, 1), (3, 3), (2, 9), (10, 1), (40, 25), (600, 540)])
def test_mcnemar_exact_p_equals_scipys_binomial_test(flips):
    right_to_wrong, wrong_to_right = flips
    discordant = right_to_wrong + wrong_to_right
    expected = 1.0 if discordant == 0 else stats.binomtest(right_to_wrong, discordant, 0.5).pvalue
    assert mcnemar_exact_p(right_to_wrong, wrong_to_right) == pytest.approx(expected, rel=1e-9)
    # Counts summed from NumPy arrays (np.int64) give the same p: 2 ** discordant must not overflow.
    assert mcnemar_exact_p(np.int64(right_to_wrong), np.int64(wrong_to_right)) == pytest.approx(expected, rel=1e-9)


def test_bootstrap_interval_agrees_with_scipy_and_is_reproducible():
    rng = np.random.default_rng(1)
    scores = (rng.random(400) < 0.37).astype(float)
    interval = bootstrap_interval(scores)
    reference = stats.bootstrap((scores,), np.mean, confidence_level=0.95, method="percentile",
                                n_resamples=20000, random_state=np.random.default_rng(2)).confidence_interval
    assert interval.mean == pytest.approx(scores.mean())
    assert interval.low == pytest.approx(reference.low, abs=0.01)
    assert interval.high == pytest.approx(reference.high, abs=0.01)
    assert bootstrap_interval(scores) == interval  # fixed seed
    assert bootstrap_interval([1.0] * 10).low == 1.0
    with pytest.raises(MetricInputError):
        bootstrap_interval([])


def test_paired_comparison_counts_flips_by_item():
    before = {"a": 1, "b": 1, "c": 0, "d": 0, "e": 1, "f": 0, "only_before": 1}
    after = {"a": 1, "b": 0, "c": 1, "d": 1, "e": 1, "f": 0, "only_after": 0}
    result = compare_paired(before, after)
    assert result.n == 6 and result.only_in_a == 1 and result.only_in_b == 1
    assert (result.both_right, result.both_wrong) == (2, 1)
    assert result.right_to_wrong_ids == ["b"] and result.wrong_to_right_ids == ["c", "d"]
    assert result.accuracy_a == pytest.approx(3 / 6) and result.accuracy_b == pytest.approx(4 / 6)
    assert result.mcnemar_p == pytest.approx(stats.binomtest(1, 3, 0.5).pvalue)
    assert result.difference.mean == pytest.approx(1 / 6)
    with pytest.raises(MetricInputError, match="share no scored items"):
        compare_paired({"x": 1}, {"y": 0})
    with pytest.raises(MetricInputError, match="right/wrong"):
        compare_paired({"x": 0.5}, {"x": 1})
