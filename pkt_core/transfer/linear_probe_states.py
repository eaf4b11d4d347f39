"""Each layer's block output at the last prompt token of every probe item, and their cache.

One no-grad pass per batch with a hook on every decoder block (found by the architecture adapter)
that keeps only the row at each prompt's last token (items x width per layer, float32 on the CPU),
so memory stays at one forward's activations whatever the number of items. Prompts longer than
``max_tokens`` keep their end (the answer position) and lose their start; the count is returned.
Batches are formed from prompts of similar length (sorted), which saves most of the padding.

The states of the source and of the untouched target do not depend on the run: they are cached
in the per-model cache (:mod:`~pkt_core.transfer.model_cache`, kind ``linear_probe_states``), keyed by the model's fingerprint, its precision policy,
weight dtype and device type, the item set's digest (ids, prompts, labels), ``max_tokens`` and
:data:`STATE_DEFINITION`, so a second run on the same pair captures only the trained target. A
trained target must never be read from or written to the cache: its fingerprint is the untouched
model's (the caller passes ``use_cache=False``).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from pkt_core.capture.hooks import position_ids_from_mask
from pkt_core.models.loading import LoadedModel
from pkt_core.models.memory import dtype_name
from pkt_core.transfer.linear_probe_items import ProbeItems
from pkt_core.transfer.model_cache import HIT, cache_path, cached_tensors, inputs_digest

STATE_DEFINITION = "block output (resid_post) at the last prompt token; right padding; v1"
CACHE_KIND = "linear_probe_states"  # under the per-model cache (pkt_core.transfer.model_cache)
# Padded tokens per forward (prompts of similar length batched together). At 4096 the largest transient
# tensor of a 1.5B Qwen forward (the MLP's 4096 x 8960 float32 activations) is 0.15 GB; only one row
# per sequence and layer is kept.
TOKENS_PER_BATCH = 4096


@dataclass
class ProbeStates:
    """layer -> (items x width) float32 states of one model, and how they were obtained."""

    layers: dict[int, torch.Tensor]
    truncated_prompts: int  # prompts cut from the left to max_tokens
    cache: str  # "hit", "miss" (captured and stored) or "off" (captured, not cached)
    seconds: float  # wall time of the capture (or of reading the cache)


def state_cache_dir() -> Path:
    return cache_path(CACHE_KIND, "-").parent


def _token_ids(tokenizer, prompt: str, max_tokens: int) -> tuple[list[int], bool]:
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if not ids:
        raise ValueError(f"prompt {prompt[:40]!r} has no tokens")
    return (ids[-max_tokens:], True) if len(ids) > max_tokens else (ids, False)


@contextmanager
def _last_rows_at(loaded: LoadedModel, last: dict[str, torch.Tensor], rows: dict[int, list[torch.Tensor]]):
    """Hooks on every decoder block that keep only its output at the positions in ``last["index"]``
    (one per sequence), so a batch never holds more than the forward itself."""
    handles = []

    def keep(layer: int):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            index = last["index"].to(hidden.device)
            rows[layer].append(hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
                               .detach().to("cpu", torch.float32))

        return hook

    try:
        for layer, block in enumerate(loaded.adapter.decoder_layers()):
            handles.append(block.register_forward_hook(keep(layer)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _batches(lengths: list[int], order: list[int]) -> list[list[int]]:
    """Consecutive runs of ``order`` (sorted by length) holding at most TOKENS_PER_BATCH padded tokens."""
    batches: list[list[int]] = []
    for index in order:
        if batches and (len(batches[-1]) + 1) * lengths[index] <= TOKENS_PER_BATCH:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


@torch.no_grad()
def last_token_states(loaded: LoadedModel, prompts: list[str] | tuple[str, ...],
                      max_tokens: int) -> tuple[dict[int, torch.Tensor], int]:
    """Per layer, the block output at each prompt's last token (items x width, float32, CPU, in
    the order of ``prompts``); and how many prompts were cut to ``max_tokens``."""
    encoded = [_token_ids(loaded.tokenizer, prompt, max_tokens) for prompt in prompts]
    truncated = sum(cut for _, cut in encoded)
    lengths = [len(ids) for ids, _ in encoded]
    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(encoded)), key=lengths.__getitem__)
    rows: dict[int, list[torch.Tensor]] = {layer: [] for layer in range(loaded.adapter.num_layers)}
    last: dict[str, torch.Tensor] = {}
    was_training = loaded.model.training
    loaded.model.eval()  # a trainer may hand the model back in train mode (LoRA dropout would fire)
    try:
        with _last_rows_at(loaded, last, rows):
            for batch in _batches(lengths, order):
                width = lengths[batch[-1]]
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for row, index in enumerate(batch):
                    ids[row, : lengths[index]] = torch.as_tensor(encoded[index][0])
                    mask[row, : lengths[index]] = 1
                last["index"] = torch.tensor([lengths[index] - 1 for index in batch])
                ids, mask = ids.to(loaded.input_device), mask.to(loaded.input_device)
                loaded.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                             use_cache=False)
    finally:
        loaded.model.train(was_training)
    restore = torch.argsort(torch.as_tensor(order))  # back to the order of ``prompts``
    states = {layer: torch.cat(pieces)[restore].contiguous() for layer, pieces in rows.items()}
    for layer, value in states.items():
        if not torch.isfinite(value).all():
            raise ValueError(f"{loaded.name}: layer {layer}'s states at the last prompt token hold NaN or inf")
    return states, truncated


def cache_key(loaded: LoadedModel, items: ProbeItems, max_tokens: int) -> dict:
    """What identifies a model's probe states: model, precision, device type, items, prompt budget."""
    return {"fingerprint": loaded.fingerprint, "precision": loaded.precision.name if loaded.precision else None,
            "weights": dtype_name(loaded.dtype), "device_type": loaded.input_device.type,
            "items": items.digest, "max_tokens": max_tokens, "state": STATE_DEFINITION}


def probe_states(loaded: LoadedModel, items: ProbeItems, max_tokens: int, use_cache: bool = True) -> ProbeStates:
    """The model's last-prompt-token states on ``items``: from the per-model cache where present
    (``use_cache``), else captured (and, with ``use_cache``, stored there for the next run)."""
    started = time.monotonic()

    def capture() -> dict[str, torch.Tensor]:
        layers, truncated = last_token_states(loaded, items.prompts, max_tokens)
        return {**{f"layer.{layer}": value for layer, value in layers.items()},
                "truncated_prompts": torch.tensor(truncated)}

    if use_cache:
        key = inputs_digest(json.dumps(cache_key(loaded, items, max_tokens), sort_keys=True))
        tensors, status = cached_tensors(CACHE_KIND, key, capture)
        how = "hit" if status == HIT else "miss"
    else:
        tensors, how = capture(), "off"
    layers = {layer: tensors[f"layer.{layer}"] for layer in range(loaded.adapter.num_layers)}
    return ProbeStates(layers, int(tensors["truncated_prompts"]), how, time.monotonic() - started)
