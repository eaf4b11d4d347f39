"""Frozen blocks held in the compute dtype for a stage give the same bits as autocast's own casts."""

import contextlib

import pytest
import torch
from test_transfer_frontier_replay import _assert_same, _schedule, _supervision
from transfer_fixtures import addition_samples, make_pair

import pkt_core.transfer.frontier as frontier
from pkt_core.models.loading import wrap_loaded_model
from pkt_core.models.precision import PrecisionPolicy, frozen_linears_in_compute_dtype
from pkt_core.transfer.alignment_data import tokenise_samples
from pkt_core.transfer.config import TransferConfig


def _bf16_target(layers=3):
    source, target = make_pair(source_layers=5, target_layers=layers)
    return source, wrap_loaded_model(target.model, target.tokenizer, "tiny-target-bf16", precision="bf16")


@pytest.mark.parametrize(("trainable", "method", "variant"), [("block", "semalign", "acl-fisher"), ("lora", "kd", None)])
def test_stages_with_frozen_blocks_cast_once_equal_autocasts_casts_bit_for_bit(monkeypatch, trainable, method, variant):
    calls = []

    def counting(modules, policy):
        modules = list(modules)
        calls.append(modules)
        return frozen_linears_in_compute_dtype(modules, policy)

    runs = []
    for cast_once in (False, True):
        monkeypatch.setattr(frontier, "frozen_linears_in_compute_dtype",
                            counting if cast_once else (lambda modules, policy: contextlib.nullcontext(0)))
        source, target = _bf16_target()
        samples = tokenise_samples(target.tokenizer, addition_samples(4, seed=5), 32)
        config = TransferConfig(source="s", target="t", method=method, variant=variant, data_file="x",
                                steps_per_stage=2, batch_size=2, learning_rate=1e-3, trainable=trainable)
        runs.append(_schedule(target, samples, _supervision(source, target, samples), config, [0, 1, 2],
                              use_replay=trainable == "block"))
    _assert_same(*runs)
    # Each stage held every block but its own: the two others of the three.
    blocks = target.adapter.decoder_layers()
    assert [len(modules) for modules in calls] == [2] * 3
    assert all(blocks[k] not in modules for modules, k in zip(calls, [0, 1, 2]))


def test_frozen_linears_are_held_in_bf16_inside_and_put_back_exactly_after_even_on_error():
    _, target = _bf16_target()
    blocks = target.adapter.decoder_layers()
    trained = blocks[1]
    for parameter in target.model.parameters():
        parameter.requires_grad_(False)
    for parameter in trained.parameters():
        parameter.requires_grad_(True)
    originals = {id(p): (p, p.data_ptr(), p.detach().clone()) for p in target.model.parameters()}
    linear_tensors = {id(t) for b in blocks if b is not trained for m in b.modules()
                      if isinstance(m, torch.nn.Linear) for t in (m.weight, m.bias) if t is not None}
    with pytest.raises(RuntimeError, match="inside"):
        with frozen_linears_in_compute_dtype(blocks, target.precision) as count:
            assert count == len(linear_tensors) > 0
            for key, (parameter, _, _) in originals.items():
                expected = torch.bfloat16 if key in linear_tensors else torch.float32
                assert parameter.dtype == expected, parameter.shape
            raise RuntimeError("inside")
    for parameter, pointer, values in originals.values():  # the same float32 storage, untouched
        assert parameter.data_ptr() == pointer and parameter.dtype == torch.float32
        assert torch.equal(parameter.detach(), values)


def test_nothing_is_cast_in_fp32():
    _, target = make_pair(source_layers=5, target_layers=3)
    blocks = target.adapter.decoder_layers()
    with frozen_linears_in_compute_dtype(blocks, PrecisionPolicy("fp32", "fp32")) as count:
        assert count == 0
        assert all(p.dtype == torch.float32 for p in target.model.parameters())
