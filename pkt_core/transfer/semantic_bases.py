"""Vocabulary-defined semantic bases (v1 paper, section 1 of docs/method.md).

The basis of token i is ``s_i = pinv(W) e_i``: the least-squares hidden state that would produce
the one-hot logit vector of token i through the LM head ``W`` (V x D). Columns are normalised to
unit length. ``S`` is D x m (m = V, or the shared-token subset).

Decomposing a hidden state h onto the bases with cosine coefficients, ``a = S^T h / ||h||``, and
recomposing, ``S a``, is one fixed linear map, so everything here works through D x D or
D_tgt x D_src matrices and never forms the m-dimensional intermediate in a loop.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pkt_core.models.loading import LoadedModel
from pkt_core.paths import pkt_home
from pkt_core.transfer.model_cache import cached_tensors, weights_identity

PAPER_VERSION = "v1"
COEFFICIENT_METHODS = ("cosine", "least_squares")
SIDES = ("output", "input")


def pseudo_inverse_tall(weight: torch.Tensor, rcond: float = 1e-10) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse of a tall V x D matrix (V >> D), in float64, as D x V.

    Through the D x D Gram matrix: with ``W^T W = Q diag(lam) Q^T``,
    ``pinv(W) = Q diag(1/lam) Q^T W^T`` (eigenvalues below ``rcond^2 * max`` treated as zero,
    matching an SVD cut at ``rcond``). Equal to the SVD route, at a fraction of its memory.
    """
    weight64 = weight.detach().to("cpu", torch.float64)
    gram = weight64.T @ weight64
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    cutoff = (rcond**2) * eigenvalues.max().clamp(min=0)
    inverse = torch.where(eigenvalues > cutoff, 1.0 / eigenvalues, torch.zeros_like(eigenvalues))
    return (eigenvectors * inverse) @ eigenvectors.T @ weight64.T


def semantic_basis(head_weight: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Unit-norm columns of pinv(W) (D x m), computed in float64 for a stable pseudo-inverse.

    ``head_weight`` is V x D (Hugging Face layout). ``token_ids`` selects the columns (the shared
    subset, in the order that index-aligns two models); default all tokens.
    """
    pseudo_inverse = pseudo_inverse_tall(head_weight)  # D x V
    if token_ids is not None:
        pseudo_inverse = pseudo_inverse[:, token_ids]
    norms = pseudo_inverse.norm(dim=0, keepdim=True).clamp(min=torch.finfo(torch.float64).tiny)
    return (pseudo_inverse / norms).to(torch.float32)


def _subset_name(token_ids: torch.Tensor | None) -> str:
    return "all" if token_ids is None else hashlib.sha256(token_ids.numpy().tobytes()).hexdigest()[:12]


def basis_cache_path(fingerprint: str, side: str, token_ids: torch.Tensor | None) -> Path:
    return pkt_home() / "semantic_bases" / f"{fingerprint}-{side}-{_subset_name(token_ids)}.safetensors"


def cached_semantic_basis(
    weight: torch.Tensor, fingerprint: str, side: str = "output", token_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """The basis of a model, computed once per (model fingerprint, side, subset) and kept on disk."""
    path = basis_cache_path(fingerprint, side, token_ids)
    if path.is_file():
        return load_file(str(path))["basis"]
    basis = semantic_basis(weight, token_ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    save_file({"basis": basis.contiguous()}, str(temporary))
    temporary.replace(path)
    return basis


def _side_weight(loaded: LoadedModel, side: str) -> torch.Tensor:
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, not {side!r}")
    return loaded.adapter.lm_head().weight if side == "output" else loaded.adapter.input_embeddings().weight


def model_semantic_basis(loaded: LoadedModel, side: str = "output", token_ids: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """A loaded model's basis from its LM head (``output``) or input embeddings (``input``), cached per
    stored weights (:func:`~pkt_core.transfer.model_cache.weights_identity`): the basis is computed from
    the weights in float64 with no forward pass, so fp32 and bf16 autocast share one entry."""
    identity = weights_identity(loaded)
    path = basis_cache_path(identity, side, token_ids)
    legacy = basis_cache_path(loaded.fingerprint, side, token_ids)
    if not path.is_file() and legacy != path and legacy.is_file():
        # Earlier versions keyed on the full fingerprint (``~bf16`` included): the same weights, the
        # same basis. A hard link adopts that entry without a second copy on disk.
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(legacy, path)
        except OSError:
            pass
    return cached_semantic_basis(_side_weight(loaded, side), identity, side, token_ids)


def model_recomposition_operator(loaded: LoadedModel, side: str, coefficients: str = "cosine"
                                 ) -> tuple[torch.Tensor, str]:
    """The model's recomposition operator P (D x D, float64) for one side of its bases, cached per stored
    weights, side and coefficients (four m-term GEMMs a run no longer repeats); and whether it came from
    the cache (:data:`~pkt_core.transfer.model_cache.HIT`) or was computed."""
    if coefficients not in COEFFICIENT_METHODS:
        raise ValueError(f"coefficients must be one of {COEFFICIENT_METHODS}, not {coefficients!r}")
    key = f"{weights_identity(loaded)}-{side}-all-{coefficients}"
    tensors, status = cached_tensors("recomposition_operator", key, lambda: {
        "operator": recomposition_operator(model_semantic_basis(loaded, side), coefficients)})
    return tensors["operator"], status


def pair_cross_model_map(target: LoadedModel, source: LoadedModel, target_ids: torch.Tensor | None = None,
                         source_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, str]:
    """``M = S_tgt S_src^T`` of a pair (output-side bases, optionally on index-aligned token subsets),
    cached per (target weights, target subset, source weights, source subset); and its cache status."""
    key = (f"{weights_identity(target)}-{_subset_name(target_ids)}--"
           f"{weights_identity(source)}-{_subset_name(source_ids)}")
    tensors, status = cached_tensors("cross_map", key, lambda: {"cross_map": cross_model_map(
        model_semantic_basis(target, "output", target_ids), model_semantic_basis(source, "output", source_ids))})
    return tensors["cross_map"], status


def cross_model_map(target_basis: torch.Tensor, source_basis: torch.Tensor) -> torch.Tensor:
    """``M = S_tgt S_src^T`` (D_tgt x D_src): decompose in the source, recompose in the target.

    For a source state h, ``M h / ||h||`` equals ``S_tgt a`` with the cosine coefficients
    ``a = S_src^T h / ||h||``. The columns of both bases must be index-aligned (same token i).
    """
    if target_basis.shape[1] != source_basis.shape[1]:
        raise ValueError(
            f"bases are not index-aligned: target has {target_basis.shape[1]} columns, source {source_basis.shape[1]}"
        )
    # A sum over m = V terms of bounded products: float32 GEMM is accurate to ~1e-5 here and
    # several times faster than float64 on a CPU (the m x D factors are the big part).
    return target_basis.float() @ source_basis.float().T


@dataclass(frozen=True)
class FidelityResult:
    """Mean and spread of cos(recomposed, original) over the rows of one layer."""

    mean_cosine: float
    std_cosine: float
    rows: int


def recomposition_operator(basis: torch.Tensor, coefficients: str = "cosine") -> torch.Tensor:
    """D x D operator P with recomposed = P h (up to the positive scale 1/||h||, which cosines ignore).

    cosine: P = S S^T. least_squares: a = pinv(S) h, so P = S pinv(S), the projector on the span of S.
    """
    if coefficients not in COEFFICIENT_METHODS:
        raise ValueError(f"coefficients must be one of {COEFFICIENT_METHODS}, not {coefficients!r}")
    if coefficients == "cosine":
        return (basis.float() @ basis.float().T).double()  # float32 GEMM over m terms, as in cross_model_map
    basis64 = basis.double()
    return basis64 @ torch.linalg.pinv(basis64)


def decomposition_fidelity(states: torch.Tensor, operator: torch.Tensor) -> FidelityResult:
    """How faithfully a layer's states (rows x D) survive decomposition and recomposition."""
    states64 = states.double()
    recomposed = states64 @ operator.T
    cosines = torch.nn.functional.cosine_similarity(recomposed, states64, dim=1)
    return FidelityResult(float(cosines.mean()), float(cosines.std(unbiased=False)), int(states.shape[0]))


def heads_are_tied(head_weight: torch.Tensor, embedding_weight: torch.Tensor, tolerance: float = 0.2) -> tuple[bool, float]:
    """Whether output- and input-side matrices are (nearly) the same, and their relative difference.

    On such a model the paper's output-side vs input-side contrast cannot appear: the two bases
    are the same up to noise (Qwen2.5 ties them; its 4-bit GGUF mirrors store two copies that
    differ by quantisation noise, 4 to 8 % relative here). Untied heads of real models differ by
    far more (their matrices are nearly orthogonal as vectors), hence the 20 % bound.
    """
    if head_weight.shape != embedding_weight.shape:
        return False, float("inf")
    if head_weight.data_ptr() == embedding_weight.data_ptr():
        return True, 0.0
    # On CPU in float64: on a sharded model the head and the embeddings sit on different GPUs.
    head, embedding = head_weight.detach().to("cpu", torch.float64), embedding_weight.detach().to("cpu", torch.float64)
    relative = float((head - embedding).norm() / head.norm().clamp(min=1e-30))
    return relative < tolerance, relative
