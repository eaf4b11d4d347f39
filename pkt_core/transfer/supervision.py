"""Source supervision in target space, computed once before any training.

For every target layer k the mapping names source layer(s) and weights. The source states at
those layers (block output, or the block's residual contribution) are combined with the
weights, optionally passed through the source's final norm, and mapped with
``M = S_tgt S_src^T``. Rows are then rescaled to the norm of the untouched target's own
state at the same place: the bases are overcomplete, so the recomposition is faithful in
direction only, and the logit-space loss needs a sensible scale (cosine losses ignore it).

Everything is kept padded as (samples x tokens x D_tgt), so a minibatch is an index away.
No gradient ever flows into the source: supervision tensors are plain constants.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pkt_core.capture.hooks import ResidualRecorder, record_residuals
from pkt_core.models.loading import LoadedModel
from pkt_core.transfer.alignment_data import TokenisedSamples
from pkt_core.transfer.forward import forward_to_frontier, run_through_layer
from pkt_core.transfer.layer_mapping import LayerMapping

SITE_TO_CAPTURE = {"block_output": "resid_post", "contribution": "contribution"}


@dataclass
class LayerStates:
    """Padded per-layer states of one model over all samples, per site."""

    states: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)  # (layer, site) -> n x T x D
    log_probs_at_answers: torch.Tensor | None = None  # rows x V, rows = prediction positions in order


class LayerStateBuffers:
    """The per-batch states of one pass over the samples, gathered into padded :class:`LayerStates`.

    The one accumulator of every pass that records states (:func:`collect_layer_states`, the
    attribution's forward), so a state is the same float32 copy whichever pass recorded it."""

    def __init__(self, layers: list[int], sites: set[str], length: int, with_answer_log_probs: bool = False) -> None:
        self.layers, self.sites, self.length = list(layers), set(sites), length
        self.with_answer_log_probs = with_answer_log_probs
        self.pieces: dict[tuple[int, str], list[torch.Tensor]] = {(l, s): [] for l in self.layers for s in self.sites}
        self.answer_rows: list[torch.Tensor] = []

    def add(self, recorder: ResidualRecorder, answer_logits: torch.Tensor | None = None) -> None:
        """One batch: the recorded block inputs and outputs, and its answer-position logits when kept."""
        for layer in self.layers:
            pre = recorder.resid_pre[layer].detach().to("cpu", torch.float32)
            post = recorder.resid_post[layer].detach().to("cpu", torch.float32)
            for site in self.sites:
                self.pieces[(layer, site)].append(post if site == "block_output" else post - pre)
        if self.with_answer_log_probs:
            self.answer_rows.append(answer_logits.detach().float().log_softmax(dim=-1).cpu())

    def result(self, layers: list[int] | None = None) -> LayerStates:
        """The padded states (of ``layers`` only, when given) and the answer log-probabilities."""
        keep = set(self.layers if layers is None else layers)
        states = {key: torch.cat([_pad_to(piece, self.length) for piece in pieces])
                  for key, pieces in self.pieces.items() if key[0] in keep}
        return LayerStates(states, torch.cat(self.answer_rows) if self.with_answer_log_probs else None)


def collect_layer_states(
    loaded: LoadedModel,
    samples: TokenisedSamples,
    layers: list[int],
    sites: set[str],
    batch_size: int,
    with_answer_log_probs: bool = False,
    trim_batches: bool = False,
) -> LayerStates:
    """No-grad pass over all samples keeping the requested layers and sites (padded, on CPU).

    With answer log-probabilities, or ``trim_batches``, each batch is trimmed to its longest
    sequence (the batches of the attribution's pass) and, for the log-probabilities, run to the
    final norm with the head applied at the answer positions only
    (:func:`pkt_core.transfer.forward.forward_to_frontier`). Otherwise batches keep the samples'
    padded length. Either way nothing past the deepest requested layer is computed unless the
    log-probabilities need it: the states are those of a full forward."""
    buffers = LayerStateBuffers(layers, sites, samples.input_ids.shape[1], with_answer_log_probs)
    deepest = max(layers, default=0)
    for start in range(0, len(samples), batch_size):
        indices = list(range(start, min(start + batch_size, len(samples))))
        index = torch.as_tensor(indices)
        with torch.no_grad(), record_residuals(loaded.model, layers) as recorder:
            answer_logits = None
            if with_answer_log_probs:
                answer_logits = forward_to_frontier(loaded, samples.select(indices), loaded.adapter.num_layers - 1,
                                                    True).answer_logits
            elif trim_batches:
                forward_to_frontier(loaded, samples.select(indices), deepest, False)
            else:
                run_through_layer(loaded, samples.input_ids[index], samples.attention_mask[index], deepest)
            buffers.add(recorder, answer_logits)
    return buffers.result()


def _pad_to(tensor: torch.Tensor, length: int) -> torch.Tensor:
    if tensor.shape[1] == length:
        return tensor
    padding = torch.zeros(tensor.shape[0], length - tensor.shape[1], tensor.shape[2], dtype=tensor.dtype)
    return torch.cat([tensor, padding], dim=1)


def _final_norm_cpu(loaded: LoadedModel):
    norm = loaded.adapter.final_norm()
    device = next(norm.parameters()).device if any(True for _ in norm.parameters()) else torch.device("cpu")

    def apply(states: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return norm(states.to(device, next(norm.parameters()).dtype)).to("cpu", torch.float32)

    return apply


@dataclass
class Supervision:
    """Mapped, scale-matched source states per (target layer, site), plus source answer log-probs.

    ``level`` is ``token`` (one tokenizer: n x T x D per site, answer-position log-probs over the
    vocabulary) or ``sequence`` (two tokenizers, :mod:`pkt_core.transfer.sequence_alignment`:
    n x D pooled per site, anchor log-probs over the shared tokens ``shared_target_ids``)."""

    targets: dict[tuple[int, str], torch.Tensor]
    source_log_probs: torch.Tensor | None
    final_norm_applied: bool
    level: str = "token"
    shared_target_ids: torch.Tensor | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat dict for saving (resume reuses it instead of running the source again)."""
        flat = {f"target.{layer}.{site}": value for (layer, site), value in self.targets.items()}
        if self.source_log_probs is not None:
            flat["source_log_probs"] = self.source_log_probs
        if self.shared_target_ids is not None:
            flat["shared_target_ids"] = self.shared_target_ids
        flat["sequence_level"] = torch.tensor([self.level == "sequence"])
        return flat

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], final_norm_applied: bool) -> Supervision:
        targets = {}
        for key, value in tensors.items():
            if key.startswith("target."):
                _, layer, site = key.split(".", 2)
                targets[(int(layer), site)] = value
        sequence = "sequence_level" in tensors and bool(tensors["sequence_level"].item())
        return cls(targets, tensors.get("source_log_probs"), final_norm_applied,
                   level="sequence" if sequence else "token", shared_target_ids=tensors.get("shared_target_ids"))


def build_supervision(
    source: LoadedModel,
    target_before: LayerStates,
    samples: TokenisedSamples,
    mapping: LayerMapping,
    cross_map: torch.Tensor,
    sites: set[str],
    target_layers: list[int],
    apply_final_norm: bool,
    target_norm,
    batch_size: int,
    with_answer_log_probs: bool,
    source_states: LayerStates | None = None,
) -> Supervision:
    """``source_states``: the source's states on ``samples`` from a pass already made (the attribution's,
    holding at least the mapped layers and ``sites``); None runs the source here."""
    needed = sorted({layer for k in target_layers for layer in mapping.sources_of(k)[0]})
    if source_states is None:
        source_states = collect_layer_states(source, samples, needed, sites, batch_size, with_answer_log_probs)
    source_norm = _final_norm_cpu(source) if apply_final_norm else None
    valid = samples.attention_mask.bool()
    targets: dict[tuple[int, str], torch.Tensor] = {}
    for k in target_layers:
        layers, weights = mapping.sources_of(k)
        for site in sites:
            combined = sum(w * source_states.states[(l, site)] for l, w in zip(layers, weights))
            normalised_site = apply_final_norm and site == "block_output"
            if normalised_site:
                combined = source_norm(combined)
            mapped = combined @ cross_map.T  # n x T x D_tgt
            own = target_before.states[(k, site)]
            if normalised_site:
                own = target_norm(own)
            scale = own.norm(dim=-1, keepdim=True) / mapped.norm(dim=-1, keepdim=True).clamp(min=1e-12)
            mapped = mapped * scale
            mapped[~valid] = 0.0
            targets[(k, site)] = mapped
    return Supervision(targets, source_states.log_probs_at_answers if with_answer_log_probs else None, apply_final_norm)
