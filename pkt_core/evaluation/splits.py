"""Which items are evaluated, which may be used for alignment, and the fixed ``--limit`` subset.

Alignment or training samples never come from evaluation items. Where each comes from:

========== ============================================ =============================================
task       evaluated (offline)                          alignment pool (offline)
========== ============================================ =============================================
mmlu       test (14,042)                                dev + validation (285 + 1,531)
gsm8k      test minus the reserved slice: ids 0-1118    reserved slice: the last 200 test items
                                                        (ids 1119-1318); the files hold no train split
mbpp       test minus the reserved slice: ids 11-382    prompt split (ids 2-4) + the last 128 test
                                                        items (ids 383-510); the files hold no train
humaneval  test (164)                                   the MBPP pool above: HumanEval has only its
                                                        164 test problems and all are evaluated
arc_*      test (2,376 Easy, 1,172 Challenge)           validation (570, 299); ARC is evaluation-only
========== ============================================ =============================================

With ``source="hub"`` the real training splits exist, so nothing is reserved: GSM8K aligns on
train, MBPP and HumanEval on MBPP prompt + train + validation, and the full test sets are evaluated.
``include_reserved=True`` evaluates the full offline test sets (comparable with published numbers)
but is only sound for a model that was not aligned on the reserved slice; the run records it.

``--limit N`` keeps a fixed subset: for MMLU the first N items of every subject (file order), for
the other tasks the first N evaluation items. No randomness, so two runs with the same N see the
same items, and the ids are recorded with the results.

``--sample N`` keeps N items drawn with a seed instead (MMLU: round-robin over subjects, so
every subject is represented before any gets a second item). Use it where the first items of
a file are not representative, or to spread a fixed budget over a whole test set: a continuous
measure (gold log-probability) has a per-item spread that often gives a useful interval from a
few hundred items, where an accuracy difference needs thousands.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from pkt_core.evaluation.tasks import TaskItem, check_task, load_items
from pkt_core.offline_data import DataSourceError

RESERVED_FOR_ALIGNMENT = {"gsm8k": 200, "mbpp": 128}  # the last N test items, in file order
EVALUATION_SPLIT = {"mmlu": "test", "gsm8k": "test", "mbpp": "test", "humaneval": "test", "arc_easy": "test",
                    "arc_challenge": "test"}


class SplitError(DataSourceError):
    """A split or subset request cannot be met (too many samples asked, overlap found, ...)."""


@dataclass(frozen=True)
class ItemSubset:
    """Items plus the rule that chose them, so a run can say exactly what it scored."""

    items: tuple[TaskItem, ...]
    rule: str

    @property
    def ids(self) -> list[str]:
        return [item.item_id for item in self.items]


def _reserved_slice(task: str, source: str) -> tuple[TaskItem, ...]:
    if source != "offline" or task not in RESERVED_FOR_ALIGNMENT:
        return ()
    return load_items(task, "test", source)[-RESERVED_FOR_ALIGNMENT[task]:]


def evaluation_items(task: str, source: str = "offline", include_reserved: bool = False) -> ItemSubset:
    """The items a benchmark number is computed on (before any ``--limit``)."""
    check_task(task)
    items = load_items(task, EVALUATION_SPLIT[task], source)
    reserved = {item.item_id for item in _reserved_slice(task, source)}
    if reserved and not include_reserved:
        items = tuple(item for item in items if item.item_id not in reserved)
        rule = f"{task} test without the {len(reserved)} items reserved for alignment"
    else:
        rule = f"{task} test, all items" + (" (reserved alignment slice included)" if reserved else "")
    return ItemSubset(items, f"{rule} ({source})")


def alignment_pool(task: str, source: str = "offline") -> ItemSubset:
    """Every item alignment may draw from; disjoint from :func:`evaluation_items` of the same task."""
    check_task(task)
    if task == "mmlu":
        items = load_items("mmlu", "dev", source) + load_items("mmlu", "validation", source)
        return ItemSubset(items, f"mmlu dev + validation ({source})")
    if task in ("arc_easy", "arc_challenge"):
        return ItemSubset(load_items(task, "validation", source), f"{task} validation ({source})")
    if task == "gsm8k":
        if source == "hub":
            return ItemSubset(load_items("gsm8k", "train", source), "gsm8k train (hub)")
        return ItemSubset(_reserved_slice("gsm8k", source), "gsm8k reserved slice: last 200 test items (offline)")
    # MBPP and HumanEval both align on MBPP's non-evaluated items.
    if source == "hub":
        items = tuple(item for split in ("prompt", "train", "validation") for item in load_items("mbpp", split, source))
        return ItemSubset(items, "mbpp prompt + train + validation (hub)")
    items = load_items("mbpp", "prompt", source) + _reserved_slice("mbpp", source)
    return ItemSubset(items, "mbpp prompt split (ids 2-4) + reserved slice: last 128 test items (offline)")


def alignment_items(task: str, n: int, seed: int = 0, source: str = "offline") -> ItemSubset:
    """``n`` alignment samples drawn without replacement from the pool, reproducibly from ``seed``."""
    if n < 1:
        raise SplitError(f"ask for at least one alignment sample, not {n}")
    pool = alignment_pool(task, source)
    if n > len(pool.items):
        raise SplitError(
            f"{task} has {len(pool.items)} alignment samples ({pool.rule}); ask for at most that many"
            + (" or use source='hub' for the full training split" if source == "offline" else "") + "."
        )
    # A guard on the tables above: the pool must not meet the evaluated items of the task it is
    # drawn from (for HumanEval that is MBPP, whose evaluation would otherwise see trained items).
    evaluated = set(evaluation_items(pool.items[0].task, source).ids)
    overlap = evaluated & set(pool.ids)
    if overlap:
        raise SplitError(f"alignment pool of {task} overlaps its evaluation items: {sorted(overlap)[:5]}")
    order = np.random.default_rng(seed).permutation(len(pool.items))[:n]
    return ItemSubset(tuple(pool.items[index] for index in order),
                      f"{n} drawn with seed {seed} from {pool.rule}")


def limit_subset(subset: ItemSubset, limit: int | None) -> ItemSubset:
    """The fixed subset for ``--limit``: first ``limit`` per MMLU subject, else the first ``limit`` items."""
    if limit is None:
        return subset
    if limit < 1:
        raise SplitError(f"--limit must be a positive number of items, not {limit}")
    if subset.items and subset.items[0].task == "mmlu":
        taken: dict[str, int] = {}
        kept = []
        for item in subset.items:
            if taken.get(item.subject, 0) < limit:
                taken[item.subject] = taken.get(item.subject, 0) + 1
                kept.append(item)
        return ItemSubset(tuple(kept), f"{subset.rule}; first {limit} per subject in file order")
    return ItemSubset(subset.items[:limit], f"{subset.rule}; first {limit} in file order")


def sample_subset(subset: ItemSubset, count: int | None, seed: int = 0) -> ItemSubset:
    """``count`` items drawn with ``seed``, kept in file order; MMLU round-robin over subjects (each subject's
    items shuffled with the seed, then one per subject per round), so subjects stay balanced."""
    if count is None:
        return subset
    if count < 1:
        raise SplitError(f"--sample must be a positive number of items, not {count}")
    rng = np.random.default_rng(seed)
    if subset.items and subset.items[0].task == "mmlu":
        groups: dict[str, list[int]] = {}
        for index, item in enumerate(subset.items):
            groups.setdefault(item.subject, []).append(index)
        queues = [list(rng.permutation(indices)) for _, indices in sorted(groups.items())]
        chosen: list[int] = []
        while len(chosen) < min(count, len(subset.items)):
            for queue in queues:
                if queue and len(chosen) < count:
                    chosen.append(int(queue.pop(0)))
    else:
        chosen = [int(index) for index in rng.permutation(len(subset.items))[:count]]
    kept = tuple(subset.items[index] for index in sorted(chosen))
    how = "round-robin over subjects" if subset.items and subset.items[0].task == "mmlu" else "uniformly"
    return ItemSubset(kept, f"{subset.rule}; {len(kept)} drawn {how} with seed {seed}, in file order")


def ids_digest(ids: list[str]) -> str:
    """A short digest of an id list: two runs on the same items have the same digest."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def split_record(task: str, evaluated: ItemSubset, source: str = "offline") -> dict:
    """What a run stores about its splits: rule, count and digest of the evaluated ids and of the
    alignment pool's (the pool follows from its rule; listing its 1,816 MMLU ids in every summary
    took 61 KB of each)."""
    pool = alignment_pool(task, source)
    return {
        "evaluation": {"rule": evaluated.rule, "count": len(evaluated.items), "ids_digest": ids_digest(evaluated.ids)},
        "alignment_pool": {"rule": pool.rule, "count": len(pool.items), "ids_digest": ids_digest(pool.ids)},
    }


def compact_split_record(splits: dict) -> dict:
    """A split record as :func:`split_record` writes it now: an id list stored by summaries written
    before becomes its digest (same ids, same digest); anything else is kept as it is."""
    compacted = {}
    for name, part in splits.items():
        if isinstance(part, dict) and isinstance(part.get("ids"), list):
            part = {key: value for key, value in part.items() if key != "ids"} | {"ids_digest": ids_digest(part["ids"])}
        compacted[name] = part
    return compacted
