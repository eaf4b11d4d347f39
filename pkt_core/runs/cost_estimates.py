"""What an evaluation will cost, estimated from what earlier runs measured.

Every run records the wall time of each evaluation stage (``eval-<task>-<role>``) and how many
items it scored. The rate of a model on a task is the median of those seconds per item over the
complete runs that evaluated the same model (by name) on that task; an estimate multiplies it by
the items asked for and names the runs and hardware it came from. Where no run measured the
model on the task, there is no estimate (and the caller says so) rather than a guess.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from pkt_core.runs.catalogue import RunListing

ROLES_SCORED = ("source", "target_before", "target_after")


@dataclass(frozen=True)
class EvaluationEstimate:
    task: str
    items: int
    seconds: float | None  # the three roles together; None when no run measured a rate
    per_role: dict[str, float | None]
    basis: str  # which runs and hardware the rates come from


def measured_rates(listings: list[RunListing], task: str, source_name: str, target_name: str
                   ) -> tuple[dict[str, list[float]], list[str]]:
    """role -> seconds per item measured by complete runs of these models on ``task``; and the runs used."""
    rates: dict[str, list[float]] = {role: [] for role in ROLES_SCORED}
    used: list[str] = []
    for listing in listings:
        manifest = listing.manifest
        if not listing.complete or manifest is None or task not in manifest.evaluation:
            continue
        names = {"source": manifest.source.name, "target_before": manifest.target.name,
                 "target_after": manifest.target.name}
        wanted = {"source": source_name, "target_before": target_name, "target_after": target_name}
        for role in ROLES_SCORED:
            evaluation = manifest.evaluation[task].role(role)
            stage = manifest.stages.get(f"eval-{task}-{role}")
            if evaluation is None or stage is None or evaluation.items == 0 or names[role] != wanted[role]:
                continue
            rates[role].append(stage.wall_seconds / evaluation.items)
            if manifest.run_id not in used:
                used.append(manifest.run_id)
    return rates, used


def estimate_evaluation(listings: list[RunListing], task: str, items: int, source_name: str,
                        target_name: str) -> EvaluationEstimate:
    rates, used = measured_rates(listings, task, source_name, target_name)
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
             else f"no earlier run measured {source_name} / {target_name} on {task}")
    return EvaluationEstimate(task, items, seconds, per_role, basis)


def _hardware(listing: RunListing) -> str:
    hardware = listing.manifest.provenance.hardware
    return ", ".join(hardware.gpus) if hardware.gpus else f"a {hardware.cpu_count}-core CPU"
