"""Answers out of generations: GSM8K numbers and runnable programs for HumanEval and MBPP.

GSM8K follows the harness's two filters and its exact-match metric:

- strict: the first ``#### N`` (``#### (\\-?[0-9\\.\\,]+)``);
- flexible: the last number-like span (``(-?[$0-9.,]{2,})|(-?[0-9]+)``);
- both sides then lose ``,``, ``$``, everything up to ``#### `` and one trailing ``.``, are
  lower-cased, and must be equal. A generation with no match scores as ``[invalid]``.
"""

from __future__ import annotations

import re

from pkt_core.evaluation.tasks import TaskItem

INVALID_ANSWER = "[invalid]"
STRICT_PATTERN = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE_PATTERN = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
IGNORED_PATTERNS = (",", r"\$", r"(?s).*#### ", r"\.$")
FUTURE_ANNOTATIONS = "from __future__ import annotations\n"


def _regex_filter(text: str, pattern: re.Pattern, pick: int) -> str:
    """The harness's regex filter: findall, take match ``pick``, first non-empty group, strip."""
    matches = pattern.findall(text)
    if not matches:
        return INVALID_ANSWER
    match = matches[pick]
    if isinstance(match, tuple):
        match = next((group for group in match if group), INVALID_ANSWER)
    return match.strip()


def gsm8k_strict_answer(generation: str) -> str:
    return _regex_filter(generation, STRICT_PATTERN, 0)


def gsm8k_flexible_answer(generation: str) -> str:
    return _regex_filter(generation, FLEXIBLE_PATTERN, -1)


def normalise_for_exact_match(text: str) -> str:
    for pattern in IGNORED_PATTERNS:
        text = re.sub(pattern, "", text)
    return text.lower()


def gsm8k_exact_match(extracted: str, reference: str) -> bool:
    """``reference`` is the data set's full answer (``... #### 18``) or the bare number."""
    return normalise_for_exact_match(extracted) == normalise_for_exact_match(reference)


def extract_code_block(completion: str) -> str:
    """MBPP: the code inside the first fenced block; text before a closing fence; else everything.

    A fence with no language tag after some text closes code that began without one (the
    prompt asked for code directly); any other fence opens a block, read to the next fence or
    the end. The harness means the same (its ``extract_code_blocks``), but for a completion
    that opens with a fence its regex matches an empty block; here the block's content is kept.
    """
    first = completion.find("```")
    if first < 0:
        return completion
    before, after = completion[:first], completion[first + 3:]
    line_end = after.find("\n")
    tag = after if line_end < 0 else after[:line_end]
    if before.strip() and not tag.strip():
        return before
    body = "" if line_end < 0 else after[line_end + 1:]
    closing = body.find("```")
    return body if closing < 0 else body[:closing]


def humaneval_program(item: TaskItem, completion: str) -> str:
    """Prompt + completion, then the tests and the call of ``check`` (the harness's build_predictions)."""
    doc = item.doc
    return f"{doc['prompt']}{completion}\n{doc['test']}\ncheck({doc['entry_point']})\n"


def mbpp_program(item: TaskItem, completion: str) -> str:
    """The extracted code, the item's set-up code, then its asserts."""
    doc = item.doc
    setup = f"{doc['test_setup_code']}\n" if doc.get("test_setup_code") else ""
    tests = "\n".join(doc["test_list"])
    return f"{FUTURE_ANNOTATIONS}{extract_code_block(completion)}\n{setup}{tests}\n"
