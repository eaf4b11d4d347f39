"""The centred thin SVD of one representation, shared by the CCA family and Procrustes.

Computed once per layer, so that comparing ``L_a x L_b`` layers costs one SVD per layer
plus a small ``r_a x r_b`` problem per pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pkt_core.similarity.validation import centred_float64


@dataclass(frozen=True)
class SpectralBasis:
    """``(X - mean) / 2**e = u @ diag(s) @ vt`` keeping only singular values above the rank tolerance.

    ``2**e`` is the power of two that brings the centred layer's largest entry below 1 (see
    ``validation``); the measures built on this basis use only ratios of ``s``, so it cancels.
    """

    u: np.ndarray  # (n, r): orthonormal basis of the centred column space
    s: np.ndarray  # (r,): singular values, descending, all > tolerance
    vt: np.ndarray  # (r, d)
    name: str

    @property
    def n_rows(self) -> int:
        return int(self.u.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.vt.shape[1])

    @property
    def rank(self) -> int:
        return int(self.s.shape[0])

    def truncated(self, k: int) -> SpectralBasis:
        return SpectralBasis(self.u[:, :k], self.s[:k], self.vt[:k], self.name)


def spectral_basis(x: Any, name: str, min_rows: int = 2, why: str = "this measure") -> SpectralBasis:
    xc = centred_float64(x, name, min_rows, why)
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    # NumPy's matrix_rank tolerance: singular values below it are rounding noise, and
    # keeping them would let CCA "whiten" noise into spurious unit correlations.
    tolerance = s[0] * max(xc.shape) * np.finfo(np.float64).eps
    rank = int((s > tolerance).sum())
    return SpectralBasis(u[:, :rank], s[:rank], vt[:rank], name)
