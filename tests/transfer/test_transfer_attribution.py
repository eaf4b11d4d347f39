"""The attribution's forward also serves the supervision: what it records must be exactly what a separate
no-grad pass over the same batches gives, and recording must not change the attribution itself."""

import numpy as np
import pytest
import torch
from transfer_fixtures import mixed_length_samples

from pkt_core.models.loading import wrap_loaded_model
from pkt_core.models.synthetic import byte_level_tokenizer, random_model_from_config, tiny_config
from pkt_core.transfer.attribution import layer_gradient_x_activation
from pkt_core.transfer.supervision import LayerStateBuffers, collect_layer_states


def tiny_source(attention: str, precision: str | None):
    config = tiny_config("qwen2", num_layers=3, width=32)
    config._attn_implementation = attention
    return wrap_loaded_model(random_model_from_config(config, seed=4), byte_level_tokenizer(), "tiny-source",
                             precision=precision)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("precision", [None, "bf16"])
def test_states_recorded_by_the_attribution_equal_a_separate_pass(attention, precision):
    source = tiny_source(attention, precision)
    samples = mixed_length_samples(source.tokenizer)
    layers, sites = [0, 1, 2], {"block_output", "contribution"}
    buffers = LayerStateBuffers(layers, sites, samples.input_ids.shape[1], with_answer_log_probs=True)
    shared = layer_gradient_x_activation(source, samples, 2, buffers)
    alone = layer_gradient_x_activation(source, samples, 2)
    # Recording changes nothing in the attribution...
    assert np.array_equal(shared.abs_scores, alone.abs_scores)
    assert np.array_equal(shared.signed_scores, alone.signed_scores)
    # ... and what it recorded is bit for bit the unchanged no-grad pass over the same batches.
    states = buffers.result()
    reference = collect_layer_states(source, samples, layers, sites, 2, with_answer_log_probs=True)
    assert set(states.states) == set(reference.states)
    for key, value in reference.states.items():
        assert torch.equal(states.states[key], value), key
    assert torch.equal(states.log_probs_at_answers, reference.log_probs_at_answers)
    assert not any(p.requires_grad for p in states.states.values())
    assert all(p.requires_grad for p in source.model.parameters())  # restored after the pass


def test_recorded_states_are_the_models_hidden_states():
    """An independent reference: the model's own ``output_hidden_states`` of each sequence alone."""
    source = tiny_source("eager", None)
    samples = mixed_length_samples(source.tokenizer)
    buffers = LayerStateBuffers([0, 1], {"block_output", "contribution"}, samples.input_ids.shape[1])
    layer_gradient_x_activation(source, samples, 2, buffers)
    states = buffers.result()
    for row in range(len(samples)):
        length = int(samples.attention_mask[row].sum())
        with torch.no_grad():
            hidden = source.model(input_ids=samples.input_ids[row:row + 1, :length],
                                  output_hidden_states=True).hidden_states
        for layer in (0, 1):
            expected_post = hidden[layer + 1][0]
            torch.testing.assert_close(states.states[(layer, "block_output")][row, :length], expected_post,
                                       atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(states.states[(layer, "contribution")][row, :length],
                                       expected_post - hidden[layer][0], atol=1e-5, rtol=1e-5)
