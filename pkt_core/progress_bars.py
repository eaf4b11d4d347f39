"""Terminal progress for (stage, done, total) callbacks: one tqdm bar per stage."""

from __future__ import annotations

from collections.abc import Callable, Mapping


def stage_progress_bars(
    labels: Mapping[str, str] | None = None, units: Mapping[str, str] | None = None, default_unit: str = "step"
) -> Callable[[str, int, int], None]:
    """A callback that draws a bar per stage; a stage counted in bytes ("B") is scaled (kB, MB)."""
    from tqdm import tqdm

    labels, units = labels or {}, units or {}
    bars: dict[str, tqdm] = {}

    def report(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            unit = units.get(stage, default_unit)
            bars[stage] = tqdm(total=total, desc=labels.get(stage, stage), unit=unit, unit_scale=unit == "B", leave=True)
        bar = bars[stage]
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return report
