"""Offline items of the four tasks, the evaluation/alignment split and the fixed --limit subsets."""

import importlib.util

import pytest

from pkt_core.evaluation import tasks as tasks_module
from pkt_core.evaluation.splits import (
    SplitError,
    alignment_items,
    alignment_pool,
    compact_split_record,
    evaluation_items,
    ids_digest,
    limit_subset,
    split_record,
)
from pkt_core.evaluation.tasks import MMLU_SUBJECTS, load_items
from pkt_core.offline_data import DataSourceError


@pytest.mark.parametrize("task,split,count", [
    ("mmlu", "test", 14042), ("mmlu", "dev", 285), ("mmlu", "validation", 1531),
    ("gsm8k", "test", 1319), ("mbpp", "test", 500), ("mbpp", "prompt", 3), ("humaneval", "test", 164),
])
def test_offline_items_have_the_published_sizes(task, split, count):
    items = load_items(task, split)
    assert len(items) == count
    assert len({item.item_id for item in items}) == count


def test_items_carry_the_fields_scoring_needs():
    mmlu = load_items("mmlu", "test")[0]
    assert mmlu.item_id == "abstract_algebra/test/0" and mmlu.subject == "abstract_algebra"
    assert len(mmlu.doc["choices"]) == 4 and mmlu.doc["answer"] in range(4)
    gsm8k = load_items("gsm8k", "test")[0]
    assert gsm8k.doc["answer"].endswith("#### 18") and gsm8k.doc["short_answer"] == "18"
    mbpp = load_items("mbpp", "test")[0]
    assert mbpp.item_id == "11" and len(mbpp.doc["test_list"]) == 3
    humaneval = load_items("humaneval", "test")[0]
    assert humaneval.item_id == "HumanEval/0" and humaneval.doc["entry_point"] == "has_close_elements"
    assert sorted({item.subject for item in load_items("mmlu", "dev")}) == list(MMLU_SUBJECTS)


@pytest.mark.parametrize("task", ["mmlu", "gsm8k", "mbpp", "humaneval"])
def test_alignment_pool_never_meets_evaluation_items(task):
    pool = alignment_pool(task)
    assert pool.items
    evaluated = evaluation_items(pool.items[0].task)  # HumanEval aligns on MBPP: check against MBPP's
    assert not set(pool.ids) & set(evaluated.ids)
    assert not set(pool.ids) & set(evaluation_items(task).ids)


def test_reserved_slices_are_the_last_test_items_and_recorded():
    gsm8k_pool = alignment_pool("gsm8k")
    assert gsm8k_pool.ids == [str(i) for i in range(1119, 1319)]
    assert evaluation_items("gsm8k").ids == [str(i) for i in range(1119)]
    assert len(evaluation_items("gsm8k", include_reserved=True).items) == 1319
    mbpp_pool = alignment_pool("mbpp")
    assert mbpp_pool.ids == ["2", "3", "4"] + [str(i) for i in range(383, 511)]
    assert evaluation_items("mbpp").ids == [str(i) for i in range(11, 383)]
    assert len(evaluation_items("humaneval").items) == 164  # nothing of HumanEval is held back
    record = split_record("gsm8k", evaluation_items("gsm8k"))
    assert record["alignment_pool"]["ids_digest"] == ids_digest(gsm8k_pool.ids)
    assert record["alignment_pool"]["count"] == len(gsm8k_pool.ids) and "ids" not in record["alignment_pool"]
    # A summary written with the id list compacts to exactly what is written now.
    old = {**record, "alignment_pool": {"rule": gsm8k_pool.rule, "count": len(gsm8k_pool.ids), "ids": gsm8k_pool.ids}}
    assert compact_split_record(old) == record and compact_split_record(record) == record
    assert record["evaluation"]["count"] == 1119


def test_alignment_samples_are_reproducible_and_bounded():
    first = alignment_items("mmlu", 32, seed=3)
    assert first.ids == alignment_items("mmlu", 32, seed=3).ids
    assert first.ids != alignment_items("mmlu", 32, seed=4).ids
    assert len(set(first.ids)) == 32 and all("/test/" not in item_id for item_id in first.ids)
    assert "seed 3" in first.rule
    with pytest.raises(SplitError, match="has 200 alignment samples"):
        alignment_items("gsm8k", 201)
    with pytest.raises(SplitError, match="at least one"):
        alignment_items("mbpp", 0)


def test_limit_keeps_the_first_items_of_every_mmlu_subject():
    subset = limit_subset(evaluation_items("mmlu"), 2)
    assert len(subset.items) == 2 * 57
    assert subset.ids[:2] == ["abstract_algebra/test/0", "abstract_algebra/test/1"]
    assert all(item_id.endswith(("/0", "/1")) for item_id in subset.ids)
    assert "first 2 per subject" in subset.rule
    assert limit_subset(evaluation_items("humaneval"), 5).ids == [f"HumanEval/{i}" for i in range(5)]
    with pytest.raises(SplitError, match="positive"):
        limit_subset(evaluation_items("gsm8k"), 0)


def test_bad_requests_say_what_to_do(monkeypatch):
    with pytest.raises(DataSourceError, match="unknown task 'arc'"):
        load_items("arc", "test")
    with pytest.raises(DataSourceError, match="no 'train' split offline.*source='hub'"):
        load_items("gsm8k", "train")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(tasks_module.importlib.util, "find_spec",
                        lambda name, *args: None if name == "datasets" else real_find_spec(name, *args))
    with pytest.raises(DataSourceError, match="needs the 'datasets' package"):
        load_items("gsm8k", "train", source="hub")
