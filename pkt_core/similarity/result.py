"""The result of comparing every layer of one model with every layer of another."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LayerMatrix:
    """``values[i, j]`` compares layer ``i`` of A with layer ``j`` of B.

    ``form`` says how it was computed ("gram", "feature", "gram-blocked", "pairwise",
    "minibatch"); ``notes`` carries the documented outcomes a user should see next to the
    heatmap (negative unbiased estimates, degenerate CCA, ...).
    """

    values: np.ndarray
    metric: str
    n_rows: int
    form: str
    options: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.values.shape[0]), int(self.values.shape[1]))

    @property
    def negative_entries(self) -> int:
        """How many entries are below zero (only the unbiased CKA estimators produce them)."""
        return int((self.values < 0).sum())
