"""The replayed frontier schedule gives the same bits as the plain one, stage after stage."""

import pytest
import torch
from transfer_fixtures import addition_samples, make_pair, mixed_length_samples

from pkt_core.models.loading import wrap_loaded_model
from pkt_core.models.synthetic import random_model_from_config, tiny_config
from pkt_core.transfer.alignment_data import tokenise_samples
from pkt_core.transfer.config import TransferConfig
from pkt_core.transfer.frontier import train_stage
from pkt_core.transfer.frontier_replay import FrontierReplay
from pkt_core.transfer.layer_mapping import depth_map
from pkt_core.transfer.semantic_bases import cross_model_map, semantic_basis
from pkt_core.transfer.supervision import _final_norm_cpu, build_supervision, collect_layer_states


def _supervision(source, target, samples):
    sites = {"contribution", "block_output"}
    layers = list(range(target.adapter.num_layers))
    before = collect_layer_states(target, samples, layers, sites, 3)
    cross = cross_model_map(semantic_basis(target.adapter.lm_head().weight),
                            semantic_basis(source.adapter.lm_head().weight))
    return build_supervision(source, before, samples, depth_map(source.adapter.num_layers, target.adapter.num_layers),
                             cross, sites, layers, True, _final_norm_cpu(target), 3, with_answer_log_probs=True)


def _schedule(target, samples, supervision, config, stages, use_replay):
    """Train ``stages`` in order, as run_frontier_schedule does; the records and deltas of each."""
    results = []
    replay = None
    for k in stages:
        if use_replay:
            if replay is None:
                replay = FrontierReplay(target, samples, config.batch_size, k)
            else:
                replay.advance_to(k)
        results.append(train_stage(target, k, samples, supervision, config, replay=replay))
    return results


def _assert_same(plain, replayed):
    for (plain_records, plain_delta), (replayed_records, replayed_delta) in zip(plain, replayed, strict=True):
        assert [r["loss"] for r in plain_records] == [r["loss"] for r in replayed_records]
        assert set(plain_delta) == set(replayed_delta) and plain_delta
        for name in plain_delta:
            assert torch.equal(plain_delta[name], replayed_delta[name]), name


@pytest.mark.parametrize(("method", "variant"), [("semalign", "v1"), ("semalign", "v2-relation"),
                                                ("semalign", "acl-fisher"), ("kd", None), ("finetune", None)])
def test_replayed_stages_equal_the_plain_schedule_bit_for_bit(method, variant):
    runs = []
    for use_replay in (False, True):
        source, target = make_pair(source_layers=5, target_layers=4)
        samples = mixed_length_samples(target.tokenizer)  # padded differently in every batch
        config = TransferConfig(source="s", target="t", method=method, variant=variant, data_file="x",
                                steps_per_stage=2, batch_size=2, learning_rate=1e-3)
        supervision = _supervision(source, target, samples)
        # Stages with a gap (layer 2 untouched) and an untrained first layer: the carry runs through them.
        runs.append(_schedule(target, samples, supervision, config, [1, 3], use_replay))
    _assert_same(*runs)


def test_replay_keeps_each_layers_own_attention_mask():
    """A model whose layers differ in attention (sliding window on some): each block is replayed with
    the mask the model built for it, so the results still agree exactly."""
    config = tiny_config("qwen2", 4, 32)
    config.use_sliding_window, config.sliding_window, config.max_window_layers = True, 3, 2
    config.layer_types = ["full_attention", "full_attention", "sliding_attention", "sliding_attention"]
    runs = []
    for use_replay in (False, True):
        source, _ = make_pair(source_layers=5, target_layers=4)
        target = wrap_loaded_model(random_model_from_config(config, seed=7), source.tokenizer, "tiny-sliding")
        samples = tokenise_samples(target.tokenizer, addition_samples(6, seed=2), 32)
        transfer = TransferConfig(source="s", target="t", variant="v1", data_file="x", steps_per_stage=2,
                                  batch_size=3, learning_rate=1e-3)
        runs.append(_schedule(target, samples, _supervision(source, target, samples), transfer, [0, 1, 2, 3], use_replay))
    _assert_same(*runs)


def test_replay_under_bf16_autocast_matches_the_model_forward():
    runs = []
    for use_replay in (False, True):
        source, target = make_pair(source_layers=5, target_layers=3)
        target = wrap_loaded_model(target.model, target.tokenizer, "tiny-target-bf16", precision="bf16")
        samples = tokenise_samples(target.tokenizer, addition_samples(4, seed=5), 32)
        config = TransferConfig(source="s", target="t", variant="acl-fisher", data_file="x", steps_per_stage=2,
                                batch_size=2, learning_rate=1e-3)
        runs.append(_schedule(target, samples, _supervision(source, target, samples), config, [0, 1, 2], use_replay))
    _assert_same(*runs)


def test_replay_refuses_a_layer_it_does_not_stand_at():
    _, target = make_pair(source_layers=5, target_layers=3)
    samples = tokenise_samples(target.tokenizer, addition_samples(4, seed=5), 32)
    replay = FrontierReplay(target, samples, 2, 1)
    with pytest.raises(ValueError, match="stands at block 1"):
        replay.outputs(0, 2, need_logits=False)
    with pytest.raises(ValueError, match="cannot go back"):
        replay.advance_to(0)
