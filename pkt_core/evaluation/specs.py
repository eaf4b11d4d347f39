"""Which evaluations a transfer runs, written as specs, and the key each one is stored under.

A run may score one task in several formulations (letters, cloze, CircularEval) for the same
three models, because which formulation separates two models depends on the models. ``pkt
transfer --eval`` takes a comma list of specs::

    spec        := task [":" formulation] ["+circular"] ["@" limit]
    task        := mmlu | gsm8k | humaneval | mbpp | arc_easy | arc_challenge
    formulation := mc (answer letters) | rc (cloze: the answer texts scored as continuations)
    limit       := items (MMLU: per subject); replaces --eval-limit for this evaluation

- A plain task (``mmlu``) keeps the meaning ``--eval mmlu`` always had: the run-wide settings
  (``--eval-formulation``, ``--eval-circular``, else the task's default: MMLU mc, ARC rc).
- A formulation in the spec replaces ``--eval-formulation`` and ``--eval-circular`` for that
  evaluation: ``mmlu:mc`` is letters without CircularEval whatever ``--eval-circular`` says;
  ``mmlu:mc+circular`` (or ``mmlu+circular``: CircularEval implies letters) is CircularEval.
  Shots, the PriDe budget and ``--eval-sample`` stay run-wide.
- ``@N`` is the one per-evaluation subset: a cloze pass over all of MMLU costs more than a letter
  pass, so ``mmlu,mmlu:rc@1`` scores 5 letters per subject (``--eval-limit 5``) and 1 cloze item.

Keys: a plain spec is stored under its task (``evaluation/mmlu/<role>/``, manifest key ``mmlu``:
runs written before specs existed read unchanged); any other under ``task-formulation[-circular]``
(``evaluation/mmlu-rc/``, ``evaluation/mmlu-mc-circular/``). Task names hold no ``-``, so the key
names its task unambiguously (:func:`task_of_key`). The limit is not part of the key: two specs
that resolve to the same task, formulation and CircularEval are one evaluation and are refused.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pkt_core.evaluation.formulations import DEFAULT_FORMULATION, FORMULATIONS
from pkt_core.evaluation.settings import EvalSettings
from pkt_core.evaluation.tasks import CHOICE_TASKS, EVAL_TASKS
from pkt_core.offline_data import DataSourceError

SPEC_GRAMMAR = "task[:mc|:rc][+circular][@N], e.g. mmlu, mmlu:rc@1, arc_easy:mc+circular"
_SPEC = re.compile(r"(?P<task>[a-z0-9_]+)(?::(?P<formulation>[a-z]+))?(?P<circular>\+circular)?(?:@(?P<limit>\d+))?")
FORMULATION_TITLES = {"mc": "letters", "rc": "cloze"}


class EvalSpecError(DataSourceError):
    """An evaluation spec cannot be read, or two specs ask for the same evaluation."""


@dataclass(frozen=True)
class EvalSpec:
    """One evaluation of a run: a task, optionally its own formulation and item limit."""

    task: str
    formulation: str | None = None  # None: the run-wide setting (a plain spec)
    circular: bool = False
    limit: int | None = None  # None: the run-wide --eval-limit

    def __post_init__(self) -> None:
        if self.task not in EVAL_TASKS:
            raise EvalSpecError(f"unknown evaluation task {self.task!r}; choose one of {', '.join(EVAL_TASKS)}")
        if self.circular and self.formulation is None:
            object.__setattr__(self, "formulation", "mc")  # CircularEval rotates letters: it implies mc
        if self.formulation is not None:
            if self.task not in CHOICE_TASKS:
                raise EvalSpecError(f"{self.text}: {self.task} has no formulations; they apply to the choice tasks "
                                    f"({', '.join(CHOICE_TASKS)}). Write {self.task} alone.")
            if self.formulation not in FORMULATIONS:
                raise EvalSpecError(f"{self.text}: unknown formulation {self.formulation!r}; write mc (letters) "
                                    "or rc (cloze)")
            if self.circular and self.formulation == "rc":
                raise EvalSpecError(f"{self.text}: CircularEval rotates the options shown as letters; the cloze "
                                    "formulation shows none. Write mc+circular.")
        if self.limit is not None and self.limit < 1:
            raise EvalSpecError(f"{self.text}: the item limit after @ must be at least 1")

    @property
    def plain(self) -> bool:
        """True for a bare task, which follows the run-wide settings."""
        return self.formulation is None

    @property
    def key(self) -> str:
        """The manifest key and folder name under ``evaluation/``."""
        if self.plain:
            return self.task
        return f"{self.task}-{self.formulation}" + ("-circular" if self.circular else "")

    @property
    def text(self) -> str:
        """The canonical spec (``mmlu+circular`` is written ``mmlu:mc+circular``)."""
        text = self.task + (f":{self.formulation}" if self.formulation else "") + ("+circular" if self.circular else "")
        return text + (f"@{self.limit}" if self.limit is not None else "")

    def settings(self, run_wide: EvalSettings) -> EvalSettings:
        """The run-wide settings with this spec's formulation in place of the run-wide one."""
        if self.plain:
            return run_wide
        return dataclasses.replace(run_wide, formulation=self.formulation, circular=self.circular)

    def identity(self, run_wide: EvalSettings) -> tuple[str, str | None, bool]:
        """(task, formulation, CircularEval) as scored: what makes two evaluations the same one."""
        if self.task not in CHOICE_TASKS:
            return self.task, None, False
        settings = self.settings(run_wide)
        return self.task, settings.formulation or DEFAULT_FORMULATION[self.task], bool(settings.circular)

    def options(self, run_wide: EvalSettings, run_limit: int | None = None, **more):
        """The :class:`~pkt_core.evaluation.runner.EvalOptions` of this evaluation."""
        return self.settings(run_wide).options_for(self.task, run_limit if self.limit is None else self.limit, **more)

    def title(self, run_wide: EvalSettings | None = None) -> str:
        """'mmlu (cloze)', 'mmlu (letters, CircularEval)', 'humaneval'."""
        task, formulation, circular = self.identity(run_wide or EvalSettings())
        return f"{task} ({formulation_title(formulation, circular)})" if formulation else task


def parse_eval_spec(text: str) -> EvalSpec:
    match = _SPEC.fullmatch(text.strip())
    if match is None:
        raise EvalSpecError(f"cannot read the evaluation spec {text!r}; write {SPEC_GRAMMAR}")
    limit = match["limit"]
    return EvalSpec(match["task"], match["formulation"], bool(match["circular"]), int(limit) if limit else None)


def parse_eval_specs(texts: Iterable[str], run_wide: EvalSettings | Mapping | None = None) -> list[EvalSpec]:
    """Specs in the order given; refuses two that resolve to the same evaluation under ``run_wide``."""
    settings = run_wide if isinstance(run_wide, EvalSettings) else EvalSettings.from_dict(dict(run_wide or {}))
    specs = [parse_eval_spec(text) for text in texts if text.strip()]
    seen: dict[tuple, EvalSpec] = {}
    for spec in specs:
        try:  # refuse what the evaluation would refuse (e.g. CircularEval on ARC's default cloze) before any work
            spec.options(settings)
        except DataSourceError as error:
            raise EvalSpecError(f"{spec.text}: {error}") from None
        identity = spec.identity(settings)
        if identity in seen:
            raise EvalSpecError(f"{seen[identity].text} and {spec.text} both ask for {spec.title(settings)} under the "
                                "run-wide settings; keep one (use @N on it for its item limit)")
        seen[identity] = spec
    return specs


def task_of_key(key: str) -> str:
    """The task an evaluation key (a folder under ``evaluation/``) belongs to."""
    task = key.split("-", 1)[0]
    if task not in EVAL_TASKS:
        raise EvalSpecError(f"evaluation key {key!r} names no task; keys are a task, or task-formulation[-circular]")
    return task


def formulation_title(formulation: str | None, circular: bool = False, shots: int | None = None) -> str:
    """'letters', 'cloze', 'letters, CircularEval', with ', 5-shot' where shots were given."""
    if formulation is None:
        return "as scored"
    title = FORMULATION_TITLES.get(formulation, formulation) + (", CircularEval" if circular else "")
    return title + (f", {shots}-shot" if shots else "")


def described_identity(task: str, described: Mapping | None) -> tuple[str | None, bool]:
    """(formulation, CircularEval) of a stored evaluation from its formulation record
    (:meth:`~pkt_core.evaluation.formulations.Formulation.describe`); a choice task's evaluation
    written before records held one was scored in the task's default formulation."""
    if task not in CHOICE_TASKS:
        return None, False
    if not described:
        return DEFAULT_FORMULATION[task], False
    return str(described.get("name") or DEFAULT_FORMULATION[task]), bool(described.get("circular"))


# The formulations a form offers, as spec suffixes (what ``task:<suffix>`` asks for).
OFFERED_FORMULATIONS = {"mc": "letters", "rc": "cloze", "mc+circular": "letters, CircularEval"}


def specs_in_formulations(tasks: Iterable[str], formulations: Iterable[str]) -> list[str]:
    """Every task once, and every choice task once per formulation (``mc``, ``rc``, ``mc+circular``)
    in the order given; a choice task's default formulation is written plain (``mmlu``, not ``mmlu:mc``),
    so it lands where ``--eval mmlu`` puts it. No formulations: one plain spec per task."""
    chosen = list(dict.fromkeys(formulations))
    unknown = [name for name in chosen if name not in OFFERED_FORMULATIONS]
    if unknown:
        raise EvalSpecError(f"unknown formulations {unknown}; choose from {', '.join(OFFERED_FORMULATIONS)}")
    specs: list[str] = []
    for task in dict.fromkeys(tasks):
        if task not in CHOICE_TASKS or not chosen:
            specs.append(parse_eval_spec(task).text)
            continue
        for name in chosen:
            specs.append(task if name == DEFAULT_FORMULATION[task] else f"{task}:{name}")
    return specs
