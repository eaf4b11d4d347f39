"""Alignment samples (prompt + answer) and their tokenisation with answer masks.

The answer's tokens are found by tokenising prompt and prompt + answer and taking the part past
their common prefix, so a space at the prompt/answer boundary lands where the tokenizer puts
it (" A" is one token after "Answer:", not "Answer: " + "A").
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from pkt_core.errors import PktError


class AlignmentDataError(PktError):
    """Alignment samples could not be read or tokenised."""


@dataclass(frozen=True)
class AlignmentSample:
    sample_id: str
    prompt: str
    answer: str
    label: str = ""


@dataclass
class TokenisedSamples:
    """Right-padded ids (n x T), attention mask, and the mask of answer tokens."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    answer_mask: torch.Tensor
    sample_ids: list[str]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, indices: list[int]) -> "TokenisedSamples":
        """A sub-batch, trimmed to its own longest sequence."""
        index = torch.as_tensor(indices, dtype=torch.long)
        mask = self.attention_mask[index]
        length = int(mask.sum(dim=1).max())
        return TokenisedSamples(self.input_ids[index, :length], mask[:, :length], self.answer_mask[index, :length],
                                [self.sample_ids[i] for i in indices])

    def prediction_mask(self) -> torch.Tensor:
        """Positions whose next-token prediction is an answer token (logit at t predicts t + 1)."""
        shifted = torch.zeros_like(self.answer_mask)
        shifted[:, :-1] = self.answer_mask[:, 1:]
        return shifted

    def next_tokens(self) -> torch.Tensor:
        following = torch.zeros_like(self.input_ids)
        following[:, :-1] = self.input_ids[:, 1:]
        return following


def answer_token_ids(tokenizer, prompt: str, answer: str, max_tokens: int) -> tuple[list[int], int]:
    """Token ids of prompt + answer, and the index where the answer's tokens start."""
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    full_ids = tokenizer(prompt + answer, add_special_tokens=True)["input_ids"]
    start = 0
    while start < min(len(prompt_ids), len(full_ids)) and prompt_ids[start] == full_ids[start]:
        start += 1
    if start >= len(full_ids):
        raise AlignmentDataError(f"answer {answer[:40]!r} adds no token to its prompt")
    if len(full_ids) > max_tokens:
        # keep the answer: cut the prompt from the left
        cut = len(full_ids) - max_tokens
        if cut >= start:
            raise AlignmentDataError(f"a sample's answer alone is longer than max_tokens={max_tokens}")
        full_ids, start = full_ids[cut:], start - cut
    return full_ids, start


def tokenise_samples(tokenizer, samples: list[AlignmentSample], max_tokens: int = 256) -> TokenisedSamples:
    if not samples:
        raise AlignmentDataError("no alignment samples")
    encoded = [answer_token_ids(tokenizer, s.prompt, s.answer, max_tokens) for s in samples]
    length = max(len(ids) for ids, _ in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(samples), length), pad, dtype=torch.long)
    attention = torch.zeros((len(samples), length), dtype=torch.long)
    answer = torch.zeros((len(samples), length), dtype=torch.bool)
    for row, (ids, start) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.as_tensor(ids)
        attention[row, : len(ids)] = 1
        answer[row, start : len(ids)] = True
    return TokenisedSamples(input_ids, attention, answer, [s.sample_id for s in samples])


def samples_from_file(path: str | Path) -> list[AlignmentSample]:
    """JSON lines with ``prompt`` and ``answer`` (optional ``id`` and ``label``)."""
    path = Path(path)
    if not path.is_file():
        raise AlignmentDataError(f"alignment data file {path} does not exist")
    samples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise AlignmentDataError(f"{path}:{number} is not valid JSON: {error}") from error
        if not isinstance(record, dict) or "prompt" not in record or "answer" not in record:
            raise AlignmentDataError(f"{path}:{number} needs 'prompt' and 'answer' fields")
        samples.append(AlignmentSample(str(record.get("id", number - 1)), record["prompt"], record["answer"],
                                       str(record.get("label", ""))))
    if not samples:
        raise AlignmentDataError(f"{path} holds no samples")
    return samples


def take_samples(samples: list[AlignmentSample], count: int | None, seed: int) -> list[AlignmentSample]:
    """A fixed, seeded subset (all when ``count`` is None or larger than the pool)."""
    if count is None or count >= len(samples):
        return list(samples)
    chosen = sorted(random.Random(seed).sample(range(len(samples)), count))
    return [samples[i] for i in chosen]
