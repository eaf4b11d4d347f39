"""Prompts, continuations and stop sequences as lm-evaluation-harness builds them.

==========  ===========================================================  ======  ===========================
task        prompt (harness task)                                        shots   generation stops
==========  ===========================================================  ======  ===========================
mmlu        subject header + question + ``A. .. D.`` + ``Answer:``;      0 or 5  (log-likelihood of " A".." D")
            shots: the first dev items of the same subject (``mmlu``)
gsm8k       ``Question: {question}\\nAnswer:`` (``gsm8k``)               0       ``Question:``, ``</s>``,
                                                                                 ``<|im_end|>``
humaneval   the problem's prompt as is (``humaneval``, greedy)           0       ``\\nclass``, ``\\ndef``,
                                                                                 ``\\n#``, ``\\nif``, ``\\nprint``
mbpp        ``You are an expert Python programmer ... [BEGIN]\\n``;      3 or 0  ``[DONE]``
            shots: MBPP prompt split 2-4, each ended by ``[DONE]``
==========  ===========================================================  ======  ===========================

The harness's GSM8K default is 5-shot from the train split, which the offline files lack; this
project scores GSM8K 0-shot (as the transfer papers report it) and refuses other shot counts.
No chat template is applied (the harness default for ``hf`` models); every record says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pkt_core.evaluation.tasks import TaskItem, check_task, load_items
from pkt_core.offline_data import DataSourceError

GENERATION_TASKS = ("gsm8k", "humaneval", "mbpp")
ALLOWED_SHOTS = {"mmlu": (0, 5), "gsm8k": (0,), "humaneval": (0,), "mbpp": (0, 3)}
DEFAULT_SHOTS = {"mmlu": 0, "gsm8k": 0, "humaneval": 0, "mbpp": 3}
STOP_SEQUENCES = {
    "gsm8k": ("Question:", "</s>", "<|im_end|>"),
    "humaneval": ("\nclass", "\ndef", "\n#", "\nif", "\nprint"),
    "mbpp": ("[DONE]",),
}
# The harness's max_gen_toks: HumanEval sets 1024, the others use the model default of 256.
MAX_NEW_TOKENS = {"gsm8k": 256, "humaneval": 1024, "mbpp": 256}


MMLU_CHOICE_LETTERS = "ABCD"
# ARC has no harness prompt of its own here: it is asked only through a formulation.
_FORMULATION_ONLY = ("{task} is asked through a formulation (letters or cloze): build its prompt with "
                     "pkt_core.evaluation.formulations.choice_question, not a prompt variant")


def mmlu_prompt(question: str, choices: list[str], subject: str) -> str:
    """The lm-evaluation-harness MMLU 0-shot prompt."""
    header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    options = "".join(f"{letter}. {choice}\n" for letter, choice in zip(MMLU_CHOICE_LETTERS, choices))
    return f"{header}{question.strip()}\n{options}Answer:"


@dataclass(frozen=True)
class PromptVariant:
    """How a task is asked: everything that changes a score, and so is part of the cache key."""

    task: str
    shots: int
    stop_sequences: tuple[str, ...] = ()
    max_new_tokens: int = 0
    chat_template: bool = False

    @property
    def name(self) -> str:
        return f"harness-{self.shots}shot"

    @property
    def generates(self) -> bool:
        return self.task in GENERATION_TASKS

    def describe(self) -> dict:
        return {**asdict(self), "name": self.name, "stop_sequences": list(self.stop_sequences)}


def prompt_variant(task: str, shots: int | None = None, max_new_tokens: int | None = None) -> PromptVariant:
    check_task(task)
    if task not in DEFAULT_SHOTS:
        raise DataSourceError(_FORMULATION_ONLY.format(task=task))
    shots = DEFAULT_SHOTS[task] if shots is None else shots
    if shots not in ALLOWED_SHOTS[task]:
        raise DataSourceError(
            f"{task} can be run with {' or '.join(str(s) for s in ALLOWED_SHOTS[task])} shots, not {shots}"
            + (" (its few-shot examples come from a train split the offline files lack)" if task == "gsm8k" else "")
        )
    if task == "mmlu":
        return PromptVariant(task, shots)
    if max_new_tokens is not None and max_new_tokens < 1:
        raise DataSourceError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
    return PromptVariant(task, shots, STOP_SEQUENCES[task], max_new_tokens or MAX_NEW_TOKENS[task])


def _mmlu_question_text(doc: dict) -> str:
    options = "".join(f"{letter}. {choice}\n" for letter, choice in zip(MMLU_CHOICE_LETTERS, doc["choices"]))
    return f"{doc['question'].strip()}\n{options}Answer:"


def mmlu_fewshot_examples(subject: str, shots: int) -> list[TaskItem]:
    """The harness's ``first_n`` sampler over the dev split of the subject."""
    return [item for item in load_items("mmlu", "dev") if item.subject == subject][:shots]


def build_prompt(variant: PromptVariant, item: TaskItem) -> str:
    doc = item.doc
    if variant.task == "mmlu":
        if variant.shots == 0:
            return mmlu_prompt(doc["question"], doc["choices"], doc["subject"])
        subject = doc["subject"].replace("_", " ")
        header = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
        examples = "".join(
            f"{_mmlu_question_text(example.doc)} {MMLU_CHOICE_LETTERS[example.doc['answer']]}\n\n"
            for example in mmlu_fewshot_examples(doc["subject"], variant.shots)
        )
        return header + examples + _mmlu_question_text(doc)
    if variant.task == "gsm8k":
        return f"Question: {doc['question']}\nAnswer:"
    if variant.task == "humaneval":
        return doc["prompt"]
    if variant.task != "mbpp":
        raise DataSourceError(_FORMULATION_ONLY.format(task=variant.task))
    examples = "".join(
        f"{_mbpp_question_text(example.doc)}{example.doc['code']}\n[DONE]\n\n"
        for example in load_items("mbpp", "prompt")[: variant.shots]
    )
    return examples + _mbpp_question_text(doc)


def _mbpp_question_text(doc: dict) -> str:
    tests = "\n".join(doc["test_list"][:3])
    return (f"You are an expert Python programmer, and here is your task: {doc['text']} "
            f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n")


def mmlu_continuations() -> list[str]:
    """The harness scores " A".." D": the target delimiter (a space) plus the letter."""
    return [f" {letter}" for letter in MMLU_CHOICE_LETTERS]


def reference_answer(item: TaskItem) -> str:
    """The target shown in the records: the gold letter, number, or the tests."""
    doc = item.doc
    if item.task in ("mmlu", "arc_easy", "arc_challenge"):
        return "ABCDEFGHIJ"[doc["answer"]]
    if item.task == "gsm8k":
        return doc["answer"]
    if item.task == "humaneval":
        return f"{doc['test']}\ncheck({doc['entry_point']})"
    return "\n".join(doc["test_list"])
