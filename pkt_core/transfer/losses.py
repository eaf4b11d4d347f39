"""Alignment losses (docs/method.md section 4). Each takes target-side tensors and constant
supervision (no gradient into the source) and returns a scalar; each is 0 when the target
equals its supervision.

Shapes: ``states`` and ``supervision`` are (rows x D_tgt) for token-wise losses; the relation
loss takes lists of per-sequence (tokens x D_tgt) blocks; logits are (rows x V).
"""

from __future__ import annotations

from collections.abc import Sequence

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


def layer_cosine_loss(states: torch.Tensor, supervision: torch.Tensor) -> torch.Tensor:
    """v1 layer loss: ``1 - mean cos(h_tgt, h~_tgt)`` over rows."""
    return 1.0 - F.cosine_similarity(states, supervision.detach(), dim=-1).mean()


def output_cosine_loss(logits: torch.Tensor, answer_ids: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """v1 output loss: ``1 - mean cos(z, y)`` between logits and the (smoothed) one-hot answer token."""
    vocab = logits.shape[-1]
    target = torch.full_like(logits, label_smoothing / vocab)
    target.scatter_(-1, answer_ids.unsqueeze(-1), 1.0 - label_smoothing + label_smoothing / vocab)
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
        gram_target = _centred_gram(target_block)
        gram_source = _centred_gram(source_block.detach())
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
    """
    logits = states @ head_weight.T
    reference_logits = (supervision.detach() @ head_weight.T).detach()
    probabilities = reference_logits.softmax(dim=-1)
    difference = logits - reference_logits
    centred = difference - (probabilities * difference).sum(dim=-1, keepdim=True)
    return 0.5 * (probabilities * centred.square()).sum(dim=-1).mean()


def output_kl_loss(target_logits: torch.Tensor, source_log_probs: torch.Tensor) -> torch.Tensor:
    """KL(p_src || p_tgt) on final logits, averaged over rows (distillation)."""
    target_log_probs = target_logits.log_softmax(dim=-1)
    source_log_probs = source_log_probs.detach()
    return (source_log_probs.exp() * (source_log_probs - target_log_probs)).sum(dim=-1).mean()
