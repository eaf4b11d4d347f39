"""Greedy generation until a stop sequence, batched with left padding and a KV cache.

A plain loop instead of ``model.generate``: a model's own ``generation_config`` (Qwen's
instruct models ship a repetition penalty and sampling settings) must never leak into a
greedy benchmark, and stopping on text, not tokens, needs the decoded string anyway.

Each step feeds only the new token per row and reuses the cache; positions are counted over
real tokens, so a left-padded row sees the same positions as it would alone. A row stops at
the end-of-sequence token or when its decoded text holds a stop sequence; the text is cut at
the first stop sequence (the harness's ``until``), which is not part of the result.

Cost per step stays flat in the length: the end-of-sequence check runs on the device, the host
reads the new tokens once every :data:`HOST_SYNC_STEPS` greedy steps (not once per row and step),
and each row's text grows by decoding only its new tokens (:class:`IncrementalDecoder`), where a
full re-decode per step would be quadratic in the completion's length (HumanEval allows 1,024).
A row that met a stop sequence inside a window is found at the exact token where it did, so
completions and token counts are those of a per-step check.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from pkt_core.capture.dataset import pad_batch
from pkt_core.evaluation.loglikelihood import ScoringError, encode, model_max_length
from pkt_core.models.loading import LoadedModel

ProgressCallback = Callable[[int, int], None]
# Greedy steps between host reads of the new tokens: a row that stopped mid-window costs at most
# this many wasted steps, while each read is a device sync that stalls a GPU's queue.
HOST_SYNC_STEPS = 8


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


class IncrementalDecoder:
    """A row's decoded text, grown token by token without re-decoding the whole row.

    Decodes the new tokens together with the few before them (from ``prefix``) and keeps the part
    beyond what those few decode to alone: a SentencePiece leading space or a character split
    over byte tokens then comes out as in a full decode. Text that ends in an incomplete UTF-8
    character (U+FFFD) is not committed (the next token may complete it), but it is part of the
    text :meth:`push` returns, as it is of a full decode at that point.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.text = ""
        self.prefix = 0
        self.read = 0

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    @property
    def stable_length(self) -> int:
        """Characters that no later token can change."""
        return len(self.text)

    def push(self, token: int) -> str:
        """Add one token; returns the text decoded so far (committed text + provisional tail)."""
        self.tokens.append(token)
        known = self._decode(self.tokens[self.prefix:self.read])
        extended = self._decode(self.tokens[self.prefix:])
        if not extended.startswith(known):  # a decoder that rewrites earlier text: decode it all
            return self._decode(self.tokens)
        tail = extended[len(known):]
        if tail and not extended.endswith("\ufffd"):
            self.text += tail
            self.prefix, self.read = self.read, len(self.tokens)
            return self.text
        return self.text + tail


def _stop_found(text: str, checked: int, stop_sequences: Sequence[str]) -> bool:
    """Whether a stop sequence ends beyond ``checked`` characters (older text was already searched)."""
    return any(text.find(stop, max(0, checked - len(stop) + 1)) >= 0 for stop in stop_sequences)


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
    end_tensor = torch.tensor(sorted(end_ids), dtype=torch.long, device=device)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    rows = len(sequences)
    generated: list[list[int]] = [[] for _ in range(rows)]
    decoders = [IncrementalDecoder(tokenizer) for _ in range(rows)]
    checked = [0] * rows  # characters of each row's text already searched for stop sequences
    stopped_by: list[str | None] = [None] * rows
    output = loaded.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                          logits_to_keep=1)
    logits = output.logits[:, -1, :]
    next_positions = positions[:, -1:] + 1
    # Rows still in the forward pass, as indices into ``sequences``. Greedy decoding drops a row
    # from the batch (and its KV cache) as soon as the host sees it stopped: one long completion
    # no longer drags seven finished ones through up to a thousand steps. Sampling keeps the batch
    # whole and reads every step, so that a seed's draws do not depend on when other rows stopped.
    active = list(range(rows))
    compact = compact and sampling is None
    window = 1 if sampling is not None else HOST_SYNC_STEPS
    ended = torch.zeros(rows, dtype=torch.bool, device=device)  # end-of-sequence seen, on the device
    steps = 0
    while steps < max_new_tokens:
        pending: list[torch.Tensor] = []
        for _ in range(min(window, max_new_tokens - steps)):
            next_tokens = _next_tokens(logits, sampling, generator)
            pending.append(next_tokens)
            steps += 1
            ended = ended | torch.isin(next_tokens, end_tensor)
            if steps == max_new_tokens:
                break  # no forward for a token nobody will read
            # A row past its end feeds a pad so the batch stays rectangular; its output is ignored.
            feed = torch.where(ended, torch.full_like(next_tokens, pad_id), next_tokens)[:, None]
            mask = torch.cat([mask, torch.ones((len(active), 1), dtype=mask.dtype, device=device)], dim=1)
            output = loaded.model(input_ids=feed, attention_mask=mask, position_ids=next_positions,
                                  use_cache=True, **_cache_argument(loaded.model, output))
            logits = output.logits[:, -1, :]
            next_positions = next_positions + 1
        # One host read per window: every active row's new tokens, in order.
        window_tokens = torch.stack(pending, dim=1).tolist()
        for position, row in enumerate(active):
            for token in window_tokens[position]:
                if stopped_by[row] is not None:
                    break
                if token in end_ids:
                    stopped_by[row] = "eos"
                    break
                generated[row].append(token)
                if stop_sequences:
                    text = decoders[row].push(token)
                    if _stop_found(text, checked[row], stop_sequences):
                        stopped_by[row] = "stop_sequence"
                    checked[row] = decoders[row].stable_length
        if all(stopped_by[row] is not None for row in active) or steps >= max_new_tokens:
            break
        keep = [position for position, row in enumerate(active) if stopped_by[row] is None]
        cache = output["cache"] if "cache" in output else output["past_key_values"]
        if compact and len(keep) < len(active) and hasattr(cache, "batch_select_indices"):
            # A CPU index: the cache's layers may sit on several GPUs (a sharded model), and indexing
            # a CUDA tensor with a CPU index works on any of them.
            cache.batch_select_indices(torch.tensor(keep))
            keep_index = torch.tensor(keep, device=device)
            mask, next_positions = mask[keep_index], next_positions[keep_index]
            logits, ended = logits[keep_index.to(logits.device)], ended[keep_index]
            active = [active[position] for position in keep]
    results = []
    for row in range(rows):
        text, _ = cut_at_stop(tokenizer.decode(generated[row], skip_special_tokens=True), stop_sequences)
        results.append(Generation(text, len(generated[row]), stopped_by[row] or "max_new_tokens"))
    return results
