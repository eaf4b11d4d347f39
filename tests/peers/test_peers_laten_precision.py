"""LaTen's merge is exact: float32 deltas of ~1e-4 added once, under the bf16 policy's fp32 weights
and under bf16-stored weights (nearest bf16 of the exact sum); the trained tensors are float32."""

import pytest
import torch
from peer_pairs import addition_samples, tiny_pair

from pkt_core.models.loading import wrap_loaded_model
from pkt_core.peers.laten import final_delta, logit_lens_location, pair_sublayers
from pkt_core.peers.seeking import low_rank_factors
from pkt_core.peers.training import train_minibatches
from pkt_core.transfer.alignment_data import tokenise_samples
from pkt_core.transfer.frontier import apply_weight_delta


def _pairs(policy):
    source, target = tiny_pair()
    source = wrap_loaded_model(source.model, source.tokenizer, "s", precision=policy)
    target = wrap_loaded_model(target.model, target.tokenizer, "t", precision=policy)
    samples = tokenise_samples(target.tokenizer, addition_samples(8, seed=4), 32)
    source_scores = logit_lens_location(source, samples, 4)
    target_scores = logit_lens_location(target, samples, 4)
    torch.manual_seed(0)
    pairs = pair_sublayers(source, target, source_scores, target_scores, 2, 0.25, 16)
    # Hypernetwork outputs at the 1e-4 scale LaTen trains to (its init gives ~1e-9).
    with torch.no_grad():
        for pair in pairs:
            pair.hypernetwork.net[2].bias.normal_(std=1e-4)
    return target, pairs


@pytest.mark.parametrize("policy", ["bf16", "bf16-weights"])
def test_laten_deltas_are_float32_and_merge_to_the_nearest_weight(policy):
    target, pairs = _pairs(policy)
    delta = final_delta(target, pairs)
    parameters = dict(target.model.named_parameters())
    before = {name: parameters[name].detach().clone() for name in delta}
    apply_weight_delta(target.model, delta)
    for name, update in delta.items():
        assert update.dtype == torch.float32
        changed = update != 0
        assert int(changed.sum()) > 0
        merged = parameters[name].detach()
        exact = before[name].double() + update.double()
        if merged.dtype == torch.float32:
            # fp32 master weights: every update survives, to float32 rounding of the sum.
            assert bool((merged[changed] != before[name][changed]).all())
            assert float((merged.double() - exact).abs().max()) <= float(exact.abs().max()) * 2**-24
        else:
            up = torch.nextafter(merged, torch.full_like(merged, float("inf"))).double()
            down = torch.nextafter(merged, torch.full_like(merged, float("-inf"))).double()
            error = (merged.double() - exact).abs()
            assert bool((error <= (up - exact).abs()).all() and (error <= (down - exact).abs()).all())


def test_trained_tensors_must_be_float32_and_seeking_factors_are():
    weight = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="float32 master weights"):
        train_minibatches(None, [weight], lambda batch: {}, {}, 1e-3, 1, 1, 0, "laten")
    scaled_b, a, _ = low_rank_factors(torch.randn(6, 5).bfloat16(), 2)
    assert scaled_b.dtype == a.dtype == torch.float32
