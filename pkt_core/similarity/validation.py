"""Checks at the door: samples are rows, values are finite, there are enough rows, work is float64.

Every measure calls these before computing anything, so that bad input ends in a
:class:`~pkt_core.errors.SimilarityInputError` that names the array, never in a NaN later.
Centred layers are also divided by a power of two (exactly) so that their largest entry
is below 1: finite float64 input of any magnitude then cannot overflow or underflow in the
measures' squares and fourth powers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pkt_core.errors import SimilarityInputError
from pkt_core.similarity.errors import DegenerateRepresentationError

# The unbiased HSIC estimator divides by n(n-3) and (n-1)(n-2): it needs at least 4 rows.
MIN_ROWS_UNBIASED = 4


def as_2d_array(x: Any, name: str) -> np.ndarray:
    """``x`` as a 2-D numeric NumPy array (no copy if possible); torch tensors are accepted."""
    if type(x).__module__.split(".")[0] == "torch":
        # Duck-typed so this module does not import torch; double() also converts bfloat16.
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise SimilarityInputError(f"{name} must hold real numbers; got dtype {arr.dtype}.")
    if arr.ndim != 2:
        raise SimilarityInputError(
            f"{name} must be 2-D with samples as rows (n x d); got shape {arr.shape}."
            + (" Reshape a single feature with x[:, None]." if arr.ndim == 1 else "")
        )
    if arr.shape[1] == 0:
        raise SimilarityInputError(f"{name} has no features (shape {arr.shape}).")
    return arr


def require_rows(n_rows: int, min_rows: int, name: str, why: str) -> None:
    if n_rows < min_rows:
        raise SimilarityInputError(f"{name} has {n_rows} rows; {why} needs at least {min_rows}.")


def require_same_rows(n_a: int, n_b: int, name_a: str, name_b: str) -> None:
    if n_a != n_b:
        raise SimilarityInputError(
            f"{name_a} has {n_a} rows but {name_b} has {n_b}: rows must be the same samples, "
            "in the same order, in both."
        )


def non_finite_error(arr: np.ndarray, name: str) -> SimilarityInputError:
    """The error for an array with NaN/inf: how many, and where the first one is."""
    bad = ~np.isfinite(arr)
    n_nan = int(np.isnan(arr).sum())
    n_inf = int(bad.sum()) - n_nan
    row, col = (int(i) for i in np.argwhere(bad)[0])
    return SimilarityInputError(
        f"{name} contains {n_nan} NaN and {n_inf} infinite values (first at row {row}, column {col}); "
        "drop or repair those rows before comparing representations."
    )


def as_float64_checked(x: Any, name: str, min_rows: int, why: str) -> np.ndarray:
    """A validated float64 array (a copy only when ``x`` was not float64 already)."""
    arr = as_2d_array(x, name)
    require_rows(arr.shape[0], min_rows, name, why)
    out = np.asarray(arr, dtype=np.float64)
    if not np.isfinite(out).all():
        raise non_finite_error(out, name)
    return out


def power_of_two_exponent(peak: float) -> int:
    """``e`` with ``peak * 2**-e`` in [0.5, 1): dividing by ``2**e`` is exact in binary floating point."""
    return int(np.frexp(peak)[1])


def centred_scaled_float64(
    x: Any, name: str, min_rows: int = 2, why: str = "this measure"
) -> tuple[np.ndarray, int]:
    """``(xc, e)``: a validated float64 copy of ``x`` with column means removed, divided by ``2**e``
    so that its largest entry is in [0.5, 1).

    Every measure here is invariant to isotropic scaling, so dividing a layer by one power of
    two changes no result, and it is exact (a power of two only shifts exponents). It keeps
    the fourth powers inside HSIC, the squared singular values and squared distances inside
    float64 for inputs of any finite magnitude, from 1e-300 to 1e300.

    Constant columns are set to exactly zero (rather than to the rounding residue of
    ``c - mean``) so that they contribute nothing; a representation whose columns are
    all constant has no geometry to compare and raises
    :class:`DegenerateRepresentationError`.
    """
    arr = as_2d_array(x, name)
    require_rows(arr.shape[0], min_rows, name, why)
    column_max, column_min = arr.max(axis=0), arr.min(axis=0)
    # A NaN makes its column's max NaN and an infinity makes the max or the min infinite,
    # so checking these 2d numbers is exhaustive.
    if not (np.isfinite(column_max).all() and np.isfinite(column_min).all()):
        raise non_finite_error(arr, name)
    constant = column_max == column_min
    if constant.all():
        raise DegenerateRepresentationError(
            f"{name} is constant: all {arr.shape[0]} rows are identical, so its similarity to "
            "anything is undefined (a dead layer, or the wrong rows?)."
        )
    varying = ~constant
    # Constant columns end up exactly zero, so a large constant offset must not set the scale:
    # it would push the varying columns into subnormal numbers, where precision is lost.
    extremes = np.concatenate([column_max[varying], column_min[varying]]).astype(np.float64)
    peak = float(np.abs(extremes).max())
    shift = power_of_two_exponent(peak)
    out = np.array(arr, dtype=np.float64, order="C", copy=True)
    np.ldexp(out, -shift, out=out)  # now |out| < 1 where it matters, so the column sums cannot overflow
    out -= out.mean(axis=0)
    if constant.any():
        out[:, constant] = 0.0
    # The varying column holding the peak keeps distinct values, so the spread is positive.
    spread = max(float(out.max()), -float(out.min()))
    spread_shift = power_of_two_exponent(spread)
    np.ldexp(out, -spread_shift, out=out)
    return out, shift + spread_shift


def centred_float64(x: Any, name: str, min_rows: int = 2, why: str = "this measure") -> np.ndarray:
    """The centred, power-of-two rescaled copy of :func:`centred_scaled_float64`, without its exponent."""
    return centred_scaled_float64(x, name, min_rows, why)[0]


def _shape(layer: Any) -> tuple[int, ...]:
    shape = getattr(layer, "shape", None)
    return tuple(int(s) for s in (shape if shape is not None else np.shape(layer)))


def layer_name(side: str, index: int, names: Sequence[str] | None) -> str:
    """How errors refer to a layer: the caller's name for it, else ``layers_a[3]``."""
    return names[index] if names is not None else f"layers_{side}[{index}]"


def _layer_shapes(layers: Sequence[Any], side: str, names: Sequence[str] | None) -> list[tuple[int, int]]:
    if len(layers) == 0:
        raise SimilarityInputError(f"layers_{side} is empty: give at least one layer.")
    shapes = []
    for i, layer in enumerate(layers):
        shape = _shape(layer)
        if len(shape) != 2:
            as_2d_array(layer, layer_name(side, i, names))  # raises with the standard message
        shapes.append((shape[0], shape[1]))
    return shapes


def common_row_count(
    layers_a: Sequence[Any],
    layers_b: Sequence[Any],
    names_a: Sequence[str] | None = None,
    names_b: Sequence[str] | None = None,
) -> tuple[int, list[int], list[int]]:
    """The row count all layers share, and every layer's width; raises if the rows differ."""
    shapes_a = _layer_shapes(layers_a, "a", names_a)
    shapes_b = _layer_shapes(layers_b, "b", names_b)
    n = shapes_a[0][0]
    first = layer_name("a", 0, names_a)
    for side, shapes, names in (("a", shapes_a, names_a), ("b", shapes_b, names_b)):
        for i, (rows, _) in enumerate(shapes):
            require_same_rows(n, rows, first, layer_name(side, i, names))
    return n, [w for _, w in shapes_a], [w for _, w in shapes_b]
