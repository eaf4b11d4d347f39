"""The labelled items a run's linear probe is fitted on, or why a run has none.

Items are evaluation items of the run's choice task (never alignment items: the splits keep the
two apart), spread over the set as the run's probes are (MMLU: round-robin over subjects, in file
order; ARC: evenly over the test set), with the gold option's index as the label. Each is asked
with the 0-shot letter prompt (question, lettered options, ``Answer:``): for MMLU exactly the
prompt of the run's probes and alignment samples (``task_samples.as_sample``), for ARC OLMES's
``arc_*:mc`` layout. The state that is probed is the one at the prompt's last token, the position
whose next-token prediction is the answer letter.

Generation tasks (GSM8K, HumanEval, MBPP) and ``--data`` runs have no option index to predict:
:func:`skip_reason` says so, and the run records it.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass

import numpy as np

from pkt_core.evaluation.formulations import Formulation, choice_question
from pkt_core.evaluation.tasks import CHOICE_TASKS
from pkt_core.transfer.task_samples import _probe_items as spread_evaluation_items

LABEL_MEANING = "gold option index (0 = A)"
PROMPT_FORMAT = "0-shot letter prompt (question, lettered options, 'Answer:')"


@dataclass(frozen=True)
class ProbeItems:
    """Prompts and integer labels, in a fixed order, with the rule that chose them."""

    task: str
    item_ids: tuple[str, ...]
    prompts: tuple[str, ...]
    labels: np.ndarray  # int64, one per item
    rule: str

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def digest(self) -> str:
        """Identifies the item set (ids, prompts and labels): the key of cached states."""
        blob = json.dumps([self.task, list(self.item_ids), list(self.prompts), self.labels.tolist()])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def skip_reason(task: str | None, data_file: str | None, count: int) -> str | None:
    """Why a run with this task or data file and ``count`` probe items has no linear probe; None if it has one."""
    if count == 0:
        return "switched off (linear_probe_items = 0, `pkt transfer --probe-items 0`)"
    if data_file is not None or task is None:
        return ("a --data run: the file's answers are free text, not the index of one of a few options, so there is "
                f"no label for a linear probe to predict (it runs for the choice tasks: {', '.join(CHOICE_TASKS)})")
    if task not in CHOICE_TASKS:
        return (f"{task} is a generation task: its gold answer is free text or a program, not one of a few options, "
                f"so there is no label for a linear probe to predict (it runs for the choice tasks: "
                f"{', '.join(CHOICE_TASKS)})")
    return None


def probe_items(task: str, count: int) -> ProbeItems:
    """``count`` labelled evaluation items of the choice task ``task`` (fewer when the set is smaller).

    A label held by a single item cannot be cross-validated: such items (an ARC question with a
    rare fifth option) are left out, and the rule says how many."""
    if task not in CHOICE_TASKS:
        raise ValueError(f"{task} is not a choice task ({', '.join(CHOICE_TASKS)})")
    if count < 1:
        raise ValueError(f"ask for at least one probe item, not {count}")
    items = spread_evaluation_items(task, count)
    counts = Counter(int(item.doc["answer"]) for item in items)
    kept = [item for item in items if counts[int(item.doc["answer"])] >= 2]
    formulation = Formulation(task, "mc", 0)
    spread = "round-robin over subjects in file order" if task == "mmlu" else "evenly spaced over the test set"
    rule = f"{len(kept)} {task} evaluation items, {spread}"
    if len(kept) < len(items):
        rule += f"; {len(items) - len(kept)} left out (a label held by one item only)"
    return ProbeItems(task, tuple(item.item_id for item in kept),
                      tuple(choice_question(formulation, item).context for item in kept),
                      np.array([int(item.doc["answer"]) for item in kept], dtype=np.int64), rule)
