import pytest
import torch
from tiny_models import FAMILY_MODEL_TYPES
from torch import nn

from pkt_core.errors import UnsupportedArchitectureError
from pkt_core.models.architecture import SUPPORTED_FAMILIES, adapter_for
from pkt_core.models.synthetic import random_model_from_config, tiny_config


@pytest.mark.parametrize("model_type", FAMILY_MODEL_TYPES)
def test_adapter_finds_every_part(model_type):
    model = random_model_from_config(tiny_config(model_type, num_layers=3, width=64))
    adapter = adapter_for(model)
    assert adapter.num_layers == 3
    assert adapter.width == 64
    assert adapter.vocab_size == model.config.vocab_size
    assert adapter.lm_head().weight.shape == (model.config.vocab_size, 64)
    # The final norm really is the one applied to the output: norm(last hidden) @ W^T = logits.
    ids = torch.tensor([[5, 17, 42, 99]])
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        last_block_output = out.hidden_states[-1]  # HF applies the final norm to the last entry
        recomputed = adapter.lm_head()(last_block_output)
    logits = out.logits
    if getattr(model.config, "final_logit_softcapping", None):
        cap = model.config.final_logit_softcapping
        recomputed = torch.tanh(recomputed / cap) * cap
    torch.testing.assert_close(recomputed, logits, atol=1e-5, rtol=1e-5)


def test_unknown_architecture_names_the_supported_ones():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("Config", (), {"model_type": "bert"})()

    with pytest.raises(UnsupportedArchitectureError) as error:
        adapter_for(Plain())
    message = str(error.value)
    assert "'bert'" in message
    for family in SUPPORTED_FAMILIES:
        assert family in message


def test_module_without_config_is_refused():
    with pytest.raises(UnsupportedArchitectureError, match="no config.model_type"):
        adapter_for(nn.Linear(2, 2))


def test_gemma_family_ties_embeddings_llama_does_not():
    gemma = adapter_for(random_model_from_config(tiny_config("gemma")))
    llama_config = tiny_config("llama")
    llama_config.tie_word_embeddings = False
    llama = adapter_for(random_model_from_config(llama_config))
    assert gemma.embeddings_tied()
    assert not llama.embeddings_tied()
