"""HSIC of every layer of A with every layer of B, each layer's Gram matrix computed once.

Two estimators:

* biased (Gretton 2005, as in Kornblith 2019): ``HSIC_b = tr(K H L H) / (n-1)^2``;
* unbiased (Song et al. 2012): with ``K~``, ``L~`` the Gram matrices with zeroed diagonals,
  ``HSIC_u = [tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))``.

Both are sums of inner products of per-layer quantities, so for ``L_a`` x ``L_b`` layers
the whole matrix is one GEMM of stacked, flattened Gram matrices (the *Gram form*,
memory ``(L_a + L_b) n^2``) or, for a linear kernel on centred data, per-pair
cross-covariances ``||X_a' X_b||_F^2`` (the *feature form*, no ``n x n`` matrix at all):

* Gram form, biased: ``HSIC_b(a, b) ∝ <H K_a H, H K_b H>_F``; for centred ``X`` the linear
  Gram matrix is already double-centred.
* Gram form, unbiased: the three terms of Song's formula are ``<K~_a, K~_b>_F``,
  ``t_a t_b`` with ``t = 1'K~1``, and ``r_a' r_b`` with ``r = K~1``: one GEMM plus two
  small ones.
* Feature form: for centred ``X`` (``K1 = 0``), with ``q = diag(K)`` the squared row norms,
  ``tr(K~L~) = ||X_a'X_b||^2 - q_a'q_b``, ``r = -q`` and ``t = -sum(q)``, hence
  ``n(n-3) HSIC_u = ||X_a'X_b||^2 - n/(n-2) q_a'q_b + sum(q_a) sum(q_b)/((n-1)(n-2))``.

Centring first is allowed for both estimators (HSIC_u is unchanged when a constant is
added to the features) and keeps the float64 sums well conditioned for activations with
large means. Each centred layer is also divided by a power of two (``validation``), so the
HSIC values here are those of the rescaled layers (``exponents_a``/``exponents_b``): CKA is
a ratio in which the scale cancels, and the linear-kernel HSIC of inputs near 1e80 would
need fourth powers beyond float64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from pkt_core.errors import SimilarityInputError
from pkt_core.similarity.gram import RbfGram, double_centre_inplace, linear_gram_rows
from pkt_core.similarity.validation import (
    MIN_ROWS_UNBIASED,
    centred_scaled_float64,
    common_row_count,
    layer_name,
)

Estimator = Literal["biased", "unbiased"]
ESTIMATORS: tuple[str, ...] = ("biased", "unbiased")
Form = Literal["auto", "gram", "feature"]

# Room for the stacked Gram rows (and cached centred layers) before the engine switches to
# row blocks (Gram form) or recomputation (feature form). 1 GiB holds the full 25 x 29
# matrix at n = 1024 (432 MiB) in one piece.
DEFAULT_MEMORY_BUDGET_BYTES = 1 << 30
_FLOAT64_BYTES = 8


@dataclass(frozen=True)
class HsicTerms:
    """HSIC values, already divided by the estimator's normaliser, for all layer pairs."""

    cross: np.ndarray  # (L_a, L_b): HSIC(A_i, B_j)
    self_a: np.ndarray  # (L_a,): HSIC(A_i, A_i)
    self_b: np.ndarray  # (L_b,): HSIC(B_j, B_j)
    n_rows: int
    estimator: str
    form: str
    # Layer i was divided by 2**exponents[i] after centring: for the linear kernel,
    # HSIC(A_i, B_j) of the raw data is cross[i, j] * 2**(2 e_a[i] + 2 e_b[j]), which may not
    # be representable; the RBF kernel with its median bandwidth does not see the scale.
    exponents_a: np.ndarray | None = None
    exponents_b: np.ndarray | None = None


def check_estimator(estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise SimilarityInputError(f"estimator must be one of {ESTIMATORS}; got {estimator!r}.")


def hsic_normaliser(n_rows: int, estimator: str) -> float:
    return 1.0 / (n_rows - 1) ** 2 if estimator == "biased" else 1.0 / (n_rows * (n_rows - 3))


def min_rows_for(estimator: str) -> int:
    return MIN_ROWS_UNBIASED if estimator == "unbiased" else 2


def choose_linear_form(n: int, widths_a: Sequence[int], widths_b: Sequence[int]) -> str:
    """The form with fewer flops: Gram ~ n^2 (sum d) + 2 n^2 L_a L_b (SYRK + one GEMM),
    feature ~ 2 n (sum d_a)(sum d_b) + n (sum d^2) (one cross-covariance per pair)."""
    sum_a, sum_b = sum(widths_a), sum(widths_b)
    gram = n * n * (sum_a + sum_b) + 2 * n * n * len(widths_a) * len(widths_b)
    feature = 2 * n * sum_a * sum_b + n * (sum(w * w for w in widths_a) + sum(w * w for w in widths_b))
    return "gram" if gram <= feature else "feature"


def _rowwise_dot(m: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", m, m)


def _unbiased_cross(inner: np.ndarray, t_a: np.ndarray, t_b: np.ndarray, r_dot: np.ndarray, n: int) -> np.ndarray:
    """Song et al.'s numerator for all pairs from its three parts:
    ``inner = tr(K~L~)``, ``t = 1'K~1`` per layer, ``r_dot = (K~1)'(L~1) = 1'K~L~1``."""
    return inner + np.multiply.outer(t_a, t_b) / ((n - 1) * (n - 2)) - (2.0 / (n - 2)) * r_dot


def _unbiased_self(inner: np.ndarray, t: np.ndarray, r_sq: np.ndarray, n: int) -> np.ndarray:
    """The same numerator for each layer with itself (elementwise, no outer product)."""
    return inner + t**2 / ((n - 1) * (n - 2)) - (2.0 / (n - 2)) * r_sq


# A function that writes a layer's full n x n Gram matrix of the centred data into ``out``.
FullGramFiller = Callable[[np.ndarray, np.ndarray, str], None]


def gram_form_terms(
    layers_a: Sequence[Any],
    layers_b: Sequence[Any],
    *,
    estimator: str,
    full_gram: FullGramFiller | None = None,
    double_centre: bool = False,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    names_a: Sequence[str] | None = None,
    names_b: Sequence[str] | None = None,
) -> HsicTerms:
    """HSIC of all pairs from stacked, flattened Gram matrices: one GEMM per row block.

    ``full_gram=None`` means the linear kernel, which can be built in row blocks when the
    stacked rows exceed ``memory_budget_bytes``; another kernel (RBF) must fit in one piece.
    ``double_centre`` applies ``H K H`` for the biased estimator (not needed for the linear
    kernel of centred data).
    """
    check_estimator(estimator)
    n, _, _ = common_row_count(layers_a, layers_b, names_a, names_b)
    min_rows = min_rows_for(estimator)
    why = f"the {estimator} HSIC estimator"
    n_a, n_b = len(layers_a), len(layers_b)
    bytes_per_row = (n_a + n_b) * n * _FLOAT64_BYTES
    block = n if bytes_per_row * n <= memory_budget_bytes else max(1, memory_budget_bytes // bytes_per_row)
    if block < n and full_gram is not None:
        raise SimilarityInputError(
            f"the stacked Gram matrices of {n_a}+{n_b} layers at n={n} need "
            f"{bytes_per_row * n / 2**30:.1f} GiB, over the memory budget of "
            f"{memory_budget_bytes / 2**30:.1f} GiB, and this kernel cannot be built in row blocks: "
            "subsample rows or use a linear measure."
        )
    unbiased = estimator == "unbiased"
    cross = np.zeros((n_a, n_b))
    self_terms = (np.zeros(n_a), np.zeros(n_b))
    row_sums = (np.zeros((n_a, n)), np.zeros((n_b, n))) if unbiased else None
    stacks = (np.empty((n_a, block * n)), np.empty((n_b, block * n)))
    exponents = (np.zeros(n_a, dtype=np.int64), np.zeros(n_b, dtype=np.int64))
    sides = (("a", layers_a, names_a), ("b", layers_b, names_b))
    slots = [(side, i) for side in (0, 1) for i in range(len(sides[side][1]))]

    def prepare(slot: tuple[int, int]) -> np.ndarray:
        label, layers, names = sides[slot[0]]
        xc, exponent = centred_scaled_float64(layers[slot[1]], layer_name(label, slot[1], names), min_rows, why)
        exponents[slot[0]][slot[1]] = exponent
        return xc

    def rows_of(slot: tuple[int, int], start: int, stop: int) -> np.ndarray:
        return stacks[slot[0]][slot[1], : (stop - start) * n].reshape(stop - start, n)

    def compute(xc: np.ndarray, slot: tuple[int, int], start: int, stop: int) -> None:
        if full_gram is None:
            linear_gram_rows(xc, start, stop, rows_of(slot, start, stop))
        else:
            label, _, names = sides[slot[0]]
            full_gram(xc, rows_of(slot, start, stop), layer_name(label, slot[1], names))

    def finish(slot: tuple[int, int], start: int, stop: int) -> None:
        rows = rows_of(slot, start, stop)
        if double_centre and not unbiased:
            double_centre_inplace(rows)
        if row_sums is not None:
            rows[np.arange(stop - start), np.arange(start, stop)] = 0.0
            row_sums[slot[0]][slot[1], start:stop] = rows.sum(axis=1)
        flat = rows.reshape(-1)
        # einsum, not BLAS ddot: a BLAS call from this thread would queue behind the SYRK.
        self_terms[slot[0]][slot[1]] += float(np.einsum("i,i->", flat, flat))

    # One helper thread converts and centres the next layer, and finishes the previous one,
    # while BLAS builds the current Gram matrix on the main thread: NumPy releases the GIL
    # in both, and the memory-bound helper work hides behind the compute-bound SYRK.
    with ThreadPoolExecutor(max_workers=1) as helper:
        for start in range(0, n, block):
            stop = min(n, start + block)
            finished = []
            upcoming = helper.submit(prepare, slots[0])
            for k, slot in enumerate(slots):
                xc = upcoming.result()
                if k + 1 < len(slots):
                    upcoming = helper.submit(prepare, slots[k + 1])
                compute(xc, slot, start, stop)
                del xc
                finished.append(helper.submit(finish, slot, start, stop))
            for job in finished:
                job.result()
            width = (stop - start) * n
            cross += stacks[0][:, :width] @ stacks[1][:, :width].T

    self_a, self_b = self_terms
    if row_sums is not None:
        row_sums_a, row_sums_b = row_sums
        t_a, t_b = row_sums_a.sum(axis=1), row_sums_b.sum(axis=1)
        cross = _unbiased_cross(cross, t_a, t_b, row_sums_a @ row_sums_b.T, n)
        self_a = _unbiased_self(self_a, t_a, _rowwise_dot(row_sums_a), n)
        self_b = _unbiased_self(self_b, t_b, _rowwise_dot(row_sums_b), n)
    scale = hsic_normaliser(n, estimator)
    return HsicTerms(
        cross=cross * scale,
        self_a=self_a * scale,
        self_b=self_b * scale,
        n_rows=n,
        estimator=estimator,
        form="gram" if block == n else "gram-blocked",
        exponents_a=exponents[0],
        exponents_b=exponents[1],
    )


def feature_form_terms(
    layers_a: Sequence[Any],
    layers_b: Sequence[Any],
    *,
    estimator: str,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    names_a: Sequence[str] | None = None,
    names_b: Sequence[str] | None = None,
) -> HsicTerms:
    """Linear-kernel HSIC of all pairs from cross-covariances ``||X_a' X_b||_F^2``."""
    check_estimator(estimator)
    n, _, widths_b = common_row_count(layers_a, layers_b, names_a, names_b)
    min_rows = min_rows_for(estimator)
    why = f"the {estimator} HSIC estimator"
    n_a, n_b = len(layers_a), len(layers_b)
    keep_b = n * sum(widths_b) * _FLOAT64_BYTES <= memory_budget_bytes
    exponents = {"a": np.zeros(n_a, dtype=np.int64), "b": np.zeros(n_b, dtype=np.int64)}

    def centred(layers: Sequence[Any], side: str, names: Sequence[str] | None, i: int) -> np.ndarray:
        xc, exponents[side][i] = centred_scaled_float64(layers[i], layer_name(side, i, names), min_rows, why)
        return xc

    cached_b: list[np.ndarray | None] = [None] * n_b
    self_b, sq_norms_b = np.zeros(n_b), np.zeros((n_b, n))
    for j in range(n_b):
        xb = centred(layers_b, "b", names_b, j)
        self_b[j] = np.square(xb.T @ xb).sum()
        sq_norms_b[j] = np.square(xb).sum(axis=1)
        if keep_b:
            cached_b[j] = xb

    cross, self_a, sq_norms_a = np.zeros((n_a, n_b)), np.zeros(n_a), np.zeros((n_a, n))
    for i in range(n_a):
        xa = centred(layers_a, "a", names_a, i)
        self_a[i] = np.square(xa.T @ xa).sum()
        sq_norms_a[i] = np.square(xa).sum(axis=1)
        for j in range(n_b):
            xb = cached_b[j] if keep_b else centred(layers_b, "b", names_b, j)
            cross[i, j] = np.square(xa.T @ xb).sum()

    if estimator == "unbiased":
        # r = K~1 = -q and t = 1'K~1 = -sum(q) for centred X (see the module docstring).
        # tr(K~L~) = ||X_a'X_b||^2 - q_a'q_b, and (K~1)'(L~1) = q_a'q_b.
        t_a, t_b = -sq_norms_a.sum(axis=1), -sq_norms_b.sum(axis=1)
        q_dot = sq_norms_a @ sq_norms_b.T
        cross = _unbiased_cross(cross - q_dot, t_a, t_b, q_dot, n)
        q_sq_a, q_sq_b = _rowwise_dot(sq_norms_a), _rowwise_dot(sq_norms_b)
        self_a = _unbiased_self(self_a - q_sq_a, t_a, q_sq_a, n)
        self_b = _unbiased_self(self_b - q_sq_b, t_b, q_sq_b, n)
    scale = hsic_normaliser(n, estimator)
    return HsicTerms(cross * scale, self_a * scale, self_b * scale, n, estimator, "feature",
                     exponents["a"], exponents["b"])


def linear_hsic_terms(
    layers_a: Sequence[Any],
    layers_b: Sequence[Any],
    *,
    estimator: str = "biased",
    form: str = "auto",
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    names_a: Sequence[str] | None = None,
    names_b: Sequence[str] | None = None,
) -> HsicTerms:
    """Linear-kernel HSIC for all layer pairs, in the Gram or feature form (``auto``: fewer flops)."""
    if form not in ("auto", "gram", "feature"):
        raise SimilarityInputError(f"form must be 'auto', 'gram' or 'feature'; got {form!r}.")
    if form == "auto":
        n, widths_a, widths_b = common_row_count(layers_a, layers_b, names_a, names_b)
        form = choose_linear_form(n, widths_a, widths_b)
    kwargs: dict[str, Any] = {
        "estimator": estimator, "memory_budget_bytes": memory_budget_bytes, "names_a": names_a, "names_b": names_b,
    }
    if form == "gram":
        return gram_form_terms(layers_a, layers_b, **kwargs)
    return feature_form_terms(layers_a, layers_b, **kwargs)


def rbf_hsic_terms(
    layers_a: Sequence[Any],
    layers_b: Sequence[Any],
    *,
    estimator: str = "biased",
    bandwidth_multiplier: float = 1.0,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    names_a: Sequence[str] | None = None,
    names_b: Sequence[str] | None = None,
) -> tuple[HsicTerms, list[float]]:
    """RBF-kernel HSIC for all layer pairs, and the squared bandwidths chosen (A's then B's)."""
    if not np.isfinite(bandwidth_multiplier) or bandwidth_multiplier <= 0:
        raise SimilarityInputError(f"bandwidth_multiplier must be a positive number; got {bandwidth_multiplier}.")
    kernel = RbfGram(float(bandwidth_multiplier))
    terms = gram_form_terms(
        layers_a, layers_b, estimator=estimator, full_gram=kernel.fill, double_centre=True,
        memory_budget_bytes=memory_budget_bytes, names_a=names_a, names_b=names_b,
    )
    return terms, kernel.sq_bandwidths
