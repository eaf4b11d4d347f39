"""Harness prompt formats, GSM8K answer extraction and the programs built for HumanEval and MBPP."""

import pytest

from pkt_core.evaluation.extraction import (
    INVALID_ANSWER,
    extract_code_block,
    gsm8k_exact_match,
    gsm8k_flexible_answer,
    gsm8k_strict_answer,
    humaneval_program,
    mbpp_program,
)
from pkt_core.evaluation.prompts import (
    build_prompt,
    mmlu_continuations,
    mmlu_prompt,
    prompt_variant,
)
from pkt_core.evaluation.tasks import load_items
from pkt_core.offline_data import DataSourceError


def test_mmlu_zero_shot_is_the_harness_prompt_and_letters_carry_the_delimiter():
    item = load_items("mmlu", "test")[0]
    assert build_prompt(prompt_variant("mmlu"), item) == mmlu_prompt(
        item.doc["question"], item.doc["choices"], "abstract_algebra")
    assert mmlu_continuations() == [" A", " B", " C", " D"]


def test_mmlu_five_shot_prepends_the_first_dev_items_with_their_answers():
    item = load_items("mmlu", "test")[0]
    dev = [example for example in load_items("mmlu", "dev") if example.subject == "abstract_algebra"][:5]
    prompt = build_prompt(prompt_variant("mmlu", shots=5), item)
    header = "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
    assert prompt.startswith(header) and prompt.count(header) == 1
    blocks = prompt[len(header):].split("\n\n")
    assert len(blocks) == 6  # five solved examples, then the question
    for block, example in zip(blocks, dev):
        assert block.startswith(example.doc["question"].strip())
        assert block.endswith(f"Answer: {'ABCD'[example.doc['answer']]}")
    assert blocks[-1] == mmlu_prompt(item.doc["question"], item.doc["choices"], "abstract_algebra")[len(header):]


def test_generation_prompts_and_stops_follow_the_harness():
    gsm8k = load_items("gsm8k", "test")[0]
    assert build_prompt(prompt_variant("gsm8k"), gsm8k) == f"Question: {gsm8k.doc['question']}\nAnswer:"
    assert prompt_variant("gsm8k").stop_sequences == ("Question:", "</s>", "<|im_end|>")
    humaneval = load_items("humaneval", "test")[0]
    assert build_prompt(prompt_variant("humaneval"), humaneval) == humaneval.doc["prompt"]
    assert prompt_variant("humaneval").max_new_tokens == 1024
    mbpp = load_items("mbpp", "test")[0]
    three_shot = build_prompt(prompt_variant("mbpp"), mbpp)
    assert three_shot.count("[DONE]") == 3 and three_shot.endswith("[BEGIN]\n")
    assert three_shot.startswith("You are an expert Python programmer, and here is your task: Write a function "
                                 "to find the similar elements")
    zero_shot = build_prompt(prompt_variant("mbpp", shots=0), mbpp)
    assert zero_shot == (f"You are an expert Python programmer, and here is your task: {mbpp.doc['text']} Your code "
                         f"should pass these tests:\n\n" + "\n".join(mbpp.doc["test_list"]) + "\n[BEGIN]\n")
    with pytest.raises(DataSourceError, match="train split the offline files lack"):
        prompt_variant("gsm8k", shots=5)


@pytest.mark.parametrize("generation,strict,flexible", [
    ("She makes 9 * 2 = 18 dollars.\n#### 18", "18", "18"),
    ("The answer is $1,234.", INVALID_ANSWER, "$1,234."),
    ("#### -3 and later 7", "-3", "7"),
    ("first #### 5 then #### 6", "5", "6"),
    ("no number here", INVALID_ANSWER, INVALID_ANSWER),
    ("It costs 3.50 in total", INVALID_ANSWER, "3.50"),
])
def test_gsm8k_strict_and_flexible_extraction(generation, strict, flexible):
    assert gsm8k_strict_answer(generation) == strict
    assert gsm8k_flexible_answer(generation) == flexible


def test_gsm8k_exact_match_ignores_commas_dollars_and_a_final_period():
    reference = "Some reasoning <<1+1=2>>.\n#### 1234"
    assert gsm8k_exact_match("$1,234.", reference)
    assert gsm8k_exact_match("1234", "1234")
    assert not gsm8k_exact_match("1234.5", reference)
    assert not gsm8k_exact_match(INVALID_ANSWER, reference)


def test_code_blocks_are_read_from_completions():
    assert extract_code_block("def f():\n    return 1\n") == "def f():\n    return 1\n"
    assert extract_code_block("x = 1\n```\nprose after the code") == "x = 1\n"
    assert extract_code_block("Sure:\n```python\ndef g():\n    pass\n```\nBye") == "def g():\n    pass\n"
    assert extract_code_block("```python\ndef h(): pass") == "def h(): pass"


def test_programs_put_tests_after_the_code():
    humaneval = load_items("humaneval", "test")[0]
    program = humaneval_program(humaneval, "    return True\n")
    assert program.startswith(humaneval.doc["prompt"] + "    return True\n")
    assert program.rstrip().endswith("check(has_close_elements)")
    mbpp = load_items("mbpp", "test")[0]
    program = mbpp_program(mbpp, "def remove_Occ(s, ch):\n    return s\n")
    assert program.index("def remove_Occ") < program.index(mbpp.doc["test_list"][0])
    assert all(test in program for test in mbpp.doc["test_list"])
