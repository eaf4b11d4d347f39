"""Greedy generation until a stop sequence, batched with left padding and a KV cache.

A plain loop instead of ``model.generate``: a model's own ``generation_config`` (Qwen's
instruct models ship a repetition penalty and sampling settings) must never leak into a
greedy benchmark, and stopping on text, not tokens, needs the decoded string anyway.

Each step feeds only the new token per row and reuses the cache; positions are counted over
real tokens, so a left-padded row sees the same positions as it would alone. A row stops at
the end-of-sequence token or when its decoded text holds a stop sequence; the text is cut at
the first stop sequence (the harness's ``until``), which is not part of the result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from pkt_core.capture.dataset import pad_batch
from pkt_core.evaluation.loglikelihood import ScoringError, encode, model_max_length
from pkt_core.models.loading import LoadedModel

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class Sampling:
    """Sampling instead of greedy decoding, for pass@k with several samples per problem."""

    temperature: float
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ScoringError(
                f"sampling needs temperature > 0 and 0 < top_p <= 1 (got {self.temperature}, {self.top_p})")


@dataclass(frozen=True)
class Generation:
    text: str  # cut at the first stop sequence
    num_tokens: int  # tokens generated, including any that formed the stop sequence
    stopped_by: str  # "stop_sequence", "eos" or "max_new_tokens"


def cut_at_stop(text: str, stop_sequences: Sequence[str]) -> tuple[str, bool]:
    """The text before the earliest stop sequence, and whether one was found."""
    cut = min((position for stop in stop_sequences if (position := text.find(stop)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _end_token_ids(loaded: LoadedModel) -> set[int]:
    ids = {loaded.tokenizer.eos_token_id}
    configured = getattr(loaded.model.generation_config, "eos_token_id", None) if hasattr(
        loaded.model, "generation_config") else None
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, (list, tuple)):
        ids.update(configured)
    return {token for token in ids if token is not None}


def _cache_argument(model: torch.nn.Module, output) -> dict:
    """The KV cache of the last step, under the name this transformers version takes.

    transformers 5 renamed ``past_key_values`` to ``cache`` (the old name still works with a warning).
    """
    if "cache" in output:
        return {"cache": output["cache"]}
    return {"past_key_values": output["past_key_values"]}


@torch.no_grad()
def generate_until(
    loaded: LoadedModel,
    prompts: Sequence[str],
    stop_sequences: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 8,
    progress: ProgressCallback | None = None,
    sampling: Sampling | None = None,
    compact: bool = True,
) -> list[Generation]:
    """Greedy (or, with ``sampling``, sampled) continuation of every prompt, in the order of ``prompts``.

    Sampled draws depend on the seed and on how prompts fall into batches; both are recorded.
    ``compact``: greedy rows that stop leave the batch (``benchmarks/bench_generation.py``
    measures the gain; ``False`` keeps every row to the end, for that comparison).
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise ScoringError(f"batch size and max_new_tokens must be at least 1 (got {batch_size}, {max_new_tokens})")
    window = model_max_length(loaded)
    if max_new_tokens >= window:
        raise ScoringError(f"max_new_tokens {max_new_tokens} leaves no room for the prompt in a {window}-token window")
    # As the harness: keep the prompt's last tokens so prompt + generation fit the window.
    encoded = [encode(loaded.tokenizer, prompt)[-(window - max_new_tokens):] for prompt in prompts]
    empty = [index for index, ids in enumerate(encoded) if not ids]
    if empty:
        raise ScoringError(f"prompts {empty[:5]} tokenise to nothing; generation needs a prompt")
    order = sorted(range(len(encoded)), key=lambda index: len(encoded[index]), reverse=True)
    results: list[Generation | None] = [None] * len(encoded)
    generator = torch.Generator().manual_seed(sampling.seed) if sampling else None
    done = 0
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        batch = [encoded[i] for i in indices]
        for index, generation in zip(indices, _generate_batch(loaded, batch, stop_sequences, max_new_tokens,
                                                               sampling, generator, compact)):
            results[index] = generation
        done += len(indices)
        if progress is not None:
            progress(done, len(encoded))
    return [result for result in results if result is not None]


def _next_tokens(logits: torch.Tensor, sampling: Sampling | None, generator: torch.Generator | None) -> torch.Tensor:
    if sampling is None:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float().cpu() / sampling.temperature, dim=-1)
    if sampling.top_p < 1:
        # Nucleus: keep the most likely tokens whose mass reaches top_p (always at least one).
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs > sampling.top_p
        sorted_probs[outside] = 0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1).to(logits.device)


def _generate_batch(
    loaded: LoadedModel, sequences: list[list[int]], stop_sequences: Sequence[str], max_new_tokens: int,
    sampling: Sampling | None = None, generator: torch.Generator | None = None, compact: bool = True,
) -> list[Generation]:
    tokenizer = loaded.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    end_ids = _end_token_ids(loaded)
    ids, mask = pad_batch(sequences, pad_id, "left")
    device = loaded.input_device
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    rows = len(sequences)
    generated: list[list[int]] = [[] for _ in range(rows)]
    stopped_by: list[str | None] = [None] * rows
    output = loaded.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                          logits_to_keep=1)
    next_positions = positions[:, -1:] + 1
    # Rows still in the forward pass, as indices into ``sequences``. Greedy decoding drops a row
    # from the batch (and its KV cache) as soon as it stops: one long completion no longer drags
    # seven finished ones through up to a thousand steps. Sampling keeps the batch whole, so that
    # a seed's draws do not depend on when other rows stopped.
    active = list(range(rows))
    compact = compact and sampling is None
    for _ in range(max_new_tokens):
        next_tokens = _next_tokens(output.logits[:, -1, :], sampling, generator)
        for position, row in enumerate(active):
            if stopped_by[row] is not None:
                continue
            token = int(next_tokens[position])
            if token in end_ids:
                stopped_by[row] = "eos"
                continue
            generated[row].append(token)
            text = tokenizer.decode(generated[row], skip_special_tokens=True)
            if stop_sequences and cut_at_stop(text, stop_sequences)[1]:
                stopped_by[row] = "stop_sequence"
        if all(reason is not None for reason in stopped_by):
            break
        cache = output["cache"] if "cache" in output else output["past_key_values"]
        keep = [position for position, row in enumerate(active) if stopped_by[row] is None]
        if compact and len(keep) < len(active) and hasattr(cache, "batch_select_indices"):
            cache.batch_select_indices(torch.tensor(keep, device=device))
            mask, next_positions = mask[keep], next_positions[keep]
            active = [active[position] for position in keep]
        # Without compaction, finished rows keep stepping (with a pad) so the batch stays
        # rectangular; their output is ignored.
        feed = torch.tensor(
            [generated[row][-1] if stopped_by[row] is None else pad_id for row in active], device=device
        )[:, None]
        mask = torch.cat([mask, torch.ones((len(active), 1), dtype=mask.dtype, device=device)], dim=1)
        output = loaded.model(input_ids=feed, attention_mask=mask, position_ids=next_positions,
                              use_cache=True, **_cache_argument(loaded.model, output))
        next_positions = next_positions + 1
    results = []
    for row in range(rows):
        text, _ = cut_at_stop(tokenizer.decode(generated[row], skip_special_tokens=True), stop_sequences)
        results.append(Generation(text, len(generated[row]), stopped_by[row] or "max_new_tokens"))
    return results
