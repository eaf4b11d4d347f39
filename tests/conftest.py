"""Shared fixtures: tiny random models of every supported family and a byte-level tokenizer."""

from __future__ import annotations

import pytest

from pkt_core.loading import wrap_loaded_model
from pkt_core.synthetic_models import byte_level_tokenizer, random_model_from_config, tiny_config

FAMILY_MODEL_TYPES = ("llama", "qwen2", "mistral", "gemma", "gemma2", "gemma3_text", "gpt2", "gpt_neox")


@pytest.fixture(autouse=True)
def isolated_pkt_home(tmp_path_factory, monkeypatch):
    """Every test gets its own PKT_HOME, so no test sees the user's cache or another test's files."""
    home = tmp_path_factory.mktemp("pkt_home")
    monkeypatch.setenv("PKT_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tokenizer():
    return byte_level_tokenizer()


def make_tiny_loaded(model_type: str, num_layers: int = 3, seed: int = 0, width: int = 64):
    model = random_model_from_config(tiny_config(model_type, num_layers=num_layers, width=width), seed=seed)
    return wrap_loaded_model(model, byte_level_tokenizer(), name=f"tiny-{model_type}")


@pytest.fixture(params=FAMILY_MODEL_TYPES)
def tiny_loaded(request):
    return make_tiny_loaded(request.param)


@pytest.fixture
def tiny_model_folder(tmp_path):
    """A tiny Qwen2 model and tokenizer saved as a Hugging Face folder, as a user would bring one."""
    loaded = make_tiny_loaded("qwen2", num_layers=2)
    folder = tmp_path / "tiny-qwen2"
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return folder


SAMPLE_TEXTS = [
    "def add(a, b):\n    return a + b",
    "The quick brown fox",
    "x",
    "Knowledge moves from a large model to a small one, layer by layer.",
    "print('hello')",
]
