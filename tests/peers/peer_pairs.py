"""Tiny source/target pairs and a synthetic task for the peer-method tests.

Kept apart from ``conftest`` on purpose: several test folders have a ``conftest`` module and
only one of them is importable by that name at a time.
"""

from __future__ import annotations

from tiny_models import addition_samples  # noqa: F401  (re-exported for the tests here)

from pkt_core.models.loading import LoadedModel, wrap_loaded_model
from pkt_core.models.synthetic import (
    byte_level_tokenizer,
    random_model_from_config,
    tiny_config,
)
from pkt_core.transfer.alignment_data import AlignmentSample


def tiny_pair(family: str = "qwen2", source_layers: int = 4, target_layers: int = 3, source_width: int = 64,
              target_width: int = 32, seed: int = 0) -> tuple[LoadedModel, LoadedModel]:
    tokenizer = byte_level_tokenizer()
    source = wrap_loaded_model(random_model_from_config(tiny_config(family, source_layers, source_width), seed=seed + 1),
                               tokenizer, "tiny-source")
    target = wrap_loaded_model(random_model_from_config(tiny_config(family, target_layers, target_width), seed=seed + 2),
                               tokenizer, "tiny-target")
    return source, target


def run_samples() -> tuple[list[AlignmentSample], list[AlignmentSample], str]:
    return addition_samples(12, seed=5), addition_samples(8, seed=6), "synthetic addition"


def state_copy(loaded: LoadedModel) -> dict:
    return {name: value.detach().clone() for name, value in loaded.model.state_dict().items()}


def fresh_copy(loaded: LoadedModel, state: dict):
    """A new model of ``loaded``'s class and config holding ``state``."""
    model = type(loaded.model)(loaded.model.config)
    model.load_state_dict(state)
    model.eval()
    return model
