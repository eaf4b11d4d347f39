"""Tiny random causal LMs built from configs, and a byte-level tokenizer: no download needed.

Used by the tests, by benchmarks (models of the real pair's shapes with random weights), and by
anyone who wants to try the pipeline without fetching a real model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedTokenizerFast

BYTE_VOCAB = 256
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
TINY_VOCAB_SIZE = 320  # >= 256 bytes + specials, rounded up


def byte_level_tokenizer(
    padding_side: str = "right", permute_seed: int | None = None, merges: Sequence[tuple[str, str]] = ()
) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (one token per byte, no merges) with pad/bos/eos.

    ``permute_seed`` shuffles which id each byte gets: a tokenizer with the same strings but a
    different string -> id map, for vocabulary-mismatch tests. ``merges`` (pairs of byte-level
    strings, applied in order) adds one token per merge after the specials: a tokenizer that
    splits some texts differently, for tests across tokenizers (keep the total under
    ``TINY_VOCAB_SIZE``).
    """
    byte_strings = list(pre_tokenizers.ByteLevel.alphabet())
    byte_strings.sort()
    if permute_seed is not None:
        generator = torch.Generator().manual_seed(permute_seed)
        order = torch.randperm(len(byte_strings), generator=generator).tolist()
        byte_strings = [byte_strings[i] for i in order]
    vocab = {token: index for index, token in enumerate(byte_strings)}
    for special in SPECIAL_TOKENS:
        vocab[special] = len(vocab)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    if len(vocab) > TINY_VOCAB_SIZE:
        raise ValueError(f"{len(vocab)} tokens do not fit the tiny models' vocabulary of {TINY_VOCAB_SIZE}")
    backend = Tokenizer(models.BPE(vocab=vocab, merges=list(merges)))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        padding_side=padding_side,
    )
    return tokenizer


def tiny_config(
    model_type: str,
    num_layers: int = 2,
    width: int = 64,
    vocab_size: int = TINY_VOCAB_SIZE,
    heads: int = 4,
) -> PretrainedConfig:
    """A small config of one supported family; attention is eager so results are exact on CPU."""
    common = dict(
        vocab_size=vocab_size,
        pad_token_id=BYTE_VOCAB + SPECIAL_TOKENS.index("<pad>"),
        bos_token_id=BYTE_VOCAB + SPECIAL_TOKENS.index("<bos>"),
        eos_token_id=BYTE_VOCAB + SPECIAL_TOKENS.index("<eos>"),
    )
    if model_type == "gpt2":
        config = transformers.GPT2Config(n_layer=num_layers, n_embd=width, n_head=heads, n_positions=256, **common)
    elif model_type == "gpt_neox":
        config = transformers.GPTNeoXConfig(
            num_hidden_layers=num_layers, hidden_size=width, num_attention_heads=heads,
            intermediate_size=4 * width, max_position_embeddings=256, **common,
        )
    else:
        config_class = transformers.CONFIG_MAPPING[model_type]
        extra = {}
        if model_type in {"gemma", "gemma2", "gemma3_text"}:
            extra["head_dim"] = width // heads
        config = config_class(
            num_hidden_layers=num_layers, hidden_size=width, intermediate_size=2 * width,
            num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
            max_position_embeddings=256, **extra, **common,
        )
    config._attn_implementation = "eager"
    return config


def random_model_from_config(config: PretrainedConfig, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A causal LM with random weights drawn deterministically from ``seed``."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    return model


def write_tiny_llama_gguf(path, num_layers: int = 2, width: int = 32, heads: int = 4, seed: int = 0) -> None:
    """Write a small Llama GGUF file (float32 tensors, byte-level tokenizer) with random weights.

    Lets the GGUF loading and mirror conversion paths run offline on a file of a few hundred KB.
    """
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab = byte_level_tokenizer().get_vocab()
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    feed_forward = 2 * width
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(128)
    writer.add_embedding_length(width)
    writer.add_block_count(num_layers)
    writer.add_feed_forward_length(feed_forward)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * len(tokens))
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_merges([])
    writer.add_bos_token_id(vocab["<bos>"])
    writer.add_eos_token_id(vocab["<eos>"])
    writer.add_pad_token_id(vocab["<pad>"])

    def tensor(name: str, shape: tuple[int, ...]) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    tensor("token_embd.weight", (len(tokens), width))
    tensor("output_norm.weight", (width,))
    tensor("output.weight", (len(tokens), width))
    for block in range(num_layers):
        for name, shape in (
            ("attn_q", (width, width)), ("attn_k", (width, width)), ("attn_v", (width, width)),
            ("attn_output", (width, width)), ("ffn_gate", (feed_forward, width)),
            ("ffn_up", (feed_forward, width)), ("ffn_down", (width, feed_forward)),
        ):
            tensor(f"blk.{block}.{name}.weight", shape)
        tensor(f"blk.{block}.attn_norm.weight", (width,))
        tensor(f"blk.{block}.ffn_norm.weight", (width,))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
