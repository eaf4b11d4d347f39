"""Numbers from per-item scores: choice accuracy, pass@k, bootstrap intervals, paired comparisons."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction

import numpy as np

from pkt_core.errors import PktError

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
_BOOTSTRAP_CHUNK = 100  # resamples drawn at once: bounds memory for 14k-item MMLU


class MetricInputError(PktError):
    """Scores given to a metric are unusable (empty, not 0/1 where needed, k > n, ...)."""


def choice_predictions(logprobs: Sequence[float], choices: Sequence[str]) -> tuple[int, int]:
    """(argmax of log-likelihood, argmax of log-likelihood per character): the harness's acc and acc_norm.

    For MMLU the choices are the letters "A".."D", all one character long, so both agree.
    """
    if len(logprobs) != len(choices) or not choices:
        raise MetricInputError(f"{len(logprobs)} log-likelihoods for {len(choices)} choices")
    values = np.asarray(logprobs, dtype=np.float64)
    lengths = np.asarray([float(len(choice)) for choice in choices])
    return int(np.argmax(values)), int(np.argmax(values / lengths))


def pass_at_k(n: int, correct: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``correct`` pass: 1 - C(n-c, k) / C(n, k).

    Computed as a product (Chen et al. 2021) so large n does not overflow.
    """
    if not 0 <= correct <= n or not 1 <= k <= n:
        raise MetricInputError(f"pass@k needs 0 <= correct <= n and 1 <= k <= n (got n={n}, correct={correct}, k={k})")
    if n - correct < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - correct + 1, n + 1, dtype=np.float64)))


@dataclass(frozen=True)
class Interval:
    """A mean with its percentile-bootstrap interval."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float = 0.95
    resamples: int = BOOTSTRAP_RESAMPLES

    def as_dict(self) -> dict:
        return asdict(self)


def _as_scores(scores: Sequence[float]) -> np.ndarray:
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise MetricInputError("a metric needs a non-empty list of per-item scores")
    if not np.isfinite(values).all():
        raise MetricInputError("per-item scores hold NaN or infinity; check the records")
    return values


def _bootstrap_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, _BOOTSTRAP_CHUNK):
        count = min(_BOOTSTRAP_CHUNK, resamples - start)
        picks = rng.integers(0, values.size, size=(count, values.size), dtype=np.int32)
        means[start:start + count] = values[picks].mean(axis=1)
    return means


def bootstrap_interval(
    scores: Sequence[float], confidence: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> Interval:
    """Mean of the scores with a percentile bootstrap interval over items (fixed seed: reproducible)."""
    if not 0 < confidence < 1:
        raise MetricInputError(f"confidence must lie in (0, 1), not {confidence}")
    values = _as_scores(scores)
    means = _bootstrap_means(values, resamples, seed)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(float(values.mean()), float(low), float(high), int(values.size), confidence, resamples)


def mcnemar_exact_p(right_to_wrong: int, wrong_to_right: int) -> float:
    """Two-sided exact McNemar test: a binomial test of the discordant pairs against 1/2.

    Exact rational arithmetic, so thousands of discordant pairs lose no precision.
    """
    # Python ints: a NumPy count would overflow 2 ** discordant (to 0) from 64 discordant pairs on.
    right_to_wrong, wrong_to_right = int(right_to_wrong), int(wrong_to_right)
    if right_to_wrong < 0 or wrong_to_right < 0:
        raise MetricInputError("flip counts cannot be negative")
    discordant = right_to_wrong + wrong_to_right
    if discordant == 0:
        return 1.0
    smaller = min(right_to_wrong, wrong_to_right)
    tail = Fraction(sum(math.comb(discordant, i) for i in range(smaller + 1)), 2 ** discordant)
    return float(min(Fraction(1), 2 * tail))


@dataclass(frozen=True)
class PairedComparison:
    """Model A against model B on the same items (B is usually A after transfer)."""

    n: int
    accuracy_a: float
    accuracy_b: float
    both_right: int
    both_wrong: int
    right_to_wrong: int  # right for A, wrong for B
    wrong_to_right: int  # wrong for A, right for B
    mcnemar_p: float
    difference: Interval  # B - A, with a paired bootstrap interval
    only_in_a: int = 0
    only_in_b: int = 0
    right_to_wrong_ids: list[str] = field(default_factory=list)
    wrong_to_right_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {**asdict(self), "difference": self.difference.as_dict()}


def _binary_scores(scores: Mapping[str, float], label: str) -> dict[str, bool]:
    values = {}
    for item_id, score in scores.items():
        if score not in (0, 1, True, False):
            raise MetricInputError(
                f"paired comparison needs right/wrong (0/1) scores; {label} has {score!r} for item {item_id!r}"
            )
        values[str(item_id)] = bool(score)
    return values


def compare_paired(scores_a: Mapping[str, float], scores_b: Mapping[str, float]) -> PairedComparison:
    """Flips between two models on their common items and McNemar's exact test of them.

    ``scores_*`` map item id to 0/1. Items scored by one model only are left out and counted.
    """
    a, b = _binary_scores(scores_a, "model A"), _binary_scores(scores_b, "model B")
    common = [item_id for item_id in a if item_id in b]
    if not common:
        raise MetricInputError("the two models share no scored items; evaluate both on the same task and subset")
    right_to_wrong = [item_id for item_id in common if a[item_id] and not b[item_id]]
    wrong_to_right = [item_id for item_id in common if b[item_id] and not a[item_id]]
    both_right = sum(1 for item_id in common if a[item_id] and b[item_id])
    differences = np.asarray([float(b[item_id]) - float(a[item_id]) for item_id in common])
    return PairedComparison(
        n=len(common),
        accuracy_a=float(np.mean([a[item_id] for item_id in common])),
        accuracy_b=float(np.mean([b[item_id] for item_id in common])),
        both_right=both_right,
        both_wrong=len(common) - both_right - len(right_to_wrong) - len(wrong_to_right),
        right_to_wrong=len(right_to_wrong),
        wrong_to_right=len(wrong_to_right),
        mcnemar_p=mcnemar_exact_p(len(right_to_wrong), len(wrong_to_right)),
        difference=bootstrap_interval(differences),
        only_in_a=len(a) - len(common),
        only_in_b=len(b) - len(common),
        right_to_wrong_ids=right_to_wrong,
        wrong_to_right_ids=wrong_to_right,
    )
