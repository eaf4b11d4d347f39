"""A small source and target for transfer tests, and synthetic tasks the tests train them on."""

from __future__ import annotations

import random

import torch
from tiny_models import addition_samples  # noqa: F401  (re-exported for the tests here)

from pkt_core.capture.hooks import position_ids_from_mask
from pkt_core.models.loading import wrap_loaded_model
from pkt_core.models.synthetic import (
    byte_level_tokenizer,
    random_model_from_config,
    tiny_config,
)
from pkt_core.transfer.alignment_data import AlignmentSample, tokenise_samples


def copy_first_operand_samples(count: int, seed: int) -> list[AlignmentSample]:
    """The same prompts answered with the first operand: the format of the task, not its content."""
    rng = random.Random(seed)
    samples = []
    for index in range(count):
        a, b = rng.randrange(10), rng.randrange(10)
        samples.append(AlignmentSample(f"copy-{seed}-{index}", f"{a}+{b}=", str(a), label=str(a)))
    return samples


def train_on(loaded, samples, steps: int, learning_rate: float = 3e-3, seed: int = 0) -> None:
    """Plain next-token training on the answers of ``samples``."""
    torch.manual_seed(seed)
    batch = tokenise_samples(loaded.tokenizer, samples, 32)
    optimizer = torch.optim.Adam(loaded.model.parameters(), lr=learning_rate)
    loaded.model.train()
    for _ in range(steps):
        logits = loaded.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                              position_ids=position_ids_from_mask(batch.attention_mask)).logits
        mask = batch.prediction_mask()
        loss = torch.nn.functional.cross_entropy(logits[mask], batch.next_tokens()[mask])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    loaded.model.eval()


def make_pair(source_layers=4, target_layers=3, source_width=64, target_width=32, seed=0):
    tokenizer = byte_level_tokenizer()
    source = wrap_loaded_model(random_model_from_config(tiny_config("qwen2", source_layers, source_width), seed=seed + 1),
                               tokenizer, "tiny-source")
    target = wrap_loaded_model(random_model_from_config(tiny_config("qwen2", target_layers, target_width), seed=seed + 2),
                               tokenizer, "tiny-target")
    return source, target


def mixed_length_samples(tokenizer):
    """Prompts of very different lengths, so every batch is padded and trimmed differently."""
    pairs = [("1+2=", "3"), ("The answer to three plus four is ", "7"), ("x=", "1"),
             ("def double(a):\n    return a * 2\n# double(3) == ", "6"), ("9-1=", "8")]
    samples = [AlignmentSample(f"mixed-{i}", prompt, answer) for i, (prompt, answer) in enumerate(pairs)]
    return tokenise_samples(tokenizer, samples, 64)
