"""The matrix-multiply FLOPs of one frontier stage, counted from the model's own layers and the
batches the stage runs, so a measured stage time turns into an achieved FLOP rate.

Conventions: 2 FLOPs per multiply-add (as GEMM rates are quoted); a batch of b sequences padded
to its longest, n tokens, computes t = b * n token rows (padding is computed, so it counts). A
stage runs ``steps_per_stage`` passes over every minibatch, as :func:`pkt_core.transfer.frontier.train_stage`
does. ``D`` is the width, ``V`` the vocabulary, ``A`` = query heads x head dim, ``r`` the
answer-prediction rows of a batch, ``k`` the frontier layer, ``L`` the layer count.

- Forward of every block the stage runs (blocks 0..k, or 0..L-1 when a loss reads the final
  logits): each Linear ``2 t in out``; attention ``4 b n^2 A`` (Q K^T and P V over the whole
  n x n square, as eager and SDPA-math kernels compute it).
- Backward where a gradient flows (block k, and blocks k+1..L-1 when the loss reads logits):
  each Linear ``2 t in out`` for its input gradient, plus ``2 t in out`` for its weight gradient
  in block k only (the others are frozen); attention ``8 b n^2 A`` (the gradients of Q, K, V and P).
- LM head at the answer rows when a loss reads logits: ``2 r D V`` forward, ``2 r D V`` for the
  gradient of its input (the head is frozen).
- Loss matmuls: the Fisher surrogate ``6 r D V`` (two products with the head forward, one
  backward); the relation loss ``8 m^2 D`` per sequence of m kept tokens (two Gram matrices
  forward, the target's two operands backward).

With a replay (:mod:`pkt_core.transfer.frontier_replay`, what ``run_frontier_schedule`` uses),
the steps start at block k from its recorded input, so the prefix 0..k-1 runs once per stage
instead of once per step: the stage counts the forward of the blocks it carries its recorded
states through (``carried_from`` .. k-1, once), or, for the first stage of a run
(``carried_from=None``), the recording forward of blocks 0..L-2 (it stops before the last block).

Not counted: norms, activations, softmaxes, rotary embeddings, embedding look-ups and elementwise
loss terms (O(t D) against the O(t D^2) above). Block-trained, token-level stages only (LoRA
and two-tokenizer sequence alignment change the count and are refused).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pkt_core.models.loading import LoadedModel
from pkt_core.transfer.alignment_data import TokenisedSamples
from pkt_core.transfer.config import TransferConfig
from pkt_core.transfer.forward import layer_token_mask

FORMULA = (
    "per batch (b seqs x n padded tokens, t = b n, r answer rows), summed over batches x steps: "
    "forward blocks 0..k (0..L-1 if a loss reads logits): sum_linear 2 t in out + 4 b n^2 A; "
    "backward block k: sum_linear 4 t in out + 8 b n^2 A; backward blocks k+1..L-1 (logit losses): "
    "sum_linear 2 t in out + 8 b n^2 A; head 4 r D V (logit losses); Fisher 6 r D V; relation 8 m^2 D per seq"
)


@dataclass(frozen=True)
class StageFlops:
    """FLOPs of one stage by where they run: ``blocks`` under the model's compute dtype (autocast),
    ``head_and_losses`` in float32 (the policy keeps the LM head and every loss in float32)."""

    blocks: int
    head_and_losses: int

    @property
    def total(self) -> int:
        return self.blocks + self.head_and_losses


@dataclass(frozen=True)
class BlockShape:
    """What a decoder block multiplies: its Linear layers (in, out) and its attention width."""

    linears: tuple[tuple[int, int], ...]
    attention_width: int  # query heads x head dim

    @property
    def linear_macs_per_token(self) -> int:
        return sum(inputs * outputs for inputs, outputs in self.linears)


def block_shape(loaded: LoadedModel, layer: int) -> BlockShape:
    """The Linear layers of decoder block ``layer`` (GPT-2's Conv1D included) and its attention width."""
    block = loaded.adapter.decoder_layers()[layer]
    linears = []
    for module in block.modules():
        if isinstance(module, torch.nn.Linear):
            linears.append((module.in_features, module.out_features))
        elif type(module).__name__ == "Conv1D":  # transformers' GPT-2 layer: weight is (in x out)
            inputs, outputs = module.weight.shape
            linears.append((int(inputs), int(outputs)))
    if not linears:
        raise ValueError(f"decoder block {layer} holds no Linear layer: cannot count its FLOPs")
    config = loaded.model.config
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    head_dim = getattr(config, "head_dim", None) or loaded.adapter.width // heads
    return BlockShape(tuple(linears), int(heads * head_dim))


PLAIN = "plain"


def frontier_stage_flops(loaded: LoadedModel, samples: TokenisedSamples, layer: int, config: TransferConfig,
                         carried_from: int | None | str = PLAIN) -> StageFlops:
    """The matmul FLOPs of training frontier ``layer`` on ``samples`` under ``config`` (see the module).

    ``carried_from``: ``PLAIN`` for a stage that forwards its prefix at every step
    (``train_stage`` without a replay); else the replay's previous block (None: the stage records it)."""
    if config.trainable != "block":
        raise ValueError(f"the FLOP count covers block training, not trainable={config.trainable!r}")
    num_layers = loaded.adapter.num_layers
    if not 0 <= layer < num_layers:
        raise ValueError(f"frontier layer {layer} is outside the model's {num_layers} layers")
    shapes = [block_shape(loaded, index) for index in range(num_layers)]
    vocab, width = loaded.adapter.lm_head().weight.shape
    weights = {name for name, weight in config.losses.items() if weight}
    reads_logits = config.needs_final_logits()
    last_forward = num_layers - 1 if reads_logits else layer
    first_forward = 0 if carried_from == PLAIN else layer
    once = 0  # the replay's recording or carrying forward, run once per stage, not per step
    blocks = head_and_losses = 0
    for start in range(0, len(samples), config.batch_size):
        batch = samples.select(list(range(start, min(start + config.batch_size, len(samples)))))
        rows, length = batch.input_ids.shape
        tokens = rows * length
        answer_rows = int(batch.prediction_mask().sum())
        def forward(index: int) -> tuple[int, int]:
            shape = shapes[index]
            return 2 * tokens * shape.linear_macs_per_token, 4 * rows * length**2 * shape.attention_width

        if carried_from != PLAIN:
            once_blocks = range(num_layers - 1) if carried_from is None else range(carried_from, layer)
            once += sum(sum(forward(index)) for index in once_blocks)
        for index in range(first_forward, last_forward + 1):
            linear, attention = forward(index)
            blocks += linear + attention  # forward
            if index == layer:
                blocks += 2 * linear + 2 * attention  # input and weight gradients; Q, K, V and P gradients
            elif index > layer:
                blocks += linear + 2 * attention  # input gradients only (frozen weights)
        if reads_logits:
            head_and_losses += 4 * answer_rows * width * vocab
        if "fisher_logit" in weights:
            head_and_losses += 6 * answer_rows * width * vocab
        if "relation" in weights:
            kept = layer_token_mask(batch, config.drop_first_position).sum(dim=1)
            head_and_losses += sum(8 * int(m) ** 2 * width for m in kept if m >= 2)
    return StageFlops(blocks * config.steps_per_stage + once, head_and_losses * config.steps_per_stage)
