"""SemAlign across two tokenizers: alignment per sequence instead of per token.

When source and target tokenize text differently, token ``t`` of one model has no partner in
the other, so the token-wise supervision of :mod:`pkt_core.transfer.supervision` does not exist.
What both models do share is the text: each reads the same prompt and answer with its own
tokenizer, and two places line up exactly:

* the **sequence**: the mean of a layer's states over the sequence's tokens (padding and, by
  default, position 0 left out) summarises the same text in both models;
* the **anchor**: the last prompt token, whose next-token prediction is the answer's first
  token in both tokenizations (the prompt ends at the same character).

The semantic bases are built on the shared-token subset (the strings both vocabularies hold,
index-aligned by :func:`pkt_core.models.vocabulary.compare_vocabularies`), so ``M = S_tgt S_src^T``
decomposes over tokens that mean the same string on both sides. The losses then compare:

* ``layer_cosine``: pooled target state vs. pooled mapped source state, per sequence;
* ``relation``: the Gram geometry *between sequences* of a minibatch (pooled contributions),
  the one relation structure both models share;
* ``fisher_logit``: target block output at the anchor vs. the mapped source state there;
* ``output_kl``: next-token distributions at the anchor, both restricted to the shared tokens
  and renormalised;
* ``output_cosine`` / ``answer_ce`` read the target alone and are unchanged.

This mode is this project's extension (the paper assumes one vocabulary); runs record it as
``alignment_level: sequence`` in the manifest. No gradient reaches the source.
"""

from __future__ import annotations

import torch

from pkt_core.capture.hooks import position_ids_from_mask
from pkt_core.models.loading import LoadedModel
from pkt_core.transfer import losses as loss_functions
from pkt_core.transfer.alignment_data import TokenisedSamples
from pkt_core.transfer.layer_mapping import LayerMapping
from pkt_core.transfer.supervision import LayerStates, Supervision, collect_layer_states

ANCHOR_SITE = "block_output_anchor"
SEQUENCE_LEVEL = "sequence"
LEVEL_NOTE = ("sequence-level alignment across tokenizers (pooled states per sequence, anchor = last prompt "
              "token, bases on the shared-token subset): this project's extension, not in the paper")


def sequence_token_mask(samples: TokenisedSamples, drop_first_position: bool) -> torch.Tensor:
    """Tokens that enter a sequence mean: not padding, and not position 0 unless asked."""
    mask = samples.attention_mask.bool().clone()
    if drop_first_position:
        mask &= position_ids_from_mask(samples.attention_mask) > 0
    return mask


def pooled(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked tokens of each sequence: (n x T x D), (n x T) -> (n x D)."""
    weights = mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def anchor_positions(samples: TokenisedSamples) -> torch.Tensor:
    """Per sequence, the position of the last prompt token (it predicts the answer's first token)."""
    first_answer = samples.answer_mask.float().argmax(dim=1)
    if bool((first_answer < 1).any()):
        raise ValueError("a sample's answer starts at position 0: it has no prompt token to anchor on")
    return first_answer - 1


def first_answer_rows(samples: TokenisedSamples) -> torch.Tensor:
    """Indices, in the rows of ``answer_logits`` (prediction positions in row-major order), of each
    sequence's anchor prediction."""
    counts = samples.prediction_mask().sum(dim=1)
    return torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)[:-1]])


def shared_log_probs(logits_or_log_probs: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Log-probabilities over the shared tokens only, renormalised (equal to log_softmax of the
    subset's logits whether given logits or full log-probabilities)."""
    subset = logits_or_log_probs[:, token_ids.to(logits_or_log_probs.device)].float()
    return subset - subset.logsumexp(dim=-1, keepdim=True)


def build_sequence_supervision(
    source: LoadedModel,
    target: LoadedModel,
    source_samples: TokenisedSamples,
    target_samples: TokenisedSamples,
    mapping: LayerMapping,
    cross_map: torch.Tensor,
    sites: set[str],
    target_layers: list[int],
    apply_final_norm: bool,
    source_norm,
    target_norm,
    batch_size: int,
    drop_first_position: bool,
    shared_pairs: torch.Tensor,
    with_anchor_log_probs: bool,
    with_anchor_states: bool,
    source_states: LayerStates | None = None,
) -> Supervision:
    """Pooled (and anchor) source states mapped into the target, scaled to the target's own.

    ``source_samples`` and ``target_samples`` hold the same texts in the same order, each
    tokenized by its own model; ``shared_pairs`` is (k x 2) (source id, target id).
    ``source_states``: the source's states on ``source_samples`` from a pass already made (the
    attribution's, with at least the mapped layers, ``sites`` and, where asked, the answer
    log-probabilities); None runs the source here."""
    if source_samples.sample_ids != target_samples.sample_ids:
        raise ValueError("source and target samples must be the same texts in the same order")
    needed = sorted({layer for k in target_layers for layer in mapping.sources_of(k)[0]})
    if source_states is None:
        source_states = collect_layer_states(source, source_samples, needed, sites, batch_size, with_anchor_log_probs)
    target_states = collect_layer_states(target, target_samples, target_layers, sites, batch_size)
    source_mask = sequence_token_mask(source_samples, drop_first_position)
    target_mask = sequence_token_mask(target_samples, drop_first_position)
    rows = torch.arange(len(source_samples))
    source_anchor, target_anchor = anchor_positions(source_samples), anchor_positions(target_samples)

    def scaled(mapped: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        return mapped * (own.norm(dim=-1, keepdim=True) / mapped.norm(dim=-1, keepdim=True).clamp(min=1e-12))

    targets: dict[tuple[int, str], torch.Tensor] = {}
    for k in target_layers:
        layers, weights = mapping.sources_of(k)
        for site in sites:
            combined = sum(w * source_states.states[(l, site)] for l, w in zip(layers, weights))
            own = target_states.states[(k, site)]
            if apply_final_norm and site == "block_output":
                combined, own = source_norm(combined), target_norm(own)
            targets[(k, site)] = scaled(pooled(combined, source_mask) @ cross_map.T, pooled(own, target_mask))
            if with_anchor_states and site == "block_output":
                targets[(k, ANCHOR_SITE)] = scaled(combined[rows, source_anchor] @ cross_map.T,
                                                   own[rows, target_anchor])
    anchor_log_probs = None
    if with_anchor_log_probs:
        anchors = source_states.log_probs_at_answers[first_answer_rows(source_samples)]
        anchor_log_probs = shared_log_probs(anchors, shared_pairs[:, 0])
    return Supervision(targets, anchor_log_probs, apply_final_norm, level=SEQUENCE_LEVEL,
                       shared_target_ids=shared_pairs[:, 1].clone())


def sequence_stage_losses(
    loaded: LoadedModel,
    outputs,
    batch: TokenisedSamples,
    indices: list[int],
    layer: int,
    supervision: Supervision,
    config,
) -> dict[str, torch.Tensor]:
    """Every configured loss term for one minibatch at the frontier ``layer``, per sequence."""
    device = outputs.resid_post.device
    index = torch.as_tensor(indices)
    mask = sequence_token_mask(batch, config.drop_first_position).to(device)

    def supervised(site: str) -> torch.Tensor:
        return supervision.targets[(layer, site)][index].to(device, torch.float32)

    def site_states(site: str) -> torch.Tensor:
        from pkt_core.transfer.forward import frontier_site_states

        return frontier_site_states(loaded, outputs, site, supervision.final_norm_applied)

    terms: dict[str, torch.Tensor] = {}
    weights = {name: weight for name, weight in config.losses.items() if weight}
    if "layer_cosine" in weights:
        site = config.layer_site
        terms["layer_cosine"] = loss_functions.layer_cosine_loss(pooled(site_states(site), mask), supervised(site))
    if "relation" in weights:
        contributions = pooled(site_states("contribution"), mask)
        if len(indices) >= 2:
            terms["relation"] = loss_functions.relation_geometry_loss([contributions], [supervised("contribution")])
        else:  # one sequence has no between-sequence geometry: a zero that keeps the graph
            terms["relation"] = contributions.sum() * 0.0
    if "fisher_logit" in weights:
        head = loaded.adapter.lm_head().weight
        anchors = anchor_positions(batch).to(device)
        states = site_states("block_output")[torch.arange(len(indices), device=device), anchors]
        terms["fisher_logit"] = loss_functions.fisher_logit_loss(states, supervised(ANCHOR_SITE), head)
    if "output_cosine" in weights:
        logits = outputs.answer_logits.float()
        answers = batch.next_tokens()[batch.prediction_mask()].to(logits.device)
        terms["output_cosine"] = loss_functions.output_cosine_loss(logits, answers)
    if "answer_ce" in weights:
        from pkt_core.transfer.forward import answer_loss

        terms["answer_ce"] = answer_loss(outputs.answer_logits, batch)
    if "output_kl" in weights:
        anchor_logits = outputs.answer_logits[first_answer_rows(batch).to(outputs.answer_logits.device)]
        shared_logits = anchor_logits[:, supervision.shared_target_ids.to(anchor_logits.device)].float()
        source = supervision.source_log_probs[index].to(shared_logits.device)
        terms["output_kl"] = loss_functions.output_kl_loss(shared_logits, source)
    return terms
