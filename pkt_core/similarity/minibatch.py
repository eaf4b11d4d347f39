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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pkt_core.errors import SimilarityInputError
from pkt_core.similarity.cka import cka_from_terms, negative_notes
from pkt_core.similarity.hsic import DEFAULT_MEMORY_BUDGET_BYTES, HsicTerms, linear_hsic_terms
from pkt_core.similarity.result import LayerMatrix
from pkt_core.similarity.validation import common_row_count


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
        self.cross += terms.cross
        self.self_a += terms.self_a
        self.self_b += terms.self_b
        self.n_batches += 1
        self.n_rows += n

    def merge(self, other: MinibatchCKA) -> MinibatchCKA:
        """Add another accumulator's batches to this one (in place); returns ``self``."""
        if other.shape != self.shape:
            raise SimilarityInputError(f"cannot merge a {other.shape} accumulator into a {self.shape} one.")
        if other._widths is not None:
            self._check_widths(*other._widths)
        self.cross += other.cross
        self.self_a += other.self_a
        self.self_b += other.self_b
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
        terms = HsicTerms(self.cross, self.self_a, self.self_b, self.n_rows, "unbiased", "minibatch")
        values = cka_from_terms(terms, self.names_a, self.names_b)
        return LayerMatrix(
            values=values, metric="linear_cka_minibatch", n_rows=self.n_rows, form="minibatch",
            options={"estimator": "unbiased", "n_batches": self.n_batches},
            notes=negative_notes(values, "unbiased"),
        )
