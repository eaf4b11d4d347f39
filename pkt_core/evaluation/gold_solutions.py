"""Teacher-forced log-probability of a generation task's reference answer: a continuous measure for
HumanEval, MBPP and GSM8K that needs one forward pass per item instead of a generation.

==========  =====================================  ================================================
task        context                                continuation (the gold answer)
==========  =====================================  ================================================
humaneval   the problem's prompt                   ``canonical_solution``
mbpp        the task's prompt (shots, ``[BEGIN]``)  the reference ``code`` (as stored, ``\\r\\n`` kept)
gsm8k       ``Question: {question}\\nAnswer:``       `` {answer}``: the worked solution with ``#### N``
==========  =====================================  ================================================

Scored with the harness's boundary rule (trailing whitespace of the context moves onto the
continuation; see :mod:`pkt_core.evaluation.loglikelihood`). Recorded per item: the summed
log-probability, the number of continuation tokens and the mean per token; their sums differ
in length across items, so compare models item by item (paired), never across tasks.
"""

from __future__ import annotations

from collections.abc import Sequence

from pkt_core.evaluation.cache import ResultCache, variant_key
from pkt_core.evaluation.loglikelihood import LoglikelihoodRequest, loglikelihoods
from pkt_core.evaluation.prompts import PromptVariant, build_prompt
from pkt_core.evaluation.tasks import TaskItem
from pkt_core.models.loading import LoadedModel


def gold_continuation(item: TaskItem) -> str:
    doc = item.doc
    if item.task == "humaneval":
        return doc["canonical_solution"]
    if item.task == "mbpp":
        return doc["code"]
    return f" {doc['answer']}"


def gold_logprobs(
    loaded: LoadedModel, variant: PromptVariant, items: Sequence[TaskItem], settings: dict, fingerprint: str,
    cache: ResultCache | None, batch_size: int, progress=None,
) -> tuple[dict[str, dict], int]:
    """item id -> {gold_logprob, gold_tokens, gold_logprob_per_token}; and how many came from the cache."""
    key = variant_key(f"{variant.task}-gold-{variant.shots}shot", {**settings, "measure": "gold_logprob"})
    found = cache.get_many(fingerprint, variant.task, key, [item.item_id for item in items]) if cache else {}
    from_cache = len(found)
    todo = [item for item in items if item.item_id not in found]
    requests = [LoglikelihoodRequest(build_prompt(variant, item), gold_continuation(item)) for item in todo]
    results = loglikelihoods(loaded, requests, batch_size, progress=progress) if requests else []
    fresh = {item.item_id: {"gold_logprob": result.logprob, "gold_tokens": result.num_tokens,
                            "gold_logprob_per_token": result.logprob / result.num_tokens, "gold_greedy": result.is_greedy}
             for item, result in zip(todo, results)}
    if cache and fresh:
        cache.put_many(fingerprint, variant.task, key, fresh)
    return {**found, **fresh}, from_cache
