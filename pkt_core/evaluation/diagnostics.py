"""Answer-format diagnostics of a choice task: which options a model picks, and what its accuracy can mean.

A small model at chance often answers one letter for almost everything; its accuracy is then the
share of that letter among the gold answers, and a change of "accuracy" is a move of its letter
prior. So every choice summary carries: the distribution of predicted options next to the gold
one, its entropy, the total-variation distance between the two, whether one option dominates,
and whether the accuracy's interval reaches chance.

PriDe (Zheng et al., ICLR 2024, "Large Language Models Are Not Robust Multiple Choice
Selectors") models the observed option probability as prior(position) x debiased(content).
Averaging log-probabilities over all cyclic rotations of an item puts every content at every
position once, so the content term is the same for all positions and drops out: the prior is
``softmax(mean over estimation items and rotations of log P(position))``. Dividing it out of
the other items' probabilities gives the debiased prediction. Accuracy is reported on the items
not used for the estimate, as the paper does.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

DOMINANCE_SHARE = 0.5  # one option predicted for at least half the items: "dominated by one option"


def distribution(labels: Sequence[str], options: Sequence[str]) -> dict[str, int]:
    counts = Counter(labels)
    return {option: int(counts.get(option, 0)) for option in options}


def entropy_bits(counts: dict[str, int]) -> float:
    total = sum(counts.values())
    shares = [count / total for count in counts.values() if count]
    return float(-sum(share * math.log2(share) for share in shares)) if total else 0.0


def total_variation(a: dict[str, int], b: dict[str, int]) -> float:
    """Half the L1 distance between the two normalised distributions (0: same, 1: disjoint)."""
    total_a, total_b = sum(a.values()), sum(b.values())
    keys = set(a) | set(b)
    return float(0.5 * sum(abs(a.get(k, 0) / total_a - b.get(k, 0) / total_b) for k in keys))


def answer_format(predictions: Sequence[str], golds: Sequence[str], options: Sequence[str],
                  accuracy: dict, chance: float) -> dict:
    """The summary block ``answer_format``: distributions, entropy, distance, and plain statements."""
    predicted, gold = distribution(predictions, options), distribution(golds, options)
    n = len(predictions)
    top, top_count = max(predicted.items(), key=lambda pair: pair[1])
    share = top_count / n if n else 0.0
    dominated = share >= DOMINANCE_SHARE
    at_chance = accuracy["low"] <= chance <= accuracy["high"] or accuracy["high"] < chance
    shown = " / ".join(f"{k} {v}" for k, v in predicted.items())
    statements = [f"predicted {shown} (gold {' / '.join(f'{k} {v}' for k, v in gold.items())})"]
    if dominated:
        statements.append(f"dominated by one option: {top} for {top_count} of {n} items ({share:.0%}); the accuracy "
                          f"is mostly the share of {top} among the gold answers ({gold.get(top, 0) / n:.3f})")
    if at_chance:
        statements.append(f"at chance: the accuracy interval {accuracy['low']:.3f}-{accuracy['high']:.3f} reaches "
                          f"chance ({chance:.3f})")
    return {
        "predicted": predicted, "gold": gold,
        "entropy_bits": entropy_bits(predicted), "max_entropy_bits": math.log2(len(options)),
        "gold_entropy_bits": entropy_bits(gold),
        "total_variation_to_gold": total_variation(predicted, gold),
        "dominant_option": top, "dominant_share": share, "dominated": dominated,
        "chance": chance, "at_chance": at_chance, "statements": statements,
    }


def pride_prior(rotation_logprobs: Sequence[np.ndarray]) -> np.ndarray:
    """The position prior from items seen under all cyclic rotations.

    ``rotation_logprobs[j]`` is an (n rotations x n positions) array of item j's log-probabilities
    over positions, renormalised over the options, one row per rotation.
    """
    means = np.mean([np.asarray(block, dtype=np.float64).mean(axis=0) for block in rotation_logprobs], axis=0)
    shifted = np.exp(means - means.max())
    return shifted / shifted.sum()


def pride_predict(logprobs: np.ndarray, prior: np.ndarray) -> int:
    """argmax of P(position) / prior(position)."""
    return int(np.argmax(np.asarray(logprobs, dtype=np.float64) - np.log(prior)))


def batch_calibrated_predictions(loglikelihoods: np.ndarray) -> np.ndarray:
    """Predictions with the model's own option-position prior removed, estimated without labels.

    Batch Calibration (Zhou et al., ICLR 2024): the contextual prior of position ``y`` is the mean
    over the scored items of ``P(y | x)`` (the options' probabilities renormalised per item); the
    calibrated prediction is ``argmax_y log P(y | x) - log prior(y)``. It needs no rotations and no
    gold answers, so it can be read from any letter evaluation's stored option log-likelihoods. An
    accuracy gain that vanishes under it was the prior moving; one that stays was the content.

    ``loglikelihoods``: (items x options) raw option log-likelihoods, one row per item.
    """
    values = np.asarray(loglikelihoods, dtype=np.float64)
    logprobs = values - np.logaddexp.reduce(values, axis=1, keepdims=True)
    prior = np.exp(logprobs).mean(axis=0)
    return np.argmax(logprobs - np.log(prior), axis=1)
