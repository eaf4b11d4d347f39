"""The shared run skeleton's probe capture: the untouched models' probe states come from the per-model
cache when the same model (fingerprint and precision) has read the same probes before."""

import copy

import torch
from transfer_fixtures import make_pair, mixed_length_samples

from pkt_core.models.loading import wrap_loaded_model
from pkt_core.transfer.model_cache import COMPUTED, HIT
from pkt_core.transfer.run_skeleton import cached_probe_rows, probe_rows, probe_token_mask, row_subset


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_probe_states_are_cached_per_model_precision_and_inputs():
    _, target = make_pair()
    probes = mixed_length_samples(target.tokenizer)
    subset = row_subset(int(probe_token_mask(probes).sum()), seed=0)
    reference_tokens, reference_means = probe_rows(target, probes, 2, subset)

    tokens, means, status = cached_probe_rows(target, probes, 2, subset)
    assert status == COMPUTED and _equal(tokens, reference_tokens) and _equal(means, reference_means)
    tokens, means, status = cached_probe_rows(target, probes, 2, subset)
    assert status == HIT and _equal(tokens, reference_tokens) and _equal(means, reference_means)

    # The same weights under bf16 autocast compute other numbers: a miss, never the fp32 entry.
    autocast = wrap_loaded_model(copy.deepcopy(target.model), target.tokenizer, "tiny-target", precision="bf16")
    tokens, _, status = cached_probe_rows(autocast, probes, 2, subset)
    assert status == COMPUTED and not _equal(tokens, reference_tokens)
    torch.testing.assert_close(tokens[0], reference_tokens[0], atol=0.1, rtol=0.1)
    # Another model, other rows, other batches, other probes: misses.
    other_target = make_pair(seed=7)[1]
    assert cached_probe_rows(other_target, probes, 2, subset)[2] == COMPUTED
    assert cached_probe_rows(target, probes, 2, subset[:-1])[2] == COMPUTED
    assert cached_probe_rows(target, probes, 4, subset)[2] == COMPUTED
    assert cached_probe_rows(target, probes.select([0, 1, 2]), 2, torch.arange(5))[2] == COMPUTED
