"""Replay of the frontier schedule's forward passes from recorded block inputs.

At stage k only block k trains; blocks before it are frozen and the alignment minibatches are
the same at every step, so the state entering block k is the same at every step of the stage.
And after stage k, the state entering block k + 1 is block k (now trained) applied to the state
entering block k. So the schedule needs the model's prefix only once: one forward per minibatch
records what enters each block (the hidden states and the keyword arguments the model hands
its layers: masks, rotary embeddings, position ids), and from then on a stage runs block k from
its recorded input (and blocks k + 1 .. L - 1, the final norm and the head when a loss reads the
final logits), and advancing to the next stage runs one block forward without gradients.

A schedule of L stages with s steps then runs L block forwards of carry and s (fwd + bwd) per
stage, instead of s forwards of the whole prefix per stage: the prefix cost falls from about
s L^2 / 2 block forwards to L. The results are the same bits: the same modules run the same
kernels on the same inputs in the same order (``tests/transfer/test_frontier_replay.py``
checks a replayed schedule against the plain one with ``torch.equal``).

The recorded keyword arguments are the ones the model itself built for each block, so per-layer
differences (sliding-window vs full attention masks, local vs global rotary tables) are kept.
A block's input sits on its device; on a sharded model each block's own device hooks move the
arguments as they do in the model's forward.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch

from pkt_core.capture.hooks import position_ids_from_mask
from pkt_core.models.loading import LoadedModel
from pkt_core.models.placement import on_device_of
from pkt_core.models.precision import model_device_type
from pkt_core.transfer.alignment_data import TokenisedSamples
from pkt_core.transfer.forward import FrontierOutputs, head_logits


class _Recorded(Exception):
    """Raised from the last block's pre-hook: everything the replay needs has been recorded."""


def _block_output(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@dataclass
class _BatchRecord:
    indices: list[int]
    hidden: torch.Tensor  # the state entering block ``FrontierReplay.position``, detached
    block_kwargs: list[dict] = field(default_factory=list)  # per block, what the model passes it


class FrontierReplay:
    """The recorded block inputs of every alignment minibatch, advanced stage by stage.

    ``position`` is the block whose input :attr:`_BatchRecord.hidden` holds. Built at the first
    stage a run trains (after any replayed, resumed stages: their deltas are already merged).
    """

    def __init__(self, loaded: LoadedModel, samples: TokenisedSamples, batch_size: int, first_layer: int) -> None:
        self.loaded = loaded
        self.samples = samples
        self.batch_size = batch_size
        self.position = first_layer
        self.records: list[_BatchRecord] = []
        blocks = loaded.adapter.decoder_layers()
        with torch.no_grad():
            for start in range(0, len(samples), batch_size):
                indices = list(range(start, min(start + batch_size, len(samples))))
                self.records.append(self._record(samples.select(indices), indices, blocks))

    def _record(self, batch: TokenisedSamples, indices: list[int], blocks: torch.nn.ModuleList) -> _BatchRecord:
        kwargs_by_block: list[dict] = [{} for _ in blocks]
        hidden: dict[str, torch.Tensor] = {}
        last = len(blocks) - 1

        def pre_hook(index: int):
            def hook(module, args, kwargs):
                kwargs_by_block[index] = dict(kwargs)
                if index == self.position:
                    state = args[0] if args else kwargs["hidden_states"]
                    hidden["state"] = state.detach()
                if index == last:
                    raise _Recorded
            return hook

        handles = [block.register_forward_pre_hook(pre_hook(index), with_kwargs=True)
                   for index, block in enumerate(blocks)]
        ids = batch.input_ids.to(self.loaded.input_device)
        mask = batch.attention_mask.to(self.loaded.input_device)
        try:
            self.loaded.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                              use_cache=False)
        except _Recorded:
            pass
        finally:
            for handle in handles:
                handle.remove()
        for kwargs in kwargs_by_block:
            kwargs.pop("hidden_states", None)
        return _BatchRecord(indices, hidden["state"], kwargs_by_block)

    def _compute(self) -> AbstractContextManager:
        """The autocast the model's own forward enters (the precision policy's), for blocks run alone."""
        policy = self.loaded.precision
        if not policy.uses_autocast:
            return nullcontext()
        return torch.autocast(model_device_type(self.loaded.model), dtype=policy.compute_dtype)

    def _run_block(self, index: int, hidden: torch.Tensor, record: _BatchRecord) -> torch.Tensor:
        return _block_output(self.loaded.adapter.decoder_layers()[index](hidden, **record.block_kwargs[index]))

    def outputs(self, batch_number: int, layer: int, need_logits: bool) -> FrontierOutputs:
        """What :func:`pkt_core.transfer.forward.forward_to_frontier` returns for this minibatch at
        the frontier ``layer`` (which must be the replay's position), computed from the recorded input."""
        if layer != self.position:
            raise ValueError(f"the replay stands at block {self.position}, not at the frontier layer {layer}")
        record = self.records[batch_number]
        with self._compute():
            pre = record.hidden
            post = self._run_block(layer, pre, record)
            final = None
            if need_logits:
                state = post
                for index in range(layer + 1, len(record.block_kwargs)):
                    state = self._run_block(index, state, record)
                final = self.loaded.adapter.final_norm()(state)
        answer_logits = None
        if final is not None:
            batch = self.samples.select(record.indices)
            answer_logits = head_logits(self.loaded, final[batch.prediction_mask().to(final.device)])
        return FrontierOutputs(pre, post, answer_logits)

    def advance_to(self, layer: int) -> None:
        """Carry every minibatch's state forward to the input of block ``layer`` through the blocks
        between (as they are now: a trained block has its delta merged)."""
        if layer < self.position:
            raise ValueError(f"the replay cannot go back from block {self.position} to {layer}")
        blocks = self.loaded.adapter.decoder_layers()
        with torch.no_grad(), self._compute():
            for record in self.records:
                state = record.hidden
                for index in range(self.position, layer):
                    state = self._run_block(index, state, record)
                record.hidden = on_device_of(state.detach(), next(blocks[layer].parameters()))
        self.position = layer
