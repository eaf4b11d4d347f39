"""Where a decoder block keeps its attention and MLP sublayers, per supported family.

:mod:`pkt_core.models.architecture` knows the model-level parts (decoder layers, final norm, embeddings,
LM head); the peer methods also need the inside of a block: the weight matrices Seeking Neural
Nuggets extracts, and the output projections whose input units are LaTen's neurons. Dispatch is
explicit on the family; an unknown family, or a block without the expected modules, raises.

Paths are relative to one decoder block. A sublayer's *contribution* is what it adds to the
residual stream: the output projection's output, passed through a post-norm where the family
has one (Gemma 2 and 3 normalise each sublayer's output before the residual add).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pkt_core.errors import UnsupportedArchitectureError
from pkt_core.models.architecture import ArchitectureAdapter


@dataclass(frozen=True)
class BlockLayout:
    family: str
    attention_output: str  # output projection of the attention sublayer (inputs: concatenated heads)
    mlp_output: str  # output projection of the MLP (inputs: the FFN neurons)
    attention_post_norm: str | None  # norm applied to the attention output before the residual add
    mlp_post_norm: str | None
    weight_matrices: tuple[str, ...]  # every linear weight of the block, in forward order

    def output_projection(self, kind: str) -> str:
        return {"attention": self.attention_output, "mlp": self.mlp_output}[kind]

    def post_norm(self, kind: str) -> str | None:
        return {"attention": self.attention_post_norm, "mlp": self.mlp_post_norm}[kind]


_LLAMA_MATRICES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                   "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
_LLAMA = BlockLayout("llama", "self_attn.o_proj", "mlp.down_proj", None, None, _LLAMA_MATRICES)
_GEMMA_POST_NORMED = BlockLayout("gemma2", "self_attn.o_proj", "mlp.down_proj", "post_attention_layernorm",
                                 "post_feedforward_layernorm", _LLAMA_MATRICES)

LAYOUTS: dict[str, BlockLayout] = {
    "llama": _LLAMA,
    "qwen2": _LLAMA,
    "mistral": _LLAMA,
    "gemma": _LLAMA,
    "gemma2": _GEMMA_POST_NORMED,
    "gemma3": _GEMMA_POST_NORMED,
    # GPT-NeoX's fused query_key_value is one matrix: a sub-block of it mixes q, k and v rows,
    # as a sub-block of any fused weight would. Parallel residual: both sublayers read the same
    # input; LaTen adds the attention's contribution first (the sum is the same).
    "gpt_neox": BlockLayout("gpt_neox", "attention.dense", "mlp.dense_4h_to_h", None, None,
                            ("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")),
}


def block_layout(adapter: ArchitectureAdapter) -> BlockLayout:
    """The layout of ``adapter``'s decoder blocks, checked against its first block."""
    layout = LAYOUTS.get(adapter.family)
    if layout is None:
        why = (" (its blocks use transformers' Conv1D, with weights stored input x output)"
               if adapter.family == "gpt2" else "")
        raise UnsupportedArchitectureError(
            f"the peer methods do not know the inside of a {adapter.family} block{why}; supported: "
            f"{', '.join(sorted(LAYOUTS))}. Add its sublayer names to pkt_core/peers/sublayers.py."
        )
    block = adapter.decoder_layers()[0]
    needed = [*layout.weight_matrices, *(n for n in (layout.attention_post_norm, layout.mlp_post_norm) if n)]
    for path in needed:
        module = find_submodule(block, path)
        if path in layout.weight_matrices and not isinstance(module, nn.Linear):
            raise UnsupportedArchitectureError(
                f"{adapter.family} block: {path} is a {type(module).__name__}, not a linear layer")
    return layout


def find_submodule(block: nn.Module, path: str) -> nn.Module:
    try:
        return block.get_submodule(path)
    except AttributeError as error:
        raise UnsupportedArchitectureError(
            f"a {type(block).__name__} has no sublayer {path!r}; the peer methods expect the module names "
            f"of the supported families (pkt_core/peers/sublayers.py)"
        ) from error


def replace_submodule(block: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = block.get_submodule(parent_path) if parent_path else block
    setattr(parent, name, module)
