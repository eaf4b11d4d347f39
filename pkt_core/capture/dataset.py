"""Capture a whole list of texts: tokenise, batch, run, and keep the rows in memory or on disk.

The rows stay in memory when their estimated size fits the budget; otherwise (or when an
output folder is given) they stream to safetensors shards. Under ``torch.distributed`` every
rank takes a contiguous block of the texts and writes its own shards into the same folder;
rank 0 merges the part lists, so the folder reads exactly like a single-process capture.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from pkt_core.capture.activation_store import (
    ActivationSet,
    CapturedRows,
    ShardWriter,
    concatenate_rows,
    open_activations,
)
from pkt_core.capture.hooks import CaptureOptions, capture_batch
from pkt_core.errors import CaptureError
from pkt_core.models.loading import LoadedModel
from pkt_core.models.memory import available_cpu_bytes, parse_dtype
from pkt_core.paths import pkt_home

ProgressCallback = Callable[[int, int], None]


class CaptureCancelled(CaptureError):
    """The user cancelled a capture; nothing was written."""


def tokenize_texts(tokenizer, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    if not texts:
        raise CaptureError("no texts to capture: the data source is empty")
    encoded = tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=max_tokens)["input_ids"]
    empty = [index for index, ids in enumerate(encoded) if not ids]
    if empty:
        raise CaptureError(f"texts {empty[:5]} tokenise to nothing; remove empty prompts from the data")
    return encoded


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest sequence on ``side`` ("left" or "right"); returns ids and attention mask."""
    if side not in {"left", "right"}:
        raise CaptureError(f"padding side must be left or right, not {side!r}")
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        values = torch.as_tensor(sequence, dtype=torch.long)
        span = slice(length - len(sequence), length) if side == "left" else slice(0, len(sequence))
        ids[row, span] = values
        mask[row, span] = 1
    return ids, mask


def estimate_capture_bytes(token_counts: Sequence[int], loaded: LoadedModel, options: CaptureOptions) -> int:
    layers = len(options.resolved_layers(loaded.adapter.num_layers))
    rows = sum(token_counts) if options.token_selection == "all" else len(token_counts)
    per_row = layers * len(options.sites) * loaded.adapter.width
    if options.include_logits:
        per_row += loaded.adapter.vocab_size
    return rows * per_row * torch.finfo(parse_dtype(options.storage_dtype)).bits // 8


def _distributed_rank_and_size() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def rank_block(count: int, rank: int, world_size: int) -> range:
    """The contiguous block of item indices that ``rank`` handles (sizes differ by at most one)."""
    base, extra = divmod(count, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def capture_texts(
    loaded: LoadedModel,
    texts: Sequence[str],
    options: CaptureOptions,
    batch_size: int = 8,
    max_tokens: int = 512,
    padding_side: str = "right",
    out_dir: str | Path | None = None,
    overwrite: bool = False,
    memory_budget_bytes: int | None = None,
    data_description: str = "",
    on_progress: ProgressCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> ActivationSet:
    """Capture ``texts`` through ``loaded``; returns the rows in memory or backed by ``out_dir``."""
    started = time.monotonic()
    rank, world_size = _distributed_rank_and_size()
    encoded = tokenize_texts(loaded.tokenizer, texts, max_tokens)
    layers = options.resolved_layers(loaded.adapter.num_layers)
    estimated = estimate_capture_bytes([len(ids) for ids in encoded], loaded, options)
    budget = memory_budget_bytes if memory_budget_bytes is not None else available_cpu_bytes() // 2
    if out_dir is None and (estimated > budget or world_size > 1):
        if world_size > 1:
            raise CaptureError("a distributed capture needs an output folder (--out)")
        # Too big for memory: stream to disk under PKT_HOME rather than fail.
        out_dir = pkt_home() / "activations" / f"{loaded.fingerprint}-{time.strftime('%Y%m%d-%H%M%S')}"
    block = rank_block(len(encoded), rank, world_size)
    pad_id = loaded.tokenizer.pad_token_id
    total = len(block)

    def batches():
        for start in range(block.start, block.stop, batch_size):
            indices = list(range(start, min(start + batch_size, block.stop)))
            if should_cancel is not None and should_cancel():
                raise CaptureCancelled("capture cancelled by the user; nothing was written")
            ids, mask = pad_batch([encoded[i] for i in indices], pad_id, padding_side)
            yield indices, capture_batch(loaded.model, ids, mask, options, sequence_ids=indices)
            if on_progress is not None:
                on_progress(indices[-1] - block.start + 1, total)

    metadata = {
        "model": loaded.describe(),
        "layers": list(layers),
        "sites": list(options.sites),
        "options": options.to_record(),
        "n_sequences": len(encoded),
        "n_tokens": sum(len(ids) for ids in encoded),
        "max_tokens": max_tokens,
        "padding_side": padding_side,
        "batch_size": batch_size,
        "world_size": world_size,
        "data": data_description,
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
    }
    if out_dir is None:
        parts: list[CapturedRows] = [rows for _, rows in batches()]
        rows = concatenate_rows(parts)
        metadata.update(
            n_rows=rows.n_rows,
            dropped_outliers={"count": len(rows.dropped_outliers), "rows": [list(p) for p in rows.dropped_outliers]},
            status="complete",
            wall_seconds=round(time.monotonic() - started, 3),
        )
        return ActivationSet(metadata, rows=rows)

    writer = ShardWriter(Path(out_dir), rank=rank, overwrite=overwrite)
    if rank == 0:
        writer.prepare()
    _barrier(world_size)
    with writer:
        for _, rows in batches():
            writer.append(rows)
        if rank != 0:
            writer.finish_rank()
        _barrier(world_size)
        if rank == 0:
            metadata["wall_seconds"] = round(time.monotonic() - started, 3)
            writer.commit(metadata, world_size=world_size)
    _barrier(world_size)
    return open_activations(out_dir)


def _barrier(world_size: int) -> None:
    if world_size > 1:
        torch.distributed.barrier()
