"""The target's forward pass up to a frontier layer, with answer logits only where asked, and the
answer loss: the pieces attribution, supervision, every stage loss and the peers' trainers share.

The LM head is applied only at the answer-prediction positions: on a 150k vocabulary the full
(tokens x V) logits would cost more than the whole transformer stack.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pkt_core.capture.hooks import position_ids_from_mask
from pkt_core.models.loading import LoadedModel
from pkt_core.models.placement import on_device_of
from pkt_core.transfer.alignment_data import TokenisedSamples


class _StopForward(Exception):
    """Raised from a hook after the frontier layer when nothing downstream is needed."""


@dataclass
class FrontierOutputs:
    resid_pre: torch.Tensor
    resid_post: torch.Tensor
    answer_logits: torch.Tensor | None  # rows = prediction positions, in row-major order


def head_logits(loaded: LoadedModel, normed_rows: torch.Tensor) -> torch.Tensor:
    """LM-head logits of final-normed hidden rows (with Gemma's final soft-capping where set)."""
    logits = loaded.adapter.lm_head()(normed_rows)
    cap = getattr(loaded.model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def forward_to_frontier(
    loaded: LoadedModel, batch: TokenisedSamples, layer: int, need_logits: bool
) -> FrontierOutputs:
    """Run the target up to the frontier layer, or on to the final norm when logits are needed.

    The LM head is applied only at the answer-prediction positions: on a 150k vocabulary the
    full (tokens x V) logits would cost more than the whole transformer stack.
    """
    block = loaded.adapter.decoder_layers()[layer]
    captured: dict[str, torch.Tensor] = {}

    def pre_hook(module, args, kwargs):
        captured["pre"] = args[0] if args else kwargs["hidden_states"]

    def post_hook(module, args, kwargs, output):
        captured["post"] = output[0] if isinstance(output, tuple) else output
        if not need_logits:
            raise _StopForward

    def final_norm_hook(module, args, output):
        captured["final"] = output
        raise _StopForward

    handles = [block.register_forward_pre_hook(pre_hook, with_kwargs=True),
               block.register_forward_hook(post_hook, with_kwargs=True)]
    if need_logits:
        handles.append(loaded.adapter.final_norm().register_forward_hook(final_norm_hook))
    ids = batch.input_ids.to(loaded.input_device)
    mask = batch.attention_mask.to(loaded.input_device)
    try:
        loaded.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    answer_logits = None
    if need_logits:
        final = captured["final"]
        answer_logits = head_logits(loaded, final[batch.prediction_mask().to(final.device)])
    return FrontierOutputs(captured["pre"], captured["post"], answer_logits)


def run_through_layer(loaded: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, last_layer: int
                      ) -> None:
    """Run a batch and stop right after decoder layer ``last_layer``, for hooks that record states up to it.

    What those hooks see is exactly what a full forward gives them; the later layers, the final norm
    and the LM head over every token (a quarter of a 0.5B Qwen's pass, on its 150k vocabulary) are
    never computed. Hooks registered before this call on ``last_layer`` run before the stop."""
    stop = loaded.adapter.decoder_layers()[last_layer].register_forward_hook(_raise_stop)
    ids, mask = input_ids.to(loaded.input_device), attention_mask.to(loaded.input_device)
    try:
        loaded.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False)
    except _StopForward:
        pass
    finally:
        stop.remove()


def _raise_stop(module, args, output):
    raise _StopForward


def frontier_site_states(loaded: LoadedModel, outputs: FrontierOutputs, site: str, final_norm_applied: bool
                         ) -> torch.Tensor:
    """The frontier layer's states at ``site``: block output (final-normed when the supervision
    is) or the block's residual contribution. A final-normed state comes back on the frontier
    layer's device (on a sharded model the final norm sits on the last GPU)."""
    if site != "block_output":
        return outputs.resid_post - outputs.resid_pre
    if not final_norm_applied:
        return outputs.resid_post
    norm = loaded.adapter.final_norm()
    return on_device_of(norm(on_device_of(outputs.resid_post, norm)), outputs.resid_post)


def layer_token_mask(batch: TokenisedSamples, drop_first_position: bool) -> torch.Tensor:
    mask = batch.attention_mask.bool().clone()
    if drop_first_position:
        mask &= position_ids_from_mask(batch.attention_mask) > 0
    return mask


def answer_loss(logits: torch.Tensor, batch: TokenisedSamples) -> torch.Tensor:
    """Mean cross-entropy of the answer tokens (the logit at t predicts the token at t + 1).

    ``logits`` is either (batch x tokens x V) or already the answer-prediction rows (rows x V).
    """
    mask = batch.prediction_mask().to(logits.device)
    targets = batch.next_tokens().to(logits.device)[mask]
    rows = logits if logits.dim() == 2 else logits[mask]
    with torch.autocast(logits.device.type, enabled=False):  # a softmax over the vocabulary: float32
        return torch.nn.functional.cross_entropy(rows.float(), targets)
