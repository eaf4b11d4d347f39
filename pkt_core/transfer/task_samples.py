"""Alignment samples and probe prompts for a named task, kept apart from each other.

Alignment samples come from the task's alignment pool (never from its evaluation items: see
:mod:`pkt_core.evaluation.splits`); the probe set (used only to look at activations:
projections and CKA) comes from evaluation items and is never trained on.

Each sample is asked as the evaluation asks the task, 0-shot, and answered with what it scores:
MMLU the letter prompt and `` <gold letter>``; ARC the cloze prompt its default (rc) evaluation
scores, ``Question: {question}\nAnswer:`` and `` <gold answer text>`` (built by the evaluation's
own :func:`~pkt_core.evaluation.formulations.choice_question`, so the two cannot drift apart);
GSM8K, HumanEval and MBPP the harness prompt and the gold solution.
"""

from __future__ import annotations

from pkt_core.evaluation.formulations import DEFAULT_FORMULATION, Formulation, choice_question
from pkt_core.evaluation.prompts import (
    MMLU_CHOICE_LETTERS,
    build_prompt,
    prompt_variant,
)
from pkt_core.evaluation.splits import alignment_items, evaluation_items
from pkt_core.evaluation.tasks import ARC_TASKS, TaskItem
from pkt_core.transfer.alignment_data import (
    AlignmentSample,
    samples_from_file,
    take_samples,
)


def arc_cloze_question(item: TaskItem):
    """The 0-shot question ARC's default evaluation (OLMES ``arc_*`` rc) scores: context and continuations."""
    return choice_question(Formulation(item.task, DEFAULT_FORMULATION[item.task]), item)


def alignment_prompt(item: TaskItem) -> str:
    """The 0-shot prompt: the answer follows the question directly."""
    if item.task in ARC_TASKS:
        return arc_cloze_question(item).context
    return build_prompt(prompt_variant(item.task, shots=0), item)


def alignment_answer(item: TaskItem) -> str:
    """What the model should continue the prompt with, in the format the evaluation scores."""
    doc = item.doc
    if item.task in ARC_TASKS:
        question = arc_cloze_question(item)
        return question.continuations[question.gold_position]
    if item.task == "mmlu":
        return " " + MMLU_CHOICE_LETTERS[doc["answer"]]
    if item.task == "gsm8k":
        return " " + doc["answer"]
    if item.task == "mbpp":
        return doc["code"].replace("\r\n", "\n") + "\n[DONE]"
    return doc["canonical_solution"]


def as_sample(item: TaskItem, with_answer: bool = True) -> AlignmentSample:
    label = item.subject or item.task
    return AlignmentSample(item.item_id, alignment_prompt(item), alignment_answer(item) if with_answer else "", label)


def _probe_items(task: str, count: int) -> list[TaskItem]:
    """Spread over the evaluation items (for MMLU: round-robin over subjects), fixed order."""
    items = list(evaluation_items(task).items)
    if task != "mmlu":
        step = max(1, len(items) // max(1, count))
        return items[::step][:count]
    by_subject: dict[str, list[TaskItem]] = {}
    for item in items:
        by_subject.setdefault(item.subject, []).append(item)
    chosen: list[TaskItem] = []
    depth = 0
    while len(chosen) < count and any(depth < len(v) for v in by_subject.values()):
        for subject in sorted(by_subject):
            if depth < len(by_subject[subject]) and len(chosen) < count:
                chosen.append(by_subject[subject][depth])
        depth += 1
    return chosen


def load_alignment_and_probes(
    task: str | None, data_file: str | None, align_count: int, probe_count: int, seed: int
) -> tuple[list[AlignmentSample], list[AlignmentSample], str]:
    if data_file is not None:
        everything = samples_from_file(data_file)
        alignment = take_samples(everything, align_count, seed)
        chosen = {s.sample_id for s in alignment}
        rest = [s for s in everything if s.sample_id not in chosen]
        probes = rest[:probe_count] if rest else alignment[:probe_count]
        note = "probes are held-out samples of the file" if rest else "probes reuse alignment samples (file too small)"
        return alignment, probes, f"file {data_file}; {note}"
    assert task is not None
    drawn = alignment_items(task, align_count, seed)
    alignment = [as_sample(item) for item in drawn.items]
    probes = [as_sample(item) for item in _probe_items(task, probe_count)]
    description = f"{task}: alignment {drawn.rule}; probes: {len(probes)} evaluation items spread over the set"
    return alignment, probes, description
