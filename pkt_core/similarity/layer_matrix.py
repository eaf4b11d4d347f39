"""Compare representations by measure name: one pair, or every layer of A with every layer of B."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pkt_core.similarity.measures import get_measure
from pkt_core.similarity.result import LayerMatrix


def similarity(x: Any, y: Any, metric: str = "linear_cka", **options: Any) -> float:
    """One number for two representations of the same samples (``n x d1``, ``n x d2``)."""
    return get_measure(metric)(x, y, **options)


def layer_similarity_matrix(
    layers_a: Sequence[Any],
    layers_b: Sequence[Any],
    metric: str = "linear_cka",
    *,
    names_a: Sequence[str] | None = None,
    names_b: Sequence[str] | None = None,
    **options: Any,
) -> LayerMatrix:
    """``L_a x L_b`` matrix of ``metric`` over layers that share their rows (samples).

    CKA measures stack every layer's Gram matrix (or cross-covariances) and use one GEMM;
    the others prepare each layer once (SVD, neighbour lists) and compare pairs.
    ``names_a``/``names_b`` are how errors refer to the layers (default ``layers_a[i]``).
    """
    return get_measure(metric).layer_matrix(layers_a, layers_b, names_a=names_a, names_b=names_b, **options)
