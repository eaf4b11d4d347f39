"""Centred kernel alignment (Kornblith et al. 2019): linear and RBF, biased and unbiased.

``CKA(X, Y) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``.

Outcomes a user should know about (documented, never a silent NaN):

* The biased estimator lies in [0, 1] but is inflated at small n: independent data score
  visibly above 0. The unbiased estimator (Song et al. 2012) is centred on 0 for
  independent data, so it can be *negative*; negative values are returned as they are and
  counted in :attr:`LayerMatrix.negative_entries` and its notes.
* A representation with no variation, or whose unbiased self-HSIC is not positive,
  raises :class:`DegenerateRepresentationError` naming the layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pkt_core.similarity.errors import DegenerateRepresentationError
from pkt_core.similarity.hsic import (
    DEFAULT_MEMORY_BUDGET_BYTES,
    HsicTerms,
    linear_hsic_terms,
    rbf_hsic_terms,
)
from pkt_core.similarity.result import LayerMatrix


def _check_self_terms(values: np.ndarray, side: str, names: Sequence[str] | None, estimator: str) -> None:
    for i in np.flatnonzero(~(values > 0)):
        name = names[i] if names is not None else f"layers_{side}[{i}]"
        raise DegenerateRepresentationError(
            f"the {estimator} HSIC of {name} with itself is {values[i]:.3g} (must be > 0), so CKA is "
            "undefined for it"
            + (": at this n the unbiased estimator cannot see its variation; use the biased one or more rows."
               if estimator == "unbiased" else ".")
        )


def cka_from_terms(
    terms: HsicTerms, names_a: Sequence[str] | None = None, names_b: Sequence[str] | None = None
) -> np.ndarray:
    """Normalise HSIC terms into CKA values, refusing undefined (non-positive) self terms."""
    _check_self_terms(terms.self_a, "a", names_a, terms.estimator)
    _check_self_terms(terms.self_b, "b", names_b, terms.estimator)
    return terms.cross / np.sqrt(np.multiply.outer(terms.self_a, terms.self_b))


def negative_notes(values: np.ndarray, estimator: str) -> tuple[str, ...]:
    negative = int((values < 0).sum())
    if negative == 0:
        return ()
    return (
        (f"{negative} of {values.size} entries are negative (min {values.min():.3g}): the {estimator} "
         "estimator is centred on 0 for unrelated representations, so small negative values mean "
         "'no measurable similarity'."),
    )


def linear_cka_matrix(
    layers_a: Sequence[Any],
    layers_b: Sequence[Any],
    *,
    estimator: str = "biased",
    form: str = "auto",
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    names_a: Sequence[str] | None = None,
    names_b: Sequence[str] | None = None,
) -> LayerMatrix:
    """Linear CKA of every layer of A with every layer of B (each ``n x d_l``, same rows)."""
    terms = linear_hsic_terms(
        layers_a, layers_b, estimator=estimator, form=form, memory_budget_bytes=memory_budget_bytes,
        names_a=names_a, names_b=names_b,
    )
    values = cka_from_terms(terms, names_a, names_b)
    metric = "linear_cka" if estimator == "biased" else "linear_cka_unbiased"
    return LayerMatrix(
        values=values, metric=metric, n_rows=terms.n_rows, form=terms.form,
        options={"estimator": estimator}, notes=negative_notes(values, estimator),
    )


def _bandwidths(sq_bandwidths: Sequence[float], exponents: np.ndarray | None) -> list[float]:
    """Bandwidths in the units of the user's data: each was chosen on its layer divided by 2**e."""
    shifts = exponents if exponents is not None else np.zeros(len(sq_bandwidths), dtype=np.int64)
    return [float(np.ldexp(np.sqrt(s), int(e))) for s, e in zip(sq_bandwidths, shifts)]


def rbf_cka_matrix(
    layers_a: Sequence[Any],
    layers_b: Sequence[Any],
    *,
    estimator: str = "biased",
    bandwidth_multiplier: float = 1.0,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    names_a: Sequence[str] | None = None,
    names_b: Sequence[str] | None = None,
) -> LayerMatrix:
    """RBF CKA of every layer pair; each layer's bandwidth is ``multiplier x`` its median distance."""
    terms, sq_bandwidths = rbf_hsic_terms(
        layers_a, layers_b, estimator=estimator, bandwidth_multiplier=bandwidth_multiplier,
        memory_budget_bytes=memory_budget_bytes, names_a=names_a, names_b=names_b,
    )
    values = cka_from_terms(terms, names_a, names_b)
    metric = "rbf_cka" if estimator == "biased" else "rbf_cka_unbiased"
    n_a = len(layers_a)
    return LayerMatrix(
        values=values, metric=metric, n_rows=terms.n_rows, form=terms.form,
        options={
            "estimator": estimator,
            "bandwidth_multiplier": float(bandwidth_multiplier),
            "bandwidths_a": _bandwidths(sq_bandwidths[:n_a], terms.exponents_a),
            "bandwidths_b": _bandwidths(sq_bandwidths[n_a:], terms.exponents_b),
        },
        notes=negative_notes(values, estimator),
    )


def linear_cka(
    x: Any,
    y: Any,
    *,
    estimator: str = "biased",
    form: str = "auto",
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
) -> float:
    """Linear CKA of two representations of the same n samples (``n x d1``, ``n x d2``)."""
    return float(
        linear_cka_matrix(
            [x], [y], estimator=estimator, form=form, memory_budget_bytes=memory_budget_bytes,
            names_a=["x"], names_b=["y"],
        ).values[0, 0]
    )


def rbf_cka(
    x: Any,
    y: Any,
    *,
    estimator: str = "biased",
    bandwidth_multiplier: float = 1.0,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
) -> float:
    """RBF CKA; per input ``sigma^2 = bandwidth_multiplier^2 * median_{i<j} |x_i - x_j|^2``."""
    return float(
        rbf_cka_matrix(
            [x], [y], estimator=estimator, bandwidth_multiplier=bandwidth_multiplier,
            memory_budget_bytes=memory_budget_bytes, names_a=["x"], names_b=["y"],
        ).values[0, 0]
    )
