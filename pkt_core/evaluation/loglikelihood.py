"""Log-likelihood of a continuation given a context, batched, with the harness's tokenisation.

The trailing-space pitfall: BPE tokenisers fold a leading space into the next word (" A" is
one token). Scoring ``"...Answer: "`` + ``"A"`` by encoding the two strings apart scores the
token "A" after a lone-space token, a sequence the model never saw in training; the score is
then garbage. The harness's rule, followed here: move trailing whitespace of the context onto
the continuation, encode ``context + continuation`` whole, and take as continuation tokens
whatever follows the context's own tokens. Then context tokens + continuation tokens are
exactly the tokens of the whole text.

Batching: requests with the same model input (the same context and continuation length, e.g.
the four MMLU letters) share one forward pass; the rest are sorted by length, left-padded with
explicit position ids, and only the last positions' logits are computed (``logits_to_keep``),
so a 150k-token vocabulary does not cost batch x length x vocab floats.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from pkt_core.capture.dataset import pad_batch
from pkt_core.capture.hooks import position_ids_from_mask
from pkt_core.errors import PktError
from pkt_core.models.loading import LoadedModel

DEFAULT_MAX_LENGTH = 2048
ProgressCallback = Callable[[int, int], None]


class ScoringError(PktError):
    """A request cannot be scored (empty continuation, continuation longer than the context window, ...)."""


@dataclass(frozen=True)
class LoglikelihoodRequest:
    context: str
    continuation: str


@dataclass(frozen=True)
class LoglikelihoodResult:
    logprob: float  # sum of the continuation tokens' log-probabilities (natural log)
    is_greedy: bool  # every continuation token is the argmax at its position
    num_tokens: int


def encode(tokenizer, text: str) -> list[int]:
    """Token ids without special tokens, as the harness encodes contexts and continuations."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prefix_token_id(tokenizer) -> int:
    """The token an empty context starts from: BOS where the tokenizer has one, else EOS."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ScoringError("the tokenizer has neither a BOS nor an EOS token to stand for an empty context")
    return token


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) split at the harness's boundary; see the module docstring."""
    trailing = len(context) - len(context.rstrip())
    if trailing:
        continuation = context[-trailing:] + continuation
        context = context[:-trailing]
    if not context:
        return [prefix_token_id(tokenizer)], encode(tokenizer, continuation)
    whole = encode(tokenizer, context + continuation)
    context_ids = encode(tokenizer, context)
    return context_ids, whole[len(context_ids):]


def model_max_length(loaded: LoadedModel) -> int:
    config = loaded.model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_MAX_LENGTH


@dataclass(frozen=True)
class _Scored:
    """One request as token ids: the model input and the continuation tokens it must predict."""

    inputs: tuple[int, ...]
    targets: tuple[int, ...]


def _prepare(context_ids: Sequence[int], continuation_ids: Sequence[int], max_length: int) -> _Scored:
    if not continuation_ids:
        raise ScoringError("a continuation tokenises to nothing; nothing to score")
    if not context_ids:
        raise ScoringError("a context has no tokens; start it with the prefix token (prefix_token_id)")
    if len(continuation_ids) > max_length:
        raise ScoringError(
            f"continuation of {len(continuation_ids)} tokens exceeds the model's window of {max_length}; "
            f"shorten it or pass a larger max_length"
        )
    # As the harness: keep the last max_length + 1 tokens, feed all but the last.
    whole = (list(context_ids) + list(continuation_ids))[-(max_length + 1):]
    return _Scored(tuple(whole[:-1]), tuple(continuation_ids))


@torch.no_grad()
def loglikelihoods(
    loaded: LoadedModel,
    requests: Sequence[LoglikelihoodRequest],
    batch_size: int = 8,
    max_length: int | None = None,
    progress: ProgressCallback | None = None,
) -> list[LoglikelihoodResult]:
    """Score every request; results come back in the order of ``requests``."""
    pairs = [encode_pair(loaded.tokenizer, request.context, request.continuation) for request in requests]
    empty = [index for index, (_, continuation) in enumerate(pairs) if not continuation]
    if empty:
        raise ScoringError(f"requests {empty[:5]} have a continuation that tokenises to nothing; nothing to score")
    return token_loglikelihoods(loaded, pairs, batch_size, max_length, progress)


@torch.no_grad()
def token_loglikelihoods(
    loaded: LoadedModel,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int = 8,
    max_length: int | None = None,
    progress: ProgressCallback | None = None,
) -> list[LoglikelihoodResult]:
    """:func:`loglikelihoods` on (context ids, continuation ids) pairs already tokenised."""
    if batch_size < 1:
        raise ScoringError(f"batch size must be at least 1, not {batch_size}")
    max_length = max_length or model_max_length(loaded)
    prepared = [_prepare(context, continuation, max_length) for context, continuation in pairs]
    by_input: dict[tuple[int, ...], list[int]] = {}
    for index, scored in enumerate(prepared):
        by_input.setdefault(scored.inputs, []).append(index)
    # Longest first: the biggest batch runs first, so running out of memory shows at once.
    inputs = sorted(by_input, key=len, reverse=True)
    results: list[LoglikelihoodResult | None] = [None] * len(prepared)
    pad_id = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    done = 0
    for start in range(0, len(inputs), batch_size):
        batch_inputs = inputs[start:start + batch_size]
        members = [by_input[key] for key in batch_inputs]
        keep = max(len(prepared[index].targets) for group in members for index in group)
        ids, mask = pad_batch(batch_inputs, pad_id, "left")
        ids, mask = ids.to(loaded.input_device), mask.to(loaded.input_device)
        output = loaded.model(
            input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
            logits_to_keep=keep, use_cache=False,
        )
        logits = output.logits[:, -keep:, :]
        for row, group in enumerate(members):
            for index in group:
                targets = prepared[index].targets
                # Left padding: the last len(targets) positions predict the continuation.
                row_logits = logits[row, keep - len(targets):, :].float()
                log_probs = torch.log_softmax(row_logits, dim=-1)
                target_ids = torch.tensor(targets, device=log_probs.device)
                picked = log_probs.gather(1, target_ids[:, None]).squeeze(1)
                greedy = bool((row_logits.argmax(dim=-1) == target_ids).all())
                results[index] = LoglikelihoodResult(float(picked.double().sum()), greedy, len(targets))
            done += len(group)
        if progress is not None:
            progress(done, len(prepared))
    return [result for result in results if result is not None]


def rolling_loglikelihood(loaded: LoadedModel, text: str, batch_size: int = 8, max_length: int | None = None) -> float:
    """Log-likelihood of a whole text from its first token: windows of at most ``max_length`` tokens,
    each predicting new tokens with as much preceding text as fits (the harness's rolling scheme)."""
    max_length = max_length or model_max_length(loaded)
    tokens = encode(loaded.tokenizer, text)
    if not tokens:
        return 0.0
    pairs = []
    for start in range(0, len(tokens), max_length):
        chunk = tokens[start:start + max_length]
        if start == 0:
            context = [prefix_token_id(loaded.tokenizer)]
        else:  # the model sees max_length tokens: as much preceding text as the window leaves
            context = tokens[max(0, start - (max_length + 1 - len(chunk))):start]
        pairs.append((context, chunk))
    return float(sum(result.logprob for result in token_loglikelihoods(loaded, pairs, batch_size, max_length)))
