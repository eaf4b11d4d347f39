"""LaTen, Locate-then-Align (Tan et al., ACL 2025): neuron-level transfer through hypernetworks.

1. Locate, in both models, on the alignment samples' answer tokens. Each attention and FFN
   sublayer is scored by its logit-lens gain: the answer token's log-probability, read through
   the final norm and LM head, with the sublayer's contribution added to the residual minus
   without it. A *neuron* is an input unit of the sublayer's output projection (an FFN neuron,
   or one channel of the concatenated attention heads); its vector is the projection's column
   for that unit, in residual space.
2. Keep the top layers of each sublayer kind in both models and pair them by rank (the source's
   best attention layer with the target's best, ...); keep the top fraction (10%) of neurons of
   each kept target sublayer, paired by rank with the source sublayer's top neurons.
3. One hypernetwork per pair (Linear -> ReLU -> Linear, D_src -> hidden -> D_tgt, every weight
   and bias drawn with std 1e-5, so it starts at a near-zero delta) maps each extracted source
   neuron vector to a delta on the paired target neuron's vector.
4. Train the hypernetworks (the target stays frozen) on LM loss plus ``1000 * MSE(delta, 0)``,
   then compute the deltas once and add them to the target: only the selected neurons' columns
   change.

Where the paper leaves room, the choices made (and recorded in the manifest): the neuron score
is the first-order share of its sublayer's logit-lens gain (activation x the gain's gradient with
respect to the sublayer output, projected on the neuron's vector), summed over answer tokens;
an exact per-neuron lens would cost a vocabulary-sized pass per neuron. Module gains are
averaged over answer tokens. The delta penalty is one MSE over all hypernetwork outputs. In a
parallel-residual block (GPT-NeoX) the attention contribution is added before the FFN's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pkt_core.models.loading import LoadedModel
from pkt_core.models.placement import on_device_of
from pkt_core.peers.sublayers import BlockLayout, block_layout, find_submodule
from pkt_core.peers.training import answer_ce, train_minibatches
from pkt_core.transfer.alignment_data import TokenisedSamples
from pkt_core.transfer.forward import forward_to_frontier, head_logits
from pkt_core.transfer.frontier import apply_weight_delta, block_parameter_prefix
from pkt_core.transfer.run_skeleton import (
    FULL_DELTA_FORMAT,
    RunContext,
    TrainedTransfer,
    read_table,
)

PAPER_VERSION = "Tan et al. ACL 2025"
KINDS = ("attention", "mlp")
HYPERNETWORK_INIT_STD = 1e-5
LENS_CHUNK_ROWS = 256  # rows x vocabulary logits at a time: 256 x 152k floats is 155 MB
LOCATIONS_TABLE = "laten_locations.parquet"
NEURONS_TABLE = "laten_neurons.parquet"


@dataclass
class SublayerScores:
    """Logit-lens location of one model: mean gain per (layer, kind), neuron scores per (layer, kind)."""

    gains: dict[tuple[int, str], float]
    neuron_scores: dict[tuple[int, str], np.ndarray]
    answer_rows: int

    def ranked_layers(self, kind: str) -> list[int]:
        """Layers by descending gain of their ``kind`` sublayer (ties: the shallower layer)."""
        layers = sorted({layer for layer, k in self.gains if k == kind})
        return sorted(layers, key=lambda layer: (-self.gains[(layer, kind)], layer))

    def top_neurons(self, layer: int, kind: str, count: int) -> list[int]:
        scores = self.neuron_scores[(layer, kind)]
        return sorted(range(len(scores)), key=lambda j: (-scores[j], j))[:count]


def _answer_log_probs(loaded: LoadedModel, hidden: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """Logit lens: log p(answer) of residual rows read through the final norm and LM head."""
    norm = loaded.adapter.final_norm()
    pieces = []
    for start in range(0, hidden.shape[0], LENS_CHUNK_ROWS):
        rows = hidden[start : start + LENS_CHUNK_ROWS]
        log_probs = head_logits(loaded, norm(rows)).float().log_softmax(dim=-1)
        pieces.append(log_probs.gather(-1, answers[start : start + LENS_CHUNK_ROWS, None].to(log_probs.device))[:, 0])
    return torch.cat(pieces)


def logit_lens_location(loaded: LoadedModel, samples: TokenisedSamples, batch_size: int) -> SublayerScores:
    """Score every attention and FFN sublayer, and each of their neurons, on the answer tokens."""
    layout = block_layout(loaded.adapter)
    model, blocks = loaded.model, loaded.adapter.decoder_layers()
    num_layers = len(blocks)
    gains = {(l, k): 0.0 for l in range(num_layers) for k in KINDS}
    neuron_scores = {(l, k): np.zeros(find_submodule(blocks[l], layout.output_projection(k)).in_features)
                     for l in range(num_layers) for k in KINDS}
    rows_seen = 0
    requires = {name: p.requires_grad for name, p in model.named_parameters()}
    for parameter in model.parameters():
        parameter.requires_grad_(False)  # gradients only reach the captured sublayer outputs
    try:
        for start in range(0, len(samples), batch_size):
            batch = samples.select(list(range(start, min(start + batch_size, len(samples)))))
            rows = batch.prediction_mask()
            answers = batch.next_tokens()[rows]
            captured = _capture_sublayers(loaded, layout, batch, rows)
            rows_seen += int(answers.numel())
            # The lens read of the residual just before a sublayer is, as a rule, the read taken with the
            # previous sublayer added: reuse it rather than pay another pass through the LM head (the
            # head dominates this stage when every code token is an answer row). A block whose own sum
            # differs (post-norms, scaled residuals) fails the exact equality check and is read afresh.
            carried: tuple[torch.Tensor, torch.Tensor] | None = None
            for layer in range(num_layers):
                residual = captured[(layer, "resid_pre")]
                for kind in KINDS:
                    activations, output = captured[(layer, kind, "in")], captured[(layer, kind, "out")]
                    output = output.clone().requires_grad_(True)
                    post_norm = layout.post_norm(kind)
                    contribution = find_submodule(blocks[layer], post_norm)(output) if post_norm else output
                    with_sublayer = _answer_log_probs(loaded, residual + contribution, answers)
                    # On a sharded model the next block's input sits on its own GPU: compare there.
                    if carried is not None and torch.equal(on_device_of(carried[0], residual), residual):
                        without = carried[1]
                    else:
                        with torch.no_grad():
                            without = _answer_log_probs(loaded, residual, answers)
                    gains[(layer, kind)] += float((with_sublayer.detach() - without).sum())
                    (gradient,) = torch.autograd.grad(with_sublayer.sum(), output)
                    projection = find_submodule(blocks[layer], layout.output_projection(kind)).weight  # D x I
                    share = activations.float() * (gradient.float() @ projection.detach().float())  # rows x I
                    neuron_scores[(layer, kind)] += share.sum(dim=0).double().cpu().numpy()
                    residual = residual + contribution.detach()
                    carried = (residual, with_sublayer.detach())
    finally:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(requires[name])
    mean_gains = {key: value / max(rows_seen, 1) for key, value in gains.items()}
    return SublayerScores(mean_gains, neuron_scores, rows_seen)


def _capture_sublayers(loaded: LoadedModel, layout: BlockLayout, batch: TokenisedSamples,
                       rows: torch.Tensor) -> dict[tuple, torch.Tensor]:
    """No-grad pass keeping, at the answer rows: each block's input, and each output
    projection's input (neuron activations) and output."""
    captured: dict[tuple, torch.Tensor] = {}
    blocks = loaded.adapter.decoder_layers()
    handles = []

    def block_input(layer):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            captured[(layer, "resid_pre")] = hidden[rows.to(hidden.device)].detach()
        return hook

    def projection(layer, kind):
        def hook(module, args, output):
            mask = rows.to(output.device)
            captured[(layer, kind, "in")] = args[0][mask].detach()
            captured[(layer, kind, "out")] = output[mask].detach()
        return hook

    for layer, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(block_input(layer), with_kwargs=True))
        for kind in KINDS:
            module = find_submodule(block, layout.output_projection(kind))
            handles.append(module.register_forward_hook(projection(layer, kind)))
    try:
        with torch.no_grad():
            forward_to_frontier(loaded, batch, len(blocks) - 1, need_logits=False)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def check_pair(source: LoadedModel, target: LoadedModel, config=None) -> None:
    """Both models need a block layout the peer methods know (raises UnsupportedArchitectureError)."""
    block_layout(source.adapter)
    block_layout(target.adapter)


class NeuronDeltaHypernetwork(nn.Module):
    """Linear -> ReLU -> Linear from a source neuron vector (D_src) to a target neuron delta (D_tgt)."""

    def __init__(self, source_width: int, hidden: int, target_width: int, init_std: float = HYPERNETWORK_INIT_STD):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(source_width, hidden), nn.ReLU(), nn.Linear(hidden, target_width))
        # Every weight and bias tiny: the delta starts near zero, so training starts at the target.
        for parameter in self.net.parameters():
            nn.init.normal_(parameter, std=init_std)

    def forward(self, source_vectors: torch.Tensor) -> torch.Tensor:
        return self.net(source_vectors)

    def sizes(self) -> dict:
        first, last = self.net[0], self.net[2]
        return {"input": first.in_features, "hidden": first.out_features, "output": last.out_features,
                "parameters": sum(p.numel() for p in self.parameters()), "init_std": HYPERNETWORK_INIT_STD}


@dataclass
class NeuronPair:
    """A rank-paired source and target sublayer, their neurons (rank-paired), and its hypernetwork."""

    kind: str
    rank: int
    source_layer: int
    target_layer: int
    source_neurons: list[int]
    target_neurons: list[int]
    target_weight_name: str  # the target output projection's weight, as a model parameter name
    source_vectors: torch.Tensor  # neurons x D_src (the source projection's columns), constant
    hypernetwork: NeuronDeltaHypernetwork

    def delta_matrix(self, delta: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The full-weight delta: ``delta`` (neurons x D_tgt) in the selected columns, zero elsewhere.

        Always float32, whatever the weight stores: the deltas are ~1e-4 (init std 1e-5), and in
        bf16 almost half of them would round away before they are ever added."""
        full = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        full[:, self.target_neurons] = delta.T.to(weight.device, torch.float32)
        return full


def pair_sublayers(source: LoadedModel, target: LoadedModel, source_scores: SublayerScores,
                   target_scores: SublayerScores, top_layers: int, neuron_fraction: float,
                   hidden: int) -> list[NeuronPair]:
    source_layout, target_layout = block_layout(source.adapter), block_layout(target.adapter)
    count = min(top_layers, source.adapter.num_layers, target.adapter.num_layers)
    source_blocks, target_blocks = source.adapter.decoder_layers(), target.adapter.decoder_layers()
    pairs = []
    for kind in KINDS:
        ranked = zip(source_scores.ranked_layers(kind)[:count], target_scores.ranked_layers(kind)[:count])
        for rank, (source_layer, target_layer) in enumerate(ranked):
            source_projection = find_submodule(source_blocks[source_layer], source_layout.output_projection(kind))
            target_path = target_layout.output_projection(kind)
            target_projection = find_submodule(target_blocks[target_layer], target_path)
            neurons = min(math.ceil(neuron_fraction * target_projection.in_features), source_projection.in_features)
            source_neurons = source_scores.top_neurons(source_layer, kind, neurons)
            target_neurons = target_scores.top_neurons(target_layer, kind, neurons)
            vectors = source_projection.weight.detach()[:, source_neurons].T.to("cpu", torch.float32).clone()
            network = NeuronDeltaHypernetwork(source_projection.out_features, hidden, target_projection.out_features)
            pairs.append(NeuronPair(kind, rank, source_layer, target_layer, source_neurons, target_neurons,
                                    f"{block_parameter_prefix(target, target_layer)}{target_path}.weight",
                                    vectors, network.to(target_projection.weight.device)))
    return pairs


def hypernetwork_deltas(pairs: list[NeuronPair]) -> list[torch.Tensor]:
    return [pair.hypernetwork(pair.source_vectors.to(next(pair.hypernetwork.parameters()).device)) for pair in pairs]


def train_hypernetworks(target: LoadedModel, pairs: list[NeuronPair], samples: TokenisedSamples, weights: dict[str, float],
                        learning_rate: float, batch_size: int, epochs: int, seed: int, on_step=None,
                        should_cancel=None) -> list[dict]:
    """Train the hypernetworks on LM loss + delta penalty; the target's own weights stay frozen.

    The deltas act through forward hooks on the output projections (``out += x[:, neurons] @ delta``,
    the same as adding ``delta`` to the neurons' columns), so no weight is written while training.
    """
    layout = block_layout(target.adapter)
    blocks = target.adapter.decoder_layers()
    current: list[torch.Tensor] = []
    handles = []

    def add_delta(index: int):
        def hook(module, args, output):
            pair = pairs[index]
            return output + args[0][..., pair.target_neurons] @ current[index].to(output.dtype)
        return hook

    def loss_terms(batch: TokenisedSamples) -> dict[str, torch.Tensor]:
        current[:] = hypernetwork_deltas(pairs)
        penalty = torch.cat([delta.flatten() for delta in current]).square().mean()
        return {"answer_ce": answer_ce(target, batch), "delta_penalty": penalty}

    requires = {name: p.requires_grad for name, p in target.model.named_parameters()}
    for parameter in target.model.parameters():
        parameter.requires_grad_(False)
    for index, pair in enumerate(pairs):
        module = find_submodule(blocks[pair.target_layer], layout.output_projection(pair.kind))
        handles.append(module.register_forward_hook(add_delta(index)))
    target.model.train(False)
    torch.manual_seed(seed)
    try:
        return train_minibatches(samples, [p for pair in pairs for p in pair.hypernetwork.parameters()], loss_terms,
                                 weights, learning_rate, batch_size, epochs, seed, "laten", on_step, should_cancel,
                                 precision=target.precision)
    finally:
        for handle in handles:
            handle.remove()
        for name, parameter in target.model.named_parameters():
            parameter.requires_grad_(requires[name])


def final_delta(target: LoadedModel, pairs: list[NeuronPair]) -> dict[str, torch.Tensor]:
    """The hypernetworks' deltas, computed once, as full-weight deltas of the output projections."""
    parameters = dict(target.model.named_parameters())
    with torch.no_grad():
        return {pair.target_weight_name: pair.delta_matrix(delta, parameters[pair.target_weight_name])
                for pair, delta in zip(pairs, hypernetwork_deltas(pairs))}


def _location_rows(role: str, scores: SublayerScores, pairs: list[NeuronPair]) -> list[dict]:
    layer_key = "source_layer" if role == "source" else "target_layer"
    selected = {(getattr(p, layer_key), p.kind): p.rank for p in pairs}
    rows = []
    for kind in KINDS:
        for rank, layer in enumerate(scores.ranked_layers(kind)):
            rows.append({"model": role, "layer": layer, "module": kind, "lens_gain": scores.gains[(layer, kind)],
                         "rank": rank, "selected": (layer, kind) in selected})
    return rows


def _neuron_rows(pairs: list[NeuronPair], source_scores: SublayerScores, target_scores: SublayerScores) -> list[dict]:
    rows = []
    for index, pair in enumerate(pairs):
        source_row = source_scores.neuron_scores[(pair.source_layer, pair.kind)]
        target_row = target_scores.neuron_scores[(pair.target_layer, pair.kind)]
        for rank, (s, t) in enumerate(zip(pair.source_neurons, pair.target_neurons)):
            rows.append({"pair": index, "module": pair.kind, "source_layer": pair.source_layer,
                         "target_layer": pair.target_layer, "neuron_rank": rank, "source_neuron": s, "target_neuron": t,
                         "source_score": float(source_row[s]), "target_score": float(target_row[t])})
    return rows


def _scores_from_tables(locations: list[dict], neurons: list[dict], role: str, loaded: LoadedModel) -> SublayerScores:
    """Enough of a model's location to rebuild the same pairs on resume (only kept neurons scored)."""
    layout = block_layout(loaded.adapter)
    blocks = loaded.adapter.decoder_layers()
    gains = {(r["layer"], r["module"]): r["lens_gain"] for r in locations if r["model"] == role}
    scores = {key: np.full(find_submodule(blocks[key[0]], layout.output_projection(key[1])).in_features, -np.inf)
              for key in gains}
    for row in neurons:
        layer = row[f"{role}_layer"]
        scores[(layer, row["module"])][row[f"{role}_neuron"]] = row[f"{role}_score"]
    return SublayerScores(gains, scores, 0)


def train_laten(context: RunContext) -> TrainedTransfer:
    config, source, target, writer, stages = (context.config, context.source, context.target,
                                              context.writer, context.stages)

    def build_pairs(source_scores: SublayerScores, target_scores: SublayerScores) -> list[NeuronPair]:
        torch.manual_seed(config.seed)  # the hypernetworks' initial draw
        return pair_sublayers(source, target, source_scores, target_scores, config.laten_top_layers,
                              config.laten_neuron_fraction, config.laten_hidden_size)

    if stages.done("location"):
        locations, neurons = read_table(writer.path(LOCATIONS_TABLE)), read_table(writer.path(NEURONS_TABLE))
        pairs = build_pairs(_scores_from_tables(locations, neurons, "source", source),
                            _scores_from_tables(locations, neurons, "target", target))
    else:
        def locate():
            source_scores = logit_lens_location(source, context.alignment, config.batch_size)
            target_scores = logit_lens_location(target, context.alignment, config.batch_size)
            pairs = build_pairs(source_scores, target_scores)
            writer.save_table(LOCATIONS_TABLE, _location_rows("source", source_scores, pairs)
                              + _location_rows("target", target_scores, pairs))
            writer.save_table(NEURONS_TABLE, _neuron_rows(pairs, source_scores, target_scores))
            return pairs

        pairs = stages.run("location", locate)

    trainable = sum(p.numel() for pair in pairs for p in pair.hypernetwork.parameters())
    context.set_method_details({
        "paper_version": PAPER_VERSION,
        "module_score": "logit-lens gain: log p(answer) with the sublayer's contribution added to the residual "
                        "minus without, read through the final norm and LM head, mean over answer tokens",
        "neuron_score": "first-order share of the sublayer's lens gain (activation x gradient projected on the "
                        "neuron's vector), summed over answer tokens",
        "top_layers": config.laten_top_layers,
        "neuron_fraction": config.laten_neuron_fraction,
        "pairs": [{"module": p.kind, "rank": p.rank, "source_layer": p.source_layer, "target_layer": p.target_layer,
                   "neurons": len(p.target_neurons), "target_weight": p.target_weight_name,
                   "hypernetwork": p.hypernetwork.sizes()} for p in pairs],
        "delta_penalty": f"{config.losses['delta_penalty']} * MSE(delta, 0) over all hypernetwork outputs",
        "epochs": config.epochs,
        "examples_per_step": config.batch_size,
        "applied": "once, after training: deltas added to the selected neurons' columns of the output projections",
        "tables": {"locations": LOCATIONS_TABLE, "neurons": NEURONS_TABLE},
    })

    if stages.done("hypernetworks"):
        delta = writer.checkpoint("hypernetworks")
        apply_weight_delta(target.model, delta)
        return TrainedTransfer(delta, FULL_DELTA_FORMAT, trainable)

    def train():
        records = train_hypernetworks(target, pairs, context.alignment, config.losses, config.learning_rate,
                                      config.batch_size, config.epochs, config.seed, context.on_progress,
                                      context.should_cancel)
        delta = final_delta(target, pairs)
        apply_weight_delta(target.model, delta)
        return records, delta

    records, delta = stages.run("hypernetworks", train, lambda result: result[1])
    context.save_loss_rows(context.loss_rows() + records)
    return TrainedTransfer(delta, FULL_DELTA_FORMAT, trainable)
