"""The one place that knows where a causal LM keeps its decoder layers, final norm,
embeddings and LM head. Every other module asks it; nobody else pokes at ``model.model.layers``.

Dispatch is explicit on ``config.model_type``; an unknown architecture raises instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pkt_core.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class ArchitecturePaths:
    """Attribute paths, relative to the ``*ForCausalLM`` module, of the parts we need."""

    family: str
    decoder_layers: str
    final_norm: str
    input_embeddings: str
    lm_head: str


_LLAMA_LIKE = dict(
    decoder_layers="model.layers",
    final_norm="model.norm",
    input_embeddings="model.embed_tokens",
    lm_head="lm_head",
)

ARCHITECTURES: dict[str, ArchitecturePaths] = {
    "llama": ArchitecturePaths(family="llama", **_LLAMA_LIKE),
    "qwen2": ArchitecturePaths(family="qwen2", **_LLAMA_LIKE),
    "mistral": ArchitecturePaths(family="mistral", **_LLAMA_LIKE),
    "gemma": ArchitecturePaths(family="gemma", **_LLAMA_LIKE),
    "gemma2": ArchitecturePaths(family="gemma2", **_LLAMA_LIKE),
    "gemma3_text": ArchitecturePaths(family="gemma3", **_LLAMA_LIKE),
    # Gemma 3 checkpoints with a vision tower: the language model sits one level deeper.
    "gemma3": ArchitecturePaths(
        family="gemma3",
        decoder_layers="model.language_model.layers",
        final_norm="model.language_model.norm",
        input_embeddings="model.language_model.embed_tokens",
        lm_head="lm_head",
    ),
    "gpt2": ArchitecturePaths(
        family="gpt2",
        decoder_layers="transformer.h",
        final_norm="transformer.ln_f",
        input_embeddings="transformer.wte",
        lm_head="lm_head",
    ),
    "gpt_neox": ArchitecturePaths(
        family="gpt_neox",
        decoder_layers="gpt_neox.layers",
        final_norm="gpt_neox.final_layer_norm",
        input_embeddings="gpt_neox.embed_in",
        # transformers 5 names it lm_head; checkpoints written by 4.x code call it embed_out.
        lm_head="lm_head|embed_out",
    ),
}

SUPPORTED_FAMILIES = ("llama", "qwen2", "mistral", "gemma", "gemma2", "gemma3", "gpt2", "gpt_neox")


def _resolve(model: nn.Module, dotted_alternatives: str) -> nn.Module:
    """Follow a dotted path; ``a.b|c`` tries ``a.b`` then ``c`` (names that moved across versions)."""
    last_error: AttributeError | None = None
    for dotted in dotted_alternatives.split("|"):
        module = model
        try:
            for attribute in dotted.split("."):
                module = getattr(module, attribute)
            return module
        except AttributeError as error:
            last_error = error
    assert last_error is not None
    raise last_error


class ArchitectureAdapter:
    """Finds the parts of one loaded causal LM; construct with :func:`adapter_for`."""

    def __init__(self, model: nn.Module, paths: ArchitecturePaths) -> None:
        self.model = model
        self.paths = paths

    @property
    def family(self) -> str:
        return self.paths.family

    def decoder_layers(self) -> nn.ModuleList:
        return _resolve(self.model, self.paths.decoder_layers)

    def final_norm(self) -> nn.Module:
        return _resolve(self.model, self.paths.final_norm)

    def input_embeddings(self) -> nn.Embedding:
        return _resolve(self.model, self.paths.input_embeddings)

    def lm_head(self) -> nn.Linear:
        return _resolve(self.model, self.paths.lm_head)

    @property
    def num_layers(self) -> int:
        return len(self.decoder_layers())

    @property
    def width(self) -> int:
        return self.input_embeddings().weight.shape[1]

    @property
    def vocab_size(self) -> int:
        return self.lm_head().weight.shape[0]

    def embeddings_tied(self) -> bool:
        """Whether the LM head and the input embeddings are the same tensor."""
        return self.lm_head().weight.data_ptr() == self.input_embeddings().weight.data_ptr()


def model_type_of(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} has no config.model_type; PKT supports Hugging Face causal LMs "
            f"of the families {', '.join(SUPPORTED_FAMILIES)}."
        )
    return model_type


def adapter_for(model: nn.Module) -> ArchitectureAdapter:
    model_type = model_type_of(model)
    paths = ARCHITECTURES.get(model_type)
    if paths is None:
        raise UnsupportedArchitectureError(
            f"architecture {model_type!r} ({type(model).__name__}) is not supported. "
            f"Supported families: {', '.join(SUPPORTED_FAMILIES)}. "
            f"Add its layer, norm, embedding and LM-head paths to pkt_core/architecture.py."
        )
    try:
        adapter = ArchitectureAdapter(model, paths)
        adapter.decoder_layers()
        adapter.final_norm()
        adapter.lm_head()
    except AttributeError as error:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} declares model_type {model_type!r} but does not have the "
            f"expected layout ({error}); is it a *ForCausalLM model?"
        ) from error
    return adapter
