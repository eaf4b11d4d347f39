"""Choice tasks (MMLU, ARC) under a formulation: option log-likelihoods, cached per rotation, and the
per-item records, CircularEval and PriDe built from them.

The unit scored and cached is one item under one rotation of its options in one formulation
(key: model fingerprint, task, item id, and a variant naming formulation, shots and rotation):
the option log-likelihoods. Everything else (predictions, CircularEval, the PriDe prior, gold
log-probabilities) is derived from those units, so turning CircularEval on, or estimating the
prior from other items, re-uses every unit already scored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from pkt_core.evaluation.cache import ResultCache, variant_key
from pkt_core.evaluation.diagnostics import answer_format, pride_predict, pride_prior
from pkt_core.evaluation.formulations import LETTERS, Formulation, choice_question
from pkt_core.evaluation.loglikelihood import LoglikelihoodRequest, loglikelihoods
from pkt_core.evaluation.metrics import bootstrap_interval
from pkt_core.evaluation.tasks import TaskItem
from pkt_core.models.loading import LoadedModel

PRIDE_SHARE = 0.05  # PriDe's default estimation budget: 5% of the test items
PRIDE_MIN_ITEMS = 8
PRIDE_SEED = 0
ProgressCallback = Callable[[int, int], None]


def pride_estimation_ids(items: Sequence[TaskItem], count: int | None) -> list[str]:
    """The items whose rotations estimate the prior: ``count`` (default 5%, at least 8) drawn with a fixed seed."""
    if count is None:
        count = max(PRIDE_MIN_ITEMS, math.ceil(PRIDE_SHARE * len(items)))
    count = min(count, len(items) - 1)  # leave at least one item to correct
    if count < 1:
        return []
    order = np.random.default_rng(PRIDE_SEED).permutation(len(items))[:count]
    return [items[index].item_id for index in sorted(order)]


def rotations_needed(formulation: Formulation, items: Sequence[TaskItem], estimation: set[str]) -> list[tuple[TaskItem, int]]:
    units = []
    for item in items:
        every = formulation.name == "mc" and (formulation.circular or item.item_id in estimation)
        rotations = range(len(item.doc["choices"])) if every else (0,)
        units += [(item, rotation) for rotation in rotations]
    return units


def unit_variant(formulation: Formulation, rotation: int, settings: dict) -> str:
    return variant_key(f"{formulation.task}-{formulation.name}-{formulation.shots}shot-rot{rotation}",
                       {**settings, "formulation": formulation.name, "shots": formulation.shots, "rotation": rotation})


def score_units(
    loaded: LoadedModel, formulation: Formulation, units: Sequence[tuple[TaskItem, int]], settings: dict,
    fingerprint: str, cache: ResultCache | None, batch_size: int, progress: ProgressCallback | None = None,
) -> tuple[dict[tuple[str, int], dict], set[tuple[str, int]]]:
    """Option log-likelihoods of every (item, rotation); returns them and the units that came from the cache."""
    found: dict[tuple[str, int], dict] = {}
    by_rotation: dict[int, list[TaskItem]] = {}
    for item, rotation in units:
        by_rotation.setdefault(rotation, []).append(item)
    for rotation, rotation_items in by_rotation.items():
        key = unit_variant(formulation, rotation, settings)
        cached = cache.get_many(fingerprint, formulation.task, key, [i.item_id for i in rotation_items]) if cache else {}
        found.update({(item_id, rotation): record for item_id, record in cached.items()})
    from_cache = set(found)
    todo = [(item, rotation) for item, rotation in units if (item.item_id, rotation) not in found]
    questions = [choice_question(formulation, item, rotation) for item, rotation in todo]
    requests = [LoglikelihoodRequest(q.context, continuation) for q in questions for continuation in q.continuations]
    results = loglikelihoods(loaded, requests, batch_size, progress=progress) if requests else []
    fresh: dict[int, dict[str, dict]] = {}
    position = 0
    for (item, rotation), question in zip(todo, questions):
        scored = results[position:position + len(question.continuations)]
        position += len(question.continuations)
        record = {"prompt": question.context, "order": list(question.order),
                  "continuations": list(question.continuations), "answer_texts": list(question.answer_texts),
                  "loglikelihoods": [r.logprob for r in scored], "is_greedy": [r.is_greedy for r in scored],
                  "num_tokens": [r.num_tokens for r in scored]}
        found[(item.item_id, rotation)] = record
        fresh.setdefault(rotation, {})[item.item_id] = record
    if cache:
        for rotation, records in fresh.items():
            cache.put_many(fingerprint, formulation.task, unit_variant(formulation, rotation, settings), records)
    return found, from_cache


def _log_softmax(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return array - (array.max() + np.log(np.exp(array - array.max()).sum()))


def _position_logprobs(unit: dict) -> np.ndarray:
    return _log_softmax(unit["loglikelihoods"])


def _ranked(formulation: Formulation, unit: dict) -> tuple[int, int]:
    """(raw argmax, per-character argmax) positions, as lm-eval's acc and acc_norm."""
    lls = np.asarray(unit["loglikelihoods"], dtype=np.float64)
    lengths = np.asarray([float(len(text)) for text in unit["answer_texts"]])
    return int(np.argmax(lls)), int(np.argmax(lls / lengths))


def estimate_prior(units: dict[tuple[str, int], dict], estimation: Sequence[TaskItem]) -> dict[int, np.ndarray]:
    """PriDe's prior per option count (ARC mixes 3-, 4- and 5-option items)."""
    blocks: dict[int, list[np.ndarray]] = {}
    for item in estimation:
        count = len(item.doc["choices"])
        blocks.setdefault(count, []).append(np.stack([_position_logprobs(units[(item.item_id, r)]) for r in range(count)]))
    return {count: pride_prior(rows) for count, rows in blocks.items()}


def item_records(formulation: Formulation, items: Sequence[TaskItem], units: dict[tuple[str, int], dict],
                 estimation: set[str], priors: dict[int, np.ndarray], base: Callable[[TaskItem, str], dict]) -> dict[str, dict]:
    records = {}
    for item in items:
        unit = units[(item.item_id, 0)]
        gold = item.doc["answer"]
        raw, norm = _ranked(formulation, unit)
        chosen = raw if formulation.name == "mc" else norm
        logprobs = _position_logprobs(unit)
        lls = np.asarray(unit["loglikelihoods"], dtype=np.float64)
        correct = chosen == gold
        gold_logprob = float(logprobs[gold]) if formulation.name == "mc" else float(lls[gold])
        details = {
            "formulation": formulation.label, "loglikelihoods": unit["loglikelihoods"], "is_greedy": unit["is_greedy"],
            "num_tokens": unit["num_tokens"], "acc": float(raw == gold), "acc_norm": float(norm == gold),
            "prediction_raw": LETTERS[raw], "prediction_norm": LETTERS[norm],
            "gold_logprob_per_token": float(lls[gold] / unit["num_tokens"][gold]),
            "gold_logprob_per_char": float(lls[gold] / len(unit["answer_texts"][gold])),
            "option_probabilities": [float(p) for p in np.exp(logprobs)],
        }
        if formulation.circular:
            rotations = []
            for rotation in range(len(item.doc["choices"])):
                rotated = units[(item.item_id, rotation)]
                position = _ranked(formulation, rotated)[0]
                rotations.append(LETTERS[rotated["order"][position]])  # the original option it picked
            details["circular_predictions"] = rotations
            details["circular"] = float(all(letter == LETTERS[gold] for letter in rotations))
        if formulation.name == "mc" and len(item.doc["choices"]) in priors:
            details["pride_estimation_item"] = item.item_id in estimation
            if item.item_id not in estimation:
                debiased = pride_predict(logprobs, priors[len(item.doc["choices"])])
                details["pride_prediction"] = LETTERS[debiased]
                details["pride"] = float(debiased == gold)
        records[item.item_id] = {
            **base(item, unit["prompt"]), "target": LETTERS[gold], "formulation": formulation.label,
            "prediction": LETTERS[chosen], "score": float(correct), "outcome": "correct" if correct else "incorrect",
            "gold_logprob": gold_logprob, "gold_prob": float(np.exp(logprobs[gold])), "details": details,
        }
    return records


def choice_metrics(formulation: Formulation, rows: Sequence[dict]) -> dict:
    details = [row["details"] for row in rows]
    metrics = {
        "acc": bootstrap_interval([d["acc"] for d in details]).as_dict(),
        "acc_norm": bootstrap_interval([d["acc_norm"] for d in details]).as_dict(),
        "gold_logprob": bootstrap_interval([row["gold_logprob"] for row in rows]).as_dict(),
        "gold_prob": bootstrap_interval([row["gold_prob"] for row in rows]).as_dict(),
    }
    if formulation.name == "rc":
        metrics["gold_logprob_per_char"] = bootstrap_interval([d["gold_logprob_per_char"] for d in details]).as_dict()
    if formulation.circular:
        metrics["acc_circular"] = bootstrap_interval([d["circular"] for d in details]).as_dict()
    corrected = [(d["pride"], d["acc"]) for d in details if "pride" in d]
    if corrected:
        metrics["acc_pride"] = bootstrap_interval([pair[0] for pair in corrected]).as_dict()
        # The raw accuracy on the same items, so the two are compared on one footing.
        metrics["acc_on_pride_items"] = bootstrap_interval([pair[1] for pair in corrected]).as_dict()
    return metrics


def choice_diagnostics(formulation: Formulation, items: Sequence[TaskItem], rows: Sequence[dict],
                       metrics: dict, priors: dict[int, np.ndarray], estimation: Sequence[str]) -> dict:
    """Summary blocks: ``answer_format`` (raw and, where computed, PriDe-corrected) and ``prior_correction``."""
    count = max(len(item.doc["choices"]) for item in items)
    options = list(LETTERS[:count])
    chance = float(np.mean([1 / len(item.doc["choices"]) for item in items]))
    golds = [row["target"] for row in rows]
    blocks = {"answer_format": answer_format([row["prediction"] for row in rows], golds, options,
                                             metrics["acc"] if formulation.name == "mc" else metrics["acc_norm"], chance)}
    if formulation.name == "rc":
        blocks["answer_format"]["note"] = ("cloze: no letters are shown; the distribution is over the options' "
                                           "positions in the data set")
    if formulation.circular:
        blocks["answer_format"]["circular_chance"] = float(np.mean([(1 / len(i.doc["choices"])) ** len(i.doc["choices"])
                                                                   for i in items]))
    if priors:
        held = [row for row in rows if "pride_prediction" in row["details"]]
        blocks["prior_correction"] = {
            "method": "PriDe (Zheng et al., ICLR 2024): prior = softmax of the mean log-probability per position "
                      "over every cyclic rotation of the estimation items; prediction = argmax P / prior",
            "estimation_items": len(estimation), "estimation_rule": f"{len(estimation)} items drawn with seed "
            f"{PRIDE_SEED} (default {PRIDE_SHARE:.0%} of the subset, at least {PRIDE_MIN_ITEMS})",
            "estimation_ids": list(estimation),
            "prior": {str(n): {LETTERS[i]: float(p) for i, p in enumerate(prior)} for n, prior in priors.items()},
            "corrected_items": len(held),
            "answer_format": answer_format([row["details"]["pride_prediction"] for row in held],
                                           [row["target"] for row in held], options, metrics["acc_pride"], chance),
        }
    return blocks
