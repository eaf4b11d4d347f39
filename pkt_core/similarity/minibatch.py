"""Minibatch linear CKA (Nguyen et al. 2021) for all layer pairs, mergeable and all-reducible.

Each batch adds its *unbiased* HSIC terms (Song et al. 2012) to running sums; CKA is formed
once at the end from the sums:

    CKA_mb(A_i, B_j) = sum_k HSIC_u(K_i^k, L_j^k) / sqrt(sum_k HSIC_u(K_i^k, K_i^k) sum_k HSIC_u(L_j^k, L_j^k))

Averaging per-batch CKA values instead would be biased (a ratio of means is not a mean of
ratios), and the biased HSIC estimator would make the result depend on the batch size.
The state is three arrays of sums plus counts, so partial accumulators from different
processes combine exactly by addition (:meth:`MinibatchCKA.merge`, or
:meth:`MinibatchCKA.all_reduce` under ``torch.distributed``).

What this estimates: the mean over batches of the per-batch unbiased HSIC, an unbiased
estimate of the population HSIC. With a single batch it *is* the full-batch unbiased CKA;
with several batches it equals the sums of the full-batch unbiased HSIC of each batch.
Memory is ``(L_a + L_b) b^2`` floats for batches of ``b`` rows, whatever the total n.

Scale: each batch's terms are computed on its layers divided by a power of two (so that
inputs of any finite magnitude neither overflow nor underflow), and the sums keep one
exponent per layer, the largest seen so far. A batch's terms, and the sums when a later
batch is larger, are brought to that exponent by exact power-of-two factors before they
are added; a contribution that this takes below the smallest float64 is smaller than the
sum it joins by more than 2^-1000, so nothing measurable is lost. Merging and all-reducing
align the exponents the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pkt_core.errors import SimilarityInputError
from pkt_core.similarity.cka import cka_from_terms, negative_notes
from pkt_core.similarity.hsic import (
    DEFAULT_MEMORY_BUDGET_BYTES,
    HsicTerms,
    linear_hsic_terms,
)
from pkt_core.similarity.result import LayerMatrix
from pkt_core.similarity.validation import common_row_count

# The exponent of a layer that has seen no batch yet: below any real one, so the first batch sets it.
NO_EXPONENT = -(1 << 40)
# A factor of 2**-2200 takes every float64 to zero, so larger shifts need not be represented.
_MAX_SHIFT = 2200


def _times_power_of_two(values: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """``values * 2**exponent`` for ``exponent <= 0``: exact, or zero where it underflows."""
    return np.ldexp(values, np.maximum(exponent, -_MAX_SHIFT).astype(np.int32))


def _aligned(
    terms: tuple[np.ndarray, np.ndarray, np.ndarray],
    exponents: tuple[np.ndarray, np.ndarray],
    common: tuple[np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HSIC sums of layers divided by ``2**exponents`` re-expressed for layers divided by ``2**common``.

    Linear-kernel HSIC is quadratic in each input: dividing layer i by another 2**k divides
    its cross terms by 4**k and its self term by 16**k.
    """
    cross, self_a, self_b = terms
    down_a, down_b = exponents[0] - common[0], exponents[1] - common[1]  # <= 0
    return (
        _times_power_of_two(cross, 2 * down_a[:, None] + 2 * down_b[None, :]),
        _times_power_of_two(self_a, 4 * down_a),
        _times_power_of_two(self_b, 4 * down_b),
    )


class MinibatchCKA:
    """Accumulates unbiased linear HSIC over batches of rows for ``n_layers_a x n_layers_b`` pairs."""

    def __init__(
        self,
        n_layers_a: int,
        n_layers_b: int,
        *,
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
        names_a: Sequence[str] | None = None,
        names_b: Sequence[str] | None = None,
    ) -> None:
        if n_layers_a < 1 or n_layers_b < 1:
            raise SimilarityInputError(f"need at least one layer on each side; got {n_layers_a} and {n_layers_b}.")
        self.cross = np.zeros((n_layers_a, n_layers_b))
        self.self_a = np.zeros(n_layers_a)
        self.self_b = np.zeros(n_layers_b)
        # The sums are those of layer i divided by 2**exponents_a[i] (see the module docstring).
        self.exponents_a = np.full(n_layers_a, NO_EXPONENT, dtype=np.int64)
        self.exponents_b = np.full(n_layers_b, NO_EXPONENT, dtype=np.int64)
        self.n_batches = 0
        self.n_rows = 0
        self.memory_budget_bytes = memory_budget_bytes
        self.names_a = list(names_a) if names_a is not None else None
        self.names_b = list(names_b) if names_b is not None else None
        self._widths: tuple[list[int], list[int]] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.cross.shape[0]), int(self.cross.shape[1]))

    def _check_widths(self, widths_a: list[int], widths_b: list[int]) -> None:
        if self._widths is None:
            self._widths = (widths_a, widths_b)
            return
        for side, seen, now in (("a", self._widths[0], widths_a), ("b", self._widths[1], widths_b)):
            for i, (before, width) in enumerate(zip(seen, now)):
                if before != width:
                    raise SimilarityInputError(
                        f"layers_{side}[{i}] had {before} features in earlier batches and {width} in this one."
                    )

    def update(self, layers_a: Sequence[Any], layers_b: Sequence[Any]) -> None:
        """Add one batch: the same rows (at least 4) of every layer of A and of B."""
        if (len(layers_a), len(layers_b)) != self.shape:
            raise SimilarityInputError(
                f"this accumulator compares {self.shape[0]} x {self.shape[1]} layers; the batch has "
                f"{len(layers_a)} x {len(layers_b)}."
            )
        n, widths_a, widths_b = common_row_count(layers_a, layers_b, self.names_a, self.names_b)
        self._check_widths(widths_a, widths_b)
        terms = linear_hsic_terms(
            layers_a, layers_b, estimator="unbiased", memory_budget_bytes=self.memory_budget_bytes,
            names_a=self.names_a, names_b=self.names_b,
        )
        assert terms.exponents_a is not None and terms.exponents_b is not None  # the linear forms record them
        self._add((terms.cross, terms.self_a, terms.self_b), (terms.exponents_a, terms.exponents_b))
        self.n_batches += 1
        self.n_rows += n

    def _add(self, terms: tuple[np.ndarray, np.ndarray, np.ndarray], exponents: tuple[np.ndarray, np.ndarray]) -> None:
        """Add HSIC sums computed at ``exponents``, after bringing both to the larger exponent per layer."""
        mine = (self.exponents_a, self.exponents_b)
        common = (np.maximum(mine[0], exponents[0]), np.maximum(mine[1], exponents[1]))
        old = _aligned((self.cross, self.self_a, self.self_b), mine, common)
        new = _aligned(terms, exponents, common)
        self.cross, self.self_a, self.self_b = (before + added for before, added in zip(old, new))
        self.exponents_a, self.exponents_b = common

    def merge(self, other: MinibatchCKA) -> MinibatchCKA:
        """Add another accumulator's batches to this one (in place); returns ``self``."""
        if other.shape != self.shape:
            raise SimilarityInputError(f"cannot merge a {other.shape} accumulator into a {self.shape} one.")
        if other._widths is not None:
            self._check_widths(*other._widths)
        self._add((other.cross, other.self_a, other.self_b), (other.exponents_a, other.exponents_b))
        self.n_batches += other.n_batches
        self.n_rows += other.n_rows
        return self

    def all_reduce(self, group: Any = None) -> int:
        """Sum the state over all processes of ``torch.distributed`` (every rank must call it).

        Returns the number of processes summed over; 1 (and nothing changes) when
        ``torch.distributed`` is not initialised, so the same code runs in one process.
        """
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return 1
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else "cpu"
        # Every rank checks the shapes agree before the large reduction, and all fail together.
        shape = torch.tensor([*self.shape, -self.shape[0], -self.shape[1]], dtype=torch.int64, device=device)
        dist.all_reduce(shape, op=dist.ReduceOp.MAX, group=group)
        if (int(shape[0]), int(shape[1])) != self.shape or (-int(shape[2]), -int(shape[3])) != self.shape:
            raise SimilarityInputError(f"the processes hold accumulators of different shapes (this one: {self.shape}).")
        # Sums at different scales cannot be added: first agree on the largest exponent per layer.
        exponents = torch.from_numpy(np.concatenate([self.exponents_a, self.exponents_b])).to(device)
        dist.all_reduce(exponents, op=dist.ReduceOp.MAX, group=group)
        common = exponents.cpu().numpy()
        self._add((np.zeros_like(self.cross), np.zeros_like(self.self_a), np.zeros_like(self.self_b)),
                  (common[: self.shape[0]], common[self.shape[0]:]))
        # float64 sums; the counts are exact in float64 below 2**53.
        state = np.concatenate([self.cross.ravel(), self.self_a, self.self_b, [self.n_batches, self.n_rows]])
        tensor = torch.from_numpy(state).to(device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
        reduced = tensor.cpu().numpy()
        n_a, n_b = self.shape
        self.cross = reduced[: n_a * n_b].reshape(n_a, n_b).copy()
        self.self_a = reduced[n_a * n_b : n_a * n_b + n_a].copy()
        self.self_b = reduced[n_a * n_b + n_a : n_a * n_b + n_a + n_b].copy()
        self.n_batches, self.n_rows = int(reduced[-2]), int(reduced[-1])
        return dist.get_world_size(group)

    def result(self) -> LayerMatrix:
        """The minibatch CKA matrix from the sums so far."""
        if self.n_batches == 0:
            raise SimilarityInputError("no batches were added; call update() before result().")
        terms = HsicTerms(self.cross, self.self_a, self.self_b, self.n_rows, "unbiased", "minibatch",
                          self.exponents_a, self.exponents_b)
        values = cka_from_terms(terms, self.names_a, self.names_b)
        return LayerMatrix(
            values=values, metric="linear_cka_minibatch", n_rows=self.n_rows, form="minibatch",
            options={"estimator": "unbiased", "n_batches": self.n_batches},
            notes=negative_notes(values, "unbiased"),
        )
