"""Alignment losses (docs/method.md section 4). Each takes target-side tensors and constant
supervision (no gradient into the source) and returns a scalar; each is 0 when the target
equals its supervision.

Shapes: ``states`` and ``supervision`` are (rows x D_tgt) for token-wise losses; the relation
loss takes lists of per-sequence (tokens x D_tgt) blocks; logits are (rows x V).

Precision: every loss computes in float32 with autocast off, whatever its inputs are (bf16
states under a bf16 policy): softmaxes, sums over the vocabulary and Gram matrices lose too
much in bf16 (the Fisher surrogate came out 5.5e-5 where float32 gives 1.78e-5). Inputs on
different devices (a sharded model) are brought to the first input's device.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F

LOSS_PAPER_VERSIONS = {
    "layer_cosine": "v1",
    "output_cosine": "v1",
    "relation": "v2-reconstructed",
    "fisher_logit": "v2-acl-reconstructed",
    "output_kl": "distillation term (all versions)",
    "answer_ce": "LM loss on the answer tokens (controls and peer methods)",
    "delta_penalty": "Tan et al. ACL 2025: MSE(delta, 0) on the hypernetworks' outputs",
}


@contextmanager
def _float32_math(reference: torch.Tensor):
    """Autocast off on ``reference``'s device: the loss arithmetic below stays float32."""
    with torch.autocast(reference.device.type, enabled=False):
        yield


def _wide(tensor: torch.Tensor) -> torch.Tensor:
    """At least float32 (float64 inputs stay float64)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _as_float32(tensor: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``tensor`` on ``reference``'s device, in the wider of float32 and ``reference``'s dtype."""
    return tensor.to(reference.device, torch.promote_types(reference.dtype, torch.float32))


def layer_cosine_loss(states: torch.Tensor, supervision: torch.Tensor) -> torch.Tensor:
    """v1 layer loss: ``1 - mean cos(h_tgt, h~_tgt)`` over rows."""
    with _float32_math(states):
        return 1.0 - F.cosine_similarity(_wide(states), _as_float32(supervision.detach(), states), dim=-1).mean()


def output_cosine_loss(logits: torch.Tensor, answer_ids: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """v1 output loss: ``1 - mean cos(z, y)`` between logits and the (smoothed) one-hot answer token."""
    vocab = logits.shape[-1]
    with _float32_math(logits):
        logits = _wide(logits)
        target = torch.full_like(logits, label_smoothing / vocab)
        target.scatter_(-1, answer_ids.to(logits.device).unsqueeze(-1), 1.0 - label_smoothing + label_smoothing / vocab)
        return 1.0 - F.cosine_similarity(logits, target, dim=-1).mean()


def _centred_gram(block: torch.Tensor) -> torch.Tensor:
    centred = block - block.mean(dim=0, keepdim=True)
    return centred @ centred.T


def relation_geometry_loss(contributions: Sequence[torch.Tensor], supervision: Sequence[torch.Tensor]) -> torch.Tensor:
    """v2 (reconstructed): per sequence, ``1 - linear CKA`` between the token-by-token Gram
    matrices of the target's residual contribution R and the mapped source contribution R~,
    both centred over tokens; averaged over sequences with at least two tokens."""
    losses = []
    for target_block, source_block in zip(contributions, supervision, strict=True):
        if target_block.shape[0] < 2:
            continue
        with _float32_math(target_block):
            gram_target = _centred_gram(_wide(target_block))
            gram_source = _centred_gram(_as_float32(source_block.detach(), target_block))
            similarity = (gram_target * gram_source).sum() / (
                gram_target.norm() * gram_source.norm()
            ).clamp(min=torch.finfo(gram_target.dtype).tiny)
        losses.append(1.0 - similarity)
    if not losses:
        raise ValueError("the relation loss needs sequences of at least two tokens")
    return torch.stack(losses).mean()


def fisher_logit_loss(states: torch.Tensor, supervision: torch.Tensor, head_weight: torch.Tensor) -> torch.Tensor:
    """v2/ACL (reconstructed): second-order expansion of KL on target-space logits.

    ``z = W h``, ``z~ = W h~``, ``p = softmax(z~)``, ``d = z - z~``:
    ``0.5 * sum_v p_v (d_v - sum_u p_u d_u)^2``, averaged over rows.

    In float32 on the head's device. ``d`` is formed as ``W (h - h~)``, not as the difference of
    two V-wide logit vectors: subtracting 151,936 logits of size ~10 to get differences of ~0.01
    throws away the digits the loss is made of.
    """
    weight = head_weight
    with _float32_math(weight):
        weight32 = _wide(weight)
        states32 = _as_float32(states, weight32)
        supervision32 = _as_float32(supervision.detach(), weight32)
        probabilities = (supervision32 @ weight32.T).softmax(dim=-1).detach()
        difference = (states32 - supervision32) @ weight32.T
        centred = difference - (probabilities * difference).sum(dim=-1, keepdim=True)
        return 0.5 * (probabilities * centred.square()).sum(dim=-1).mean()


def output_kl_loss(target_logits: torch.Tensor, source_log_probs: torch.Tensor) -> torch.Tensor:
    """KL(p_src || p_tgt) on final logits, averaged over rows (distillation)."""
    with _float32_math(target_logits):
        target_log_probs = _wide(target_logits).log_softmax(dim=-1)
        source_log_probs = _as_float32(source_log_probs.detach(), target_logits)
        return (source_log_probs.exp() * (source_log_probs - target_log_probs)).sum(dim=-1).mean()
