"""How a multiple-choice item is asked: the letter formulation (MC) and the cloze formulation (RC).

A small model often cannot yet map its knowledge to an answer letter; it can still rank answer
texts. Which formulation separates two models depends on the models, so every choice task can
be asked both ways, and every result records how it was asked (:meth:`Formulation.describe`).

==============  ===================================================================================
formulation     conventions (as the harness that defines them)
==============  ===================================================================================
mmlu, mc        lm-eval ``mmlu`` (default template): ``The following are multiple choice questions
                (with answers) about {subject}.\\n\\n{question}\\nA. {c0}\\nB. ..\\nAnswer:``; options
                `` A``..`` D`` scored by log-likelihood, prediction the argmax (acc). Shots: the first
                k dev items of the subject (``first_n``), each ``{question block} {gold letter}\\n\\n``.
mmlu, rc        lm-eval ``mmlu_continuation``: ``The following are questions (with answers) about
                {subject}.\\n\\nQuestion: {question}\\nAnswer:``; each answer text `` {choice}`` scored
                as a continuation. acc: argmax of the summed log-likelihood; acc_norm (the score):
                argmax of log-likelihood per character of the answer text (lm-eval's acc_norm, the
                OLMES "per_char" normalisation). Shots: first k dev items, ``Question: ..\\nAnswer:
                {gold text}\\n\\n``.
arc_*, mc       OLMES ``arc_easy:mc`` / ``arc_challenge:mc``: ``Question: {question}\\n A. {c0}\\n B. ..
                \\nAnswer:``, options `` A``.., argmax log-likelihood. Shots: OLMES's curated 5 (from
                ARC train), read from its request files.
arc_*, rc       OLMES ``arc_easy`` / ``arc_challenge`` (RC) = lm-eval ``arc_easy``: ``Question:
                {question}\\nAnswer:`` + `` {choice}``; score acc_norm per character (OLMES uses
                per_char for ARC-Easy; for ARC-Challenge it prefers PMI, which this tool does not
                compute: acc and acc_norm are both recorded). Shots: OLMES's curated 5.
==============  ===================================================================================

No chat template; the target delimiter is one space, the few-shot delimiter a blank line.

CircularEval (MMBench, Liu et al. 2023): the item is asked once per cyclic rotation of its
options (rotation r shows option (i + r) mod n at position i) and counts only if every rotation
is answered right. Only the letter formulation shows positions; the cloze formulation does not
depend on the option order, so CircularEval is refused for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pkt_core.evaluation.tasks import ARC_TASKS, CHOICE_TASKS, TaskItem, arc_fewshot_prefix, load_items
from pkt_core.offline_data import DataSourceError

FORMULATIONS = ("mc", "rc")
FORMULATION_NAMES = {"mc": "multiple-choice letters", "rc": "cloze / rank classification"}
DEFAULT_FORMULATION = {"mmlu": "mc", "arc_easy": "rc", "arc_challenge": "rc"}
ALLOWED_CHOICE_SHOTS = (0, 5)
LETTERS = "ABCDEFGHIJ"
HARNESS_TASK = {
    ("mmlu", "mc"): "lm-eval mmlu (default template)",
    ("mmlu", "rc"): "lm-eval mmlu_continuation",
    ("arc_easy", "mc"): "OLMES arc_easy:mc",
    ("arc_easy", "rc"): "OLMES arc_easy (rc) = lm-eval arc_easy",
    ("arc_challenge", "mc"): "OLMES arc_challenge:mc",
    ("arc_challenge", "rc"): "OLMES arc_challenge (rc) = lm-eval arc_challenge",
}


@dataclass(frozen=True)
class Formulation:
    """The way a choice task is asked; part of every cache key and summary."""

    task: str
    name: str  # "mc" or "rc"
    shots: int = 0
    circular: bool = False

    def __post_init__(self) -> None:
        if self.task not in CHOICE_TASKS:
            raise DataSourceError(f"{self.task} is not a multiple-choice task ({', '.join(CHOICE_TASKS)})")
        if self.name not in FORMULATIONS:
            raise DataSourceError(f"unknown formulation {self.name!r}; choose mc (letters) or rc (cloze)")
        if self.shots not in ALLOWED_CHOICE_SHOTS:
            raise DataSourceError(f"{self.task} can be run with 0 or 5 shots, not {self.shots}")
        if self.circular and self.name == "rc":
            raise DataSourceError("CircularEval rotates the options shown in the prompt; the cloze (rc) formulation "
                                  "shows none, so its score does not depend on their order. Use --formulation mc.")

    @property
    def label(self) -> str:
        return f"{self.task}-{self.name}-{self.shots}shot" + ("-circular" if self.circular else "")

    @property
    def score_rule(self) -> str:
        return "acc (argmax log-likelihood)" if self.name == "mc" else "acc_norm (argmax log-likelihood per character)"

    def describe(self) -> dict:
        return {"name": self.name, "description": FORMULATION_NAMES[self.name], "shots": self.shots,
                "circular": self.circular, "harness_task": HARNESS_TASK[(self.task, self.name)],
                "score": self.score_rule, "chat_template": False, "target_delimiter": " ",
                "fewshot_delimiter": "\n\n",
                "fewshot_source": "first k dev items of the subject (first_n)" if self.task == "mmlu"
                else "OLMES's curated 5 ARC train items (from its request files)"}


@dataclass(frozen=True)
class ChoiceQuestion:
    """One item asked under one rotation: the context, one continuation per shown position."""

    context: str
    continuations: tuple[str, ...]
    order: tuple[int, ...]  # order[position] = index of the original option shown there
    gold_position: int
    answer_texts: tuple[str, ...]  # what acc_norm divides by the length of (lm-eval: the choice strings)


def rotated_order(count: int, rotation: int) -> tuple[int, ...]:
    return tuple((position + rotation) % count for position in range(count))


def _options_block(task: str, choices: list[str]) -> str:
    # lm-eval's MMLU writes "A. text"; OLMES's ARC MC indents each option by one space.
    indent = " " if task in ARC_TASKS else ""
    return "".join(f"{indent}{LETTERS[i]}. {choice}\n" for i, choice in enumerate(choices))


def _question_text(task: str, name: str, doc: dict, choices: list[str]) -> str:
    question = doc["question"].strip() if task == "mmlu" else doc["question"]
    if name == "rc":
        return f"Question: {question}\nAnswer:"
    if task == "mmlu":
        return f"{question}\n{_options_block(task, choices)}Answer:"
    return f"Question: {question}\n{_options_block(task, choices)}Answer:"


def _header(formulation: Formulation, doc: dict) -> str:
    if formulation.task != "mmlu":
        return ""
    subject = doc["subject"].replace("_", " ")
    kind = "multiple choice questions" if formulation.name == "mc" else "questions"
    return f"The following are {kind} (with answers) about {subject}.\n\n"


def _shots(formulation: Formulation, doc: dict) -> str:
    if formulation.shots == 0:
        return ""
    if formulation.task in ARC_TASKS:
        return arc_fewshot_prefix(formulation.task, formulation.name)
    examples = [item for item in load_items("mmlu", "dev") if item.subject == doc["subject"]][: formulation.shots]
    blocks = []
    for example in examples:
        shown = example.doc["choices"]
        gold = example.doc["answer"]
        answer = LETTERS[gold] if formulation.name == "mc" else shown[gold]
        blocks.append(f"{_question_text('mmlu', formulation.name, example.doc, shown)} {answer}\n\n")
    return "".join(blocks)


def choice_question(formulation: Formulation, item: TaskItem, rotation: int = 0) -> ChoiceQuestion:
    doc = item.doc
    count = len(doc["choices"])
    order = rotated_order(count, rotation)
    shown = [doc["choices"][index] for index in order]
    context = _header(formulation, doc) + _shots(formulation, doc) + _question_text(formulation.task, formulation.name,
                                                                                  doc, shown)
    if formulation.name == "mc":
        answers = tuple(LETTERS[:count])
    else:
        answers = tuple(shown)
    return ChoiceQuestion(context, tuple(f" {answer}" for answer in answers), order, order.index(doc["answer"]),
                          answers)
