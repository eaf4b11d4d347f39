"""What an evaluation will cost, estimated from what earlier runs measured.

Every run records the wall time of each evaluation stage (``eval-<key>-<role>``) and how many
items it scored. The rate of a model on an evaluation is the median of those seconds per item
over the complete runs that evaluated the same model (by name) on the same task asked the same
way: a choice task's formulation, CircularEval and shots change the cost per item (cloze scores
whole answer texts, CircularEval every rotation, 5 shots a longer context), so a rate measured
in one is never used for another. An estimate multiplies the rate by the items asked for and
names the runs and hardware it came from. Where no run measured the model on that evaluation,
there is no estimate (and the caller says so) rather than a guess.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from pkt_core.evaluation.settings import EvalSettings
from pkt_core.evaluation.specs import EvalSpecError, described_identity, parse_eval_spec, task_of_key
from pkt_core.evaluation.tasks import CHOICE_TASKS
from pkt_core.runs.catalogue import RunListing
from pkt_core.runs.schema import RoleEvaluation

ROLES_SCORED = ("source", "target_before", "target_after")
# (task, formulation, CircularEval, shots): evaluations with the same identity cost the same per item.
Identity = tuple[str, str | None, bool, int | None]


@dataclass(frozen=True)
class EvaluationEstimate:
    task: str  # the evaluation spec estimated (a task name, or e.g. mmlu:rc)
    items: int
    seconds: float | None  # the three roles together; None when no run measured a rate
    per_role: dict[str, float | None]
    basis: str  # which runs and hardware the rates come from


def spec_identity(spec: str, run_wide: EvalSettings | None = None) -> Identity:
    """What a spec (``mmlu``, ``mmlu:rc@1``) will score, under the run-wide settings."""
    settings = run_wide or EvalSettings()
    parsed = parse_eval_spec(spec)
    task, formulation, circular = parsed.identity(settings)
    return task, formulation, circular, (settings.shots or 0) if task in CHOICE_TASKS else None


def stored_identity(task: str, evaluation: RoleEvaluation) -> Identity:
    """What a stored evaluation scored (runs written before formulations were recorded: the task's default)."""
    formulation, circular = described_identity(task, evaluation.formulation)
    shots = int((evaluation.formulation or {}).get("shots") or 0) if task in CHOICE_TASKS else None
    return task, formulation, circular, shots


def measured_rates(listings: list[RunListing], spec: str, source_name: str, target_name: str,
                   run_wide: EvalSettings | None = None) -> tuple[dict[str, list[float]], list[str]]:
    """role -> seconds per item measured by complete runs of these models on the evaluation ``spec``
    asks for (a task name, or e.g. ``mmlu:rc``); and the runs used."""
    wanted_identity = spec_identity(spec, run_wide)
    rates: dict[str, list[float]] = {role: [] for role in ROLES_SCORED}
    used: list[str] = []
    for listing in listings:
        manifest = listing.manifest
        if not listing.complete or manifest is None:
            continue
        names = {"source": manifest.source.name, "target_before": manifest.target.name,
                 "target_after": manifest.target.name}
        wanted = {"source": source_name, "target_before": target_name, "target_after": target_name}
        for key, stored in manifest.evaluation.items():
            try:
                task = task_of_key(key)
            except EvalSpecError:
                continue
            for role in ROLES_SCORED:
                evaluation = stored.role(role)
                stage = manifest.stages.get(f"eval-{key}-{role}")
                if evaluation is None or stage is None or evaluation.items == 0 or names[role] != wanted[role]:
                    continue
                if stored_identity(task, evaluation) != wanted_identity:
                    continue
                rates[role].append(stage.wall_seconds / evaluation.items)
                if manifest.run_id not in used:
                    used.append(manifest.run_id)
    return rates, used


def estimate_evaluation(listings: list[RunListing], spec: str, items: int, source_name: str,
                        target_name: str, run_wide: EvalSettings | None = None) -> EvaluationEstimate:
    """The three roles' time on ``items`` items of the evaluation ``spec`` (a task name, or e.g. ``mmlu:rc``)."""
    rates, used = measured_rates(listings, spec, source_name, target_name, run_wide)
    per_role: dict[str, float | None] = {}
    for role in ROLES_SCORED:
        # A cached score costs nothing: the untouched models' rates are upper bounds when cached.
        per_role[role] = statistics.median(rates[role]) * items if rates[role] else None
    known = [v for v in per_role.values() if v is not None]
    seconds = sum(known) if len(known) == len(ROLES_SCORED) else None
    hardware = sorted({_hardware(listing) for listing in listings
                       if listing.manifest is not None and listing.manifest.run_id in used})
    basis = (f"median seconds per item of {len(used)} earlier run(s) ({', '.join(used[:3])}"
             f"{'...' if len(used) > 3 else ''}) on {', '.join(hardware)}" if used
             else f"no earlier run measured {source_name} / {target_name} on {spec}")
    return EvaluationEstimate(spec, items, seconds, per_role, basis)


def _hardware(listing: RunListing) -> str:
    hardware = listing.manifest.provenance.hardware
    return ", ".join(hardware.gpus) if hardware.gpus else f"a {hardware.cpu_count}-core CPU"
