"""All layer pairs for measures without a batched form: prepare each layer once, compare pairs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from pkt_core.similarity.validation import common_row_count, layer_name

Prepared = TypeVar("Prepared")


def pairwise_values(
    layers_a: Sequence[Any],
    layers_b: Sequence[Any],
    prepare: Callable[[Any, str], Prepared],
    compare: Callable[[Prepared, Prepared], float],
    names_a: Sequence[str] | None = None,
    names_b: Sequence[str] | None = None,
) -> np.ndarray:
    """``values[i, j] = compare(prepare(A_i), prepare(B_j))``, each layer prepared exactly once.

    B's prepared layers are kept; A's are prepared one at a time, so memory holds L_b + 1 of them.
    """
    common_row_count(layers_a, layers_b, names_a, names_b)
    prepared_b = [prepare(layer, layer_name("b", j, names_b)) for j, layer in enumerate(layers_b)]
    values = np.empty((len(layers_a), len(layers_b)))
    for i, layer in enumerate(layers_a):
        prepared_a = prepare(layer, layer_name("a", i, names_a))
        for j, other in enumerate(prepared_b):
            values[i, j] = compare(prepared_a, other)
    return values
