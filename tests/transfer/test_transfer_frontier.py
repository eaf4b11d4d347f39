import pytest
import torch
from transfer_fixtures import addition_samples

from pkt_core.transfer.alignment_data import tokenise_samples
from pkt_core.transfer.config import TransferConfig
from pkt_core.transfer.frontier import apply_weight_delta, train_stage
from pkt_core.transfer.layer_mapping import depth_map
from pkt_core.transfer.semantic_bases import cross_model_map, semantic_basis
from pkt_core.transfer.supervision import (
    _final_norm_cpu,
    build_supervision,
    collect_layer_states,
)


def _setup(pair, variant, trainable="block"):
    source, target = pair
    config = TransferConfig(source="s", target="t", variant=variant, data_file="x", steps_per_stage=2,
                            batch_size=4, learning_rate=1e-3, trainable=trainable)
    samples = tokenise_samples(target.tokenizer, addition_samples(8, seed=3), 32)
    sites = {"contribution", "block_output"}
    layers = list(range(target.adapter.num_layers))
    before = collect_layer_states(target, samples, layers, sites, 4)
    cross = cross_model_map(semantic_basis(target.adapter.lm_head().weight), semantic_basis(source.adapter.lm_head().weight))
    supervision = build_supervision(source, before, samples, depth_map(source.adapter.num_layers, target.adapter.num_layers),
                                    cross, sites, layers, True, _final_norm_cpu(target), 4, with_answer_log_probs=True)
    return source, target, config, samples, supervision


@pytest.mark.parametrize("variant", ["v1", "v2-relation", "acl-fisher"])
@pytest.mark.parametrize("trainable", ["block", "lora"])
def test_only_the_frontier_layer_changes(random_pair, variant, trainable):
    source, target, config, samples, supervision = _setup(random_pair, variant, trainable)
    before = {k: v.clone() for k, v in target.model.state_dict().items()}
    frontier = 1
    records, delta = train_stage(target, frontier, samples, supervision, config)
    after = target.model.state_dict()
    assert set(after) == set(before)  # LoRA was merged back: same tensors as before
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed, "the frontier layer did not move"
    assert all(name.startswith("model.layers.1.") for name in changed)
    assert len(records) == 2 and all(r["stage_layer"] == frontier for r in records)
    # The saved delta rebuilds the trained model from the untouched one.
    rebuilt = {k: v.clone() for k, v in before.items()}
    fresh = type(target.model)(target.model.config)
    fresh.load_state_dict(rebuilt)
    apply_weight_delta(fresh, delta)
    for name, value in fresh.state_dict().items():
        torch.testing.assert_close(value, after[name], atol=1e-6, rtol=1e-6)
    if trainable == "lora":
        assert all(k.endswith((".lora_a", ".lora_b")) for k in delta)


def test_stage_losses_decrease(random_pair):
    source, target, config, samples, supervision = _setup(random_pair, "v1")
    config.steps_per_stage = 6
    records, _ = train_stage(target, 0, samples, supervision, config)
    assert records[-1]["loss"] < records[0]["loss"]
