"""Layer attribution on the source (v1): Layer Gradient x Activation, as in Captum.

Gradient of the task loss (cross-entropy on answer tokens only) with respect to each decoder
layer's output, times that output, summed over tokens and channels: one score per layer.
``abs`` sums |grad x act| (how much a layer matters), ``signed`` sums grad x act.
Parameters get no gradient (only activations do), so memory stays that of a forward pass
with stored activations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pkt_core.capture.hooks import record_residuals
from pkt_core.models.loading import LoadedModel
from pkt_core.transfer.alignment_data import TokenisedSamples
from pkt_core.transfer.forward import answer_loss, forward_to_frontier
from pkt_core.transfer.supervision import LayerStateBuffers

PAPER_VERSION = "v1"


@dataclass(frozen=True)
class LayerAttribution:
    abs_scores: np.ndarray
    signed_scores: np.ndarray
    samples: int

    def scores(self, aggregation: str) -> np.ndarray:
        if aggregation not in {"abs", "signed"}:
            raise ValueError("aggregation must be 'abs' or 'signed'")
        return self.abs_scores if aggregation == "abs" else self.signed_scores

    def table(self) -> list[dict]:
        return [
            {"source_layer": layer, "abs": float(a), "signed": float(s)}
            for layer, (a, s) in enumerate(zip(self.abs_scores, self.signed_scores))
        ]


def layer_gradient_x_activation(loaded: LoadedModel, samples: TokenisedSamples, batch_size: int = 8,
                                states: LayerStateBuffers | None = None) -> LayerAttribution:
    """Attribution of every decoder layer over ``samples``, in batches trimmed to their longest sequence.

    ``states``, when given, also receives each batch's block inputs and outputs at its layers and
    its answer-position logits: the same forward then serves the supervision, which needs exactly
    these states of the source on the same samples (values identical to a separate no-grad pass
    over the same batches, :func:`pkt_core.transfer.supervision.collect_layer_states` with answer
    log-probabilities)."""
    model = loaded.model
    layers = loaded.adapter.decoder_layers()
    requires = {name: p.requires_grad for name, p in model.named_parameters()}
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    abs_scores = np.zeros(len(layers))
    signed_scores = np.zeros(len(layers))
    try:
        for start in range(0, len(samples), batch_size):
            batch = samples.select(list(range(start, min(start + batch_size, len(samples)))))
            outputs: dict[int, torch.Tensor] = {}
            handles = []

            def keep(index, outputs=outputs):
                def hook(module, args, kwargs, output):
                    hidden = output[0] if isinstance(output, tuple) else output
                    hidden.retain_grad()
                    outputs[index] = hidden
                return hook

            embedding_handle = loaded.adapter.input_embeddings().register_forward_hook(
                lambda module, args, output: output.requires_grad_(True)
            )
            handles.append(embedding_handle)
            for index, layer in enumerate(layers):
                handles.append(layer.register_forward_hook(keep(index), with_kwargs=True))
            try:
                with record_residuals(model, states.layers if states is not None else []) as recorder:
                    outputs_at_final = forward_to_frontier(loaded, batch, len(layers) - 1, need_logits=True)
                    if states is not None:
                        states.add(recorder, outputs_at_final.answer_logits)
                loss = answer_loss(outputs_at_final.answer_logits, batch) * len(batch)  # sum over samples
                loss.backward()
            finally:
                for handle in handles:
                    handle.remove()
            valid = batch.attention_mask.bool()
            for index, hidden in outputs.items():
                product = (hidden.grad * hidden).detach().float()[valid.to(hidden.device)]
                abs_scores[index] += float(product.abs().sum())
                signed_scores[index] += float(product.sum())
    finally:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(requires[name])
    return LayerAttribution(abs_scores, signed_scores, len(samples))
