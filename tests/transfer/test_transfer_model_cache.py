"""The per-model cache of set-up results: what its keys tell apart, and that a hit is the stored value."""

import copy

import torch

from pkt_core.models.loading import wrap_loaded_model
from pkt_core.models.synthetic import byte_level_tokenizer, random_model_from_config, tiny_config
from pkt_core.transfer.model_cache import (
    COMPUTED,
    HIT,
    cache_path,
    cached_tensors,
    inputs_digest,
    weights_identity,
)


def _model(seed=1):
    return random_model_from_config(tiny_config("qwen2", num_layers=2, width=32), seed=seed)


def test_weights_identity_is_shared_by_fp32_and_autocast_only():
    model = _model()
    fp32 = wrap_loaded_model(model, byte_level_tokenizer(), "m")
    autocast = wrap_loaded_model(copy.deepcopy(model), byte_level_tokenizer(), "m", precision="bf16")
    low_weights = wrap_loaded_model(copy.deepcopy(model), byte_level_tokenizer(), "m", precision="bf16-weights")
    other = wrap_loaded_model(_model(seed=2), byte_level_tokenizer(), "m")
    # Forward passes differ under autocast, so the fingerprints do; the stored weights do not.
    assert fp32.fingerprint != autocast.fingerprint
    assert weights_identity(fp32) == weights_identity(autocast) == fp32.fingerprint
    assert weights_identity(low_weights) not in {weights_identity(fp32), weights_identity(other)}
    assert weights_identity(other) != weights_identity(fp32)


def test_inputs_digest_tells_shape_dtype_values_and_settings_apart():
    ids = torch.arange(6)
    reference = inputs_digest(ids, 2)
    assert inputs_digest(torch.arange(6), 2) == reference
    assert inputs_digest(ids.reshape(2, 3), 2) != reference
    assert inputs_digest(ids.to(torch.int32), 2) != reference
    assert inputs_digest(ids + 1, 2) != reference
    assert inputs_digest(ids, 4) != reference
    assert inputs_digest(ids, "2") != reference


def test_an_entry_is_computed_once_and_a_damaged_one_is_computed_again():
    calls = []

    def compute():
        calls.append(1)
        return {"value": torch.linspace(0, 1, 5, dtype=torch.float64)}

    first, status = cached_tensors("kind", "key", compute)
    assert status == COMPUTED and len(calls) == 1
    again, status = cached_tensors("kind", "key", compute)
    assert status == HIT and len(calls) == 1 and torch.equal(again["value"], first["value"])
    assert again["value"].dtype == torch.float64
    cached_tensors("kind", "another key", compute)
    assert len(calls) == 2
    cache_path("kind", "key").write_bytes(b"not a safetensors file")
    repaired, status = cached_tensors("kind", "key", compute)
    assert status == COMPUTED and len(calls) == 3 and torch.equal(repaired["value"], first["value"])
