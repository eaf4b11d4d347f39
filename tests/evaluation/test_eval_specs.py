"""Evaluation specs: the grammar, the key each evaluation is stored under, what a plain task keeps
meaning, and the refusals (duplicates, formulations a task does not have)."""

from __future__ import annotations

import dataclasses

import pytest

from pkt_core.evaluation.settings import EvalSettings
from pkt_core.evaluation.specs import (
    EvalSpec,
    EvalSpecError,
    described_identity,
    formulation_title,
    parse_eval_spec,
    parse_eval_specs,
    specs_in_formulations,
    task_of_key,
)
from pkt_core.evaluation.tasks import EVAL_TASKS


@pytest.mark.parametrize("text, spec, key, canonical", [
    ("mmlu", EvalSpec("mmlu"), "mmlu", "mmlu"),
    ("mmlu:rc@1", EvalSpec("mmlu", "rc", False, 1), "mmlu-rc", "mmlu:rc@1"),
    ("mmlu:mc", EvalSpec("mmlu", "mc"), "mmlu-mc", "mmlu:mc"),
    ("arc_easy:mc+circular", EvalSpec("arc_easy", "mc", True), "arc_easy-mc-circular", "arc_easy:mc+circular"),
    # CircularEval rotates letters: alone it means the letter formulation.
    ("arc_challenge+circular@7", EvalSpec("arc_challenge", "mc", True, 7), "arc_challenge-mc-circular",
     "arc_challenge:mc+circular@7"),
    (" humaneval@40 ", EvalSpec("humaneval", None, False, 40), "humaneval", "humaneval@40"),
])
def test_a_spec_reads_into_its_parts_key_and_canonical_text(text, spec, key, canonical):
    parsed = parse_eval_spec(text)
    assert parsed == spec and parsed.key == key and parsed.text == canonical
    assert parse_eval_spec(parsed.text) == parsed  # the canonical text reads back to the same spec
    assert task_of_key(parsed.key) == spec.task


@pytest.mark.parametrize("run_wide", [
    EvalSettings(), EvalSettings(formulation="rc"), EvalSettings(formulation="mc", circular=True, shots=5),
    EvalSettings(sample=30, seed=3, prior_items=0),
])
@pytest.mark.parametrize("task", EVAL_TASKS)
def test_a_plain_task_is_scored_exactly_as_the_run_wide_settings_always_scored_it(task, run_wide):
    if task.startswith("arc") and run_wide.circular and run_wide.formulation is None:
        pytest.skip("not a valid combination")
    assert parse_eval_spec(task).options(run_wide, 5) == run_wide.options_for(task, 5)


def test_a_formulation_in_the_spec_replaces_the_run_wide_one_and_keeps_the_rest():
    run_wide = EvalSettings(formulation="rc", circular=False, shots=5, sample=12, seed=4, prior_items=9)
    letters = parse_eval_spec("mmlu:mc").options(run_wide, 2)
    assert (letters.formulation, letters.circular, letters.shots, letters.sample, letters.seed,
            letters.prior_items, letters.limit) == ("mc", False, 5, 12, 4, 9, 2)
    # mmlu:mc is letters without CircularEval, whatever --eval-circular says.
    circular_run = dataclasses.replace(run_wide, formulation="mc", circular=True)
    assert parse_eval_spec("mmlu:mc").options(circular_run).circular is False
    assert parse_eval_spec("mmlu").options(circular_run).circular is True
    # @N replaces the run-wide limit for that evaluation only.
    assert parse_eval_spec("mmlu:rc@1").options(run_wide, 5).limit == 1
    assert parse_eval_spec("mmlu:rc").options(run_wide, 5).limit == 5


def test_several_evaluations_of_one_task_get_one_key_each_in_the_order_given():
    specs = parse_eval_specs(["mmlu", "mmlu:rc@1", "mmlu:mc+circular", "arc_easy", "arc_easy:mc", "gsm8k"])
    assert [spec.key for spec in specs] == ["mmlu", "mmlu-rc", "mmlu-mc-circular", "arc_easy", "arc_easy-mc", "gsm8k"]
    assert [spec.identity(EvalSettings()) for spec in specs] == [
        ("mmlu", "mc", False), ("mmlu", "rc", False), ("mmlu", "mc", True), ("arc_easy", "rc", False),
        ("arc_easy", "mc", False), ("gsm8k", None, False)]


@pytest.mark.parametrize("texts, run_wide, message", [
    (["mmlu", "mmlu:mc"], {}, "mmlu and mmlu:mc both ask for mmlu \\(letters\\)"),
    (["mmlu", "mmlu:rc"], {"formulation": "rc"}, "both ask for mmlu \\(cloze\\)"),
    (["arc_easy", "arc_easy:rc@3"], {}, "both ask for arc_easy \\(cloze\\)"),
    (["mmlu@1", "mmlu@5"], {}, "keep one"),
    (["gsm8k:rc"], {}, "gsm8k has no formulations"),
    (["arc_easy:rc+circular"], {}, "Write mc\\+circular"),
    (["arc_easy"], {"circular": True}, "arc_easy: CircularEval"),  # ARC's default is cloze: refused before work
    (["mmlu:letters"], {}, "unknown formulation 'letters'"),
    (["mmlu@0"], {}, "at least 1"),
    (["mmlu@many"], {}, "cannot read the evaluation spec"),
    (["squad"], {}, "unknown evaluation task 'squad'"),
])
def test_bad_or_duplicate_specs_are_refused_naming_what_is_wrong(texts, run_wide, message):
    with pytest.raises(EvalSpecError, match=message):
        parse_eval_specs(texts, run_wide)


def test_the_same_formulation_twice_is_fine_once_the_run_wide_setting_differs():
    # Plain mmlu under --eval-formulation rc is the cloze evaluation; mmlu:mc is then a second one.
    specs = parse_eval_specs(["mmlu", "mmlu:mc"], {"formulation": "rc"})
    assert [spec.identity(EvalSettings(formulation="rc")) for spec in specs] == [("mmlu", "rc", False),
                                                                                  ("mmlu", "mc", False)]


def test_keys_name_their_task_and_unknown_keys_are_refused():
    for task in EVAL_TASKS:
        assert task_of_key(task) == task
    assert task_of_key("arc_challenge-mc-circular") == "arc_challenge"
    with pytest.raises(EvalSpecError, match="names no task"):
        task_of_key("squad-rc")


def test_a_form_asks_every_choice_task_in_each_formulation_and_the_default_stays_plain():
    assert specs_in_formulations(["mmlu", "humaneval", "arc_easy"], ["mc", "rc", "mc+circular"]) == [
        "mmlu", "mmlu:rc", "mmlu:mc+circular", "humaneval", "arc_easy:mc", "arc_easy", "arc_easy:mc+circular"]
    assert specs_in_formulations(["mmlu", "gsm8k"], []) == ["mmlu", "gsm8k"]
    with pytest.raises(EvalSpecError, match="unknown formulations"):
        specs_in_formulations(["mmlu"], ["cloze"])
    # What the form writes is a valid spec list.
    parse_eval_specs(specs_in_formulations(["mmlu", "arc_challenge"], ["rc", "mc+circular"]))


def test_stored_formulation_records_read_back_to_what_was_asked():
    assert described_identity("mmlu", {"name": "rc", "circular": False, "shots": 0}) == ("rc", False)
    assert described_identity("arc_easy", {"name": "mc", "circular": True}) == ("mc", True)
    assert described_identity("mmlu", None) == ("mc", False)  # runs from before formulations were recorded
    assert described_identity("arc_easy", None) == ("rc", False)
    assert described_identity("humaneval", None) == (None, False)
    assert formulation_title("rc") == "cloze" and formulation_title("mc", True, 5) == "letters, CircularEval, 5-shot"
    assert formulation_title(None) == "as scored"
