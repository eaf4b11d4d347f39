"""Tiny random models of every supported family and sample texts, for tests (no download)."""

from __future__ import annotations

from pkt_core.loading import wrap_loaded_model
from pkt_core.synthetic_models import byte_level_tokenizer, random_model_from_config, tiny_config

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
