"""Tiny random models of every supported family and sample texts, for tests (no download)."""

from __future__ import annotations

import random

from pkt_core.models.loading import wrap_loaded_model
from pkt_core.models.synthetic import (
    byte_level_tokenizer,
    random_model_from_config,
    tiny_config,
)
from pkt_core.transfer.alignment_data import AlignmentSample

FAMILY_MODEL_TYPES = ("llama", "qwen2", "mistral", "gemma", "gemma2", "gemma3_text", "gpt2", "gpt_neox")


def make_tiny_loaded(model_type: str, num_layers: int = 3, seed: int = 0, width: int = 64):
    model = random_model_from_config(tiny_config(model_type, num_layers=num_layers, width=width), seed=seed)
    return wrap_loaded_model(model, byte_level_tokenizer(), name=f"tiny-{model_type}")


SAMPLE_TEXTS = [
    "def add(a, b):\n    return a + b",
    "The quick brown fox",
    "x",
    "Knowledge moves from a large model to a small one, layer by layer.",
    "print('hello')",
]


def addition_samples(count: int, seed: int) -> list[AlignmentSample]:
    """"a+b=" -> last digit of a + b: a task a 4-layer model learns in seconds."""
    rng = random.Random(seed)
    samples = []
    for index in range(count):
        a, b = rng.randrange(10), rng.randrange(10)
        samples.append(AlignmentSample(f"{seed}-{index}", f"{a}+{b}=", str((a + b) % 10), label=str(a)))
    return samples
