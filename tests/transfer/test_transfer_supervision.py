"""Source supervision and the passes that feed it: stopping a pass after the deepest layer it records,
and handing the supervision the attribution's states instead of a second source pass, change no number."""

import pytest
import torch
from transfer_fixtures import make_pair, mixed_length_samples

from pkt_core.capture.hooks import position_ids_from_mask, record_residuals
from pkt_core.transfer.attribution import layer_gradient_x_activation
from pkt_core.transfer.layer_mapping import attribution_monotone_map
from pkt_core.transfer.pipeline import ATTRIBUTION_BATCH_SIZE, source_pass_states
from pkt_core.transfer.semantic_bases import cross_model_map, semantic_basis
from pkt_core.transfer.supervision import (
    LayerStateBuffers,
    _final_norm_cpu,
    build_supervision,
    collect_layer_states,
)


def full_forward_states(loaded, samples, layers, batch_size):
    """The pass as it was: the whole model (final norm and LM head over every token) under the recorder."""
    states = {layer: [] for layer in layers}
    for start in range(0, len(samples), batch_size):
        ids = samples.input_ids[start:start + batch_size]
        mask = samples.attention_mask[start:start + batch_size]
        with torch.no_grad(), record_residuals(loaded.model, layers) as recorder:
            loaded.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False)
            for layer in layers:
                states[layer].append(recorder.resid_post[layer].clone())
    return {layer: torch.cat(pieces) for layer, pieces in states.items()}


@pytest.mark.parametrize("layers", [[0], [0, 2], [1, 3]])
def test_a_pass_stopped_after_its_deepest_layer_gives_the_full_forwards_states(layers):
    source, _ = make_pair()
    samples = mixed_length_samples(source.tokenizer)
    stopped = collect_layer_states(source, samples, layers, {"block_output"}, 2)
    reference = full_forward_states(source, samples, layers, 2)
    for layer in layers:
        assert torch.equal(stopped.states[(layer, "block_output")], reference[layer])


@pytest.mark.parametrize("with_log_probs", [False, True])
def test_supervision_from_the_attribution_pass_equals_its_own_source_pass(with_log_probs):
    source, target = make_pair()
    samples = mixed_length_samples(target.tokenizer)
    sites = {"block_output", "contribution"}
    target_layers = list(range(target.adapter.num_layers))
    num_source = source.adapter.num_layers
    buffers = LayerStateBuffers(list(range(num_source)), sites, samples.input_ids.shape[1], with_log_probs)
    attribution = layer_gradient_x_activation(source, samples, ATTRIBUTION_BATCH_SIZE, buffers)
    mapping = attribution_monotone_map(attribution.abs_scores, target.adapter.num_layers)
    cross = cross_model_map(semantic_basis(target.adapter.lm_head().weight), semantic_basis(source.adapter.lm_head().weight))
    before = collect_layer_states(target, samples, target_layers, sites, 4)

    def supervision(source_states):
        return build_supervision(source, before, samples, mapping, cross, sites, target_layers, True,
                                 _final_norm_cpu(target), ATTRIBUTION_BATCH_SIZE, with_log_probs,
                                 source_states=source_states)

    needed = sorted({layer for k in target_layers for layer in mapping.sources_of(k)[0]})
    shared = supervision(buffers.result())
    alone = supervision(source_pass_states(source, samples, needed, sites, with_log_probs))
    assert shared.targets.keys() == alone.targets.keys()
    for key, value in alone.targets.items():
        assert torch.equal(shared.targets[key], value), key
    if with_log_probs:
        assert torch.equal(shared.source_log_probs, alone.source_log_probs)
    else:
        assert shared.source_log_probs is None and alone.source_log_probs is None
    # Against the unchanged path at the run's own batch size (8 samples a batch, untrimmed): the same
    # supervision up to float rounding of differently padded batches.
    legacy = build_supervision(source, before, samples, mapping, cross, sites, target_layers, True,
                               _final_norm_cpu(target), 8, with_log_probs)
    for key, value in legacy.targets.items():
        torch.testing.assert_close(shared.targets[key], value, atol=1e-5, rtol=1e-5)
    if with_log_probs:
        torch.testing.assert_close(shared.source_log_probs, legacy.source_log_probs, atol=1e-5, rtol=1e-5)
