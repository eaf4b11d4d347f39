"""How far a job's stage is and how long the rest will take, from its status record alone.

The estimate is measured, not guessed: the stage's elapsed time divided by the steps it has
done, times the steps left. Before the first step of a stage there is no rate, and the estimate
says so instead of inventing one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class StageTiming:
    elapsed_seconds: float | None
    remaining_seconds: float | None  # None: no step done yet, so no measured rate
    rate_note: str


def stage_timing(stage: dict, now: float | None = None) -> StageTiming:
    """Elapsed time of a running or finished stage and, while it runs, the time left at its rate so far."""
    now = time.time() if now is None else now
    started = stage.get("started")
    if started is None:
        return StageTiming(None, None, "not started")
    end = stage.get("ended") if stage.get("state") == "done" and stage.get("ended") else now
    elapsed = max(0.0, float(end) - float(started))
    if stage.get("state") != "running":
        return StageTiming(elapsed, 0.0 if stage.get("state") == "done" else None, stage.get("state", ""))
    done, total = int(stage.get("done") or 0), int(stage.get("total") or 1)
    if done <= 0 or total <= 1:
        return StageTiming(elapsed, None, "no step finished yet: no measured rate")
    # Time to the last finished step over the steps done, times the steps left.
    measured = max(0.0, float(stage.get("step_at", now)) - float(started))
    per_step = measured / done
    return StageTiming(elapsed, per_step * max(0, total - done), f"{per_step:.1f} s per step over {done} steps")


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
