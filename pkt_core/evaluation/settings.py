"""How a task is asked and measured, as one record a transfer config can carry for all its tasks.

``pkt eval`` builds :class:`~pkt_core.evaluation.runner.EvalOptions` for one task directly; a transfer
evaluates several tasks for three models, so it carries an :class:`EvalSettings` (plain fields,
JSON-able for the manifest) and asks it for each task's options. Choice-only settings
(formulation, shots, CircularEval, the PriDe budget) apply to the choice tasks and are left out
for the others, so one record serves ``--eval mmlu,humaneval``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from pkt_core.evaluation.formulations import FORMULATIONS
from pkt_core.evaluation.tasks import CHOICE_TASKS
from pkt_core.offline_data import DataSourceError


@dataclass(frozen=True)
class EvalSettings:
    formulation: str | None = None  # mc or rc for the choice tasks; None: each task's default (MMLU mc, ARC rc)
    shots: int | None = None  # choice tasks: 0 or 5
    circular: bool = False  # choice tasks, mc: CircularEval
    prior_items: int | None = None  # PriDe estimation items (None: 5%, at least 8; 0: off)
    generate: bool = True  # generation tasks: False = only the gold answer's log-probability
    sample: int | None = None  # a seeded sample of N items per task
    seed: int = 0

    def __post_init__(self) -> None:
        if self.formulation is not None and self.formulation not in FORMULATIONS:
            raise DataSourceError(f"unknown formulation {self.formulation!r}; choose mc (letters) or rc (cloze)")

    def options_for(self, task: str, limit: int | None = None, **more):
        """The :class:`EvalOptions` of one task (``more``: batch size, cache use, ...)."""
        from pkt_core.evaluation.runner import EvalOptions

        choice = task in CHOICE_TASKS
        return EvalOptions(task=task, limit=limit, sample=self.sample, seed=self.seed, generate=self.generate,
                           formulation=self.formulation if choice else None, shots=self.shots if choice else None,
                           circular=self.circular if choice else False,
                           prior_items=self.prior_items if choice else None, **more)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> EvalSettings:
        known = {field.name for field in fields(cls)}
        unknown = set(data or {}) - known
        if unknown:
            raise DataSourceError(f"unknown evaluation settings {sorted(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**(data or {}))
