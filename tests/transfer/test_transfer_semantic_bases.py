import copy

import numpy as np
import torch

from pkt_core.transfer.model_cache import COMPUTED, HIT
from pkt_core.transfer.semantic_bases import (
    cached_semantic_basis,
    cross_model_map,
    decomposition_fidelity,
    heads_are_tied,
    model_recomposition_operator,
    model_semantic_basis,
    pair_cross_model_map,
    pseudo_inverse_tall,
    recomposition_operator,
    semantic_basis,
)


def test_pseudo_inverse_matches_numpy_svd():
    weight = torch.randn(500, 24, dtype=torch.float64)
    np.testing.assert_allclose(pseudo_inverse_tall(weight).numpy(), np.linalg.pinv(weight.numpy()), atol=1e-12)


def test_basis_columns_are_unit_pinv_columns():
    weight = torch.randn(300, 16)
    basis = semantic_basis(weight)
    reference = np.linalg.pinv(weight.double().numpy())
    reference /= np.linalg.norm(reference, axis=0, keepdims=True)
    np.testing.assert_allclose(basis.numpy(), reference, atol=1e-5)


def test_fidelity_is_one_for_an_orthogonal_head():
    head, _ = torch.linalg.qr(torch.randn(32, 32, dtype=torch.float64))  # V = D, orthogonal
    operator = recomposition_operator(semantic_basis(head.float()))
    states = torch.randn(200, 32)
    assert abs(decomposition_fidelity(states, operator).mean_cosine - 1.0) < 1e-5


def test_fidelity_stays_high_for_a_random_overcomplete_head():
    head = torch.randn(4000, 32)
    states = torch.randn(200, 32)
    cosine = decomposition_fidelity(states, recomposition_operator(semantic_basis(head))).mean_cosine
    assert cosine > 0.9
    least_squares = recomposition_operator(semantic_basis(head), "least_squares")
    assert decomposition_fidelity(states, least_squares).mean_cosine > 1 - 1e-6


def test_cross_map_equals_decompose_then_recompose():
    source_basis = semantic_basis(torch.randn(400, 24))
    target_basis = semantic_basis(torch.randn(400, 16))
    state = torch.randn(24, dtype=torch.float64)
    coefficients = source_basis.double().T @ state / state.norm()  # m-dim cosines
    explicit = target_basis.double() @ coefficients
    mapped = cross_model_map(target_basis, source_basis).double() @ state / state.norm()
    np.testing.assert_allclose(mapped.numpy(), explicit.numpy(), rtol=1e-4, atol=1e-5)


def test_basis_is_cached_on_disk_by_fingerprint(isolated_pkt_home):
    weight = torch.randn(100, 8)
    first = cached_semantic_basis(weight, "abc", "output")
    assert list((isolated_pkt_home / "semantic_bases").glob("abc-output-all.safetensors"))
    again = cached_semantic_basis(torch.zeros(100, 8), "abc", "output")  # served from the cache
    torch.testing.assert_close(first, again)


def test_tied_heads_are_reported():
    weight = torch.randn(50, 8)
    assert heads_are_tied(weight, weight) == (True, 0.0)
    tied, relative = heads_are_tied(weight, weight + 1e-4 * torch.randn(50, 8))
    assert tied and relative < 1e-3
    assert not heads_are_tied(weight, torch.randn(50, 8))[0]


def _wrapped(model, precision=None, name="tiny"):
    from pkt_core.models.loading import wrap_loaded_model
    from pkt_core.models.synthetic import byte_level_tokenizer

    return wrap_loaded_model(copy.deepcopy(model), byte_level_tokenizer(), name, precision=precision)


def _tiny_model(seed=1, width=32):
    from pkt_core.models.synthetic import random_model_from_config, tiny_config

    return random_model_from_config(tiny_config("qwen2", num_layers=2, width=width), seed=seed)


def test_operators_are_cached_per_stored_weights_side_and_coefficients():
    model = _tiny_model()
    fp32, autocast, low = _wrapped(model), _wrapped(model, "bf16"), _wrapped(model, "bf16-weights")
    expected = recomposition_operator(semantic_basis(model.lm_head.weight))
    operator, status = model_recomposition_operator(fp32, "output")
    assert status == COMPUTED and torch.equal(operator, expected) and operator.dtype == torch.float64
    # bf16 autocast holds the same float32 weights and computes no forward here: the same entry.
    shared, status = model_recomposition_operator(autocast, "output")
    assert status == HIT and torch.equal(shared, expected)
    # Weights stored in bf16 are other numbers: their own entry.
    rounded, status = model_recomposition_operator(low, "output")
    assert status == COMPUTED and not torch.equal(rounded, expected)
    embedding = model.model.embed_tokens.weight
    inputs, status = model_recomposition_operator(fp32, "input")
    assert status == COMPUTED and torch.equal(inputs, recomposition_operator(semantic_basis(embedding)))
    projector, status = model_recomposition_operator(fp32, "output", "least_squares")
    assert status == COMPUTED and torch.equal(projector, recomposition_operator(semantic_basis(model.lm_head.weight),
                                                                                "least_squares"))
    other, status = model_recomposition_operator(_wrapped(_tiny_model(seed=2)), "output")
    assert status == COMPUTED and not torch.equal(other, expected)


def test_pair_cross_map_is_cached_and_is_the_product_of_the_bases():
    source, target = _wrapped(_tiny_model(seed=1, width=48), name="s"), _wrapped(_tiny_model(seed=2), name="t")
    expected = cross_model_map(semantic_basis(target.model.lm_head.weight), semantic_basis(source.model.lm_head.weight))
    cross, status = pair_cross_model_map(target, source)
    assert status == COMPUTED and torch.equal(cross, expected)
    again, status = pair_cross_model_map(target, source)
    assert status == HIT and torch.equal(again, expected)
    ids = torch.arange(0, 200, 2)
    subset, status = pair_cross_model_map(target, source, ids, ids)
    assert status == COMPUTED and subset.shape == expected.shape and not torch.equal(subset, expected)


def test_a_basis_cached_under_the_older_autocast_key_is_adopted():
    autocast = _wrapped(_tiny_model(), "bf16")
    marker = torch.randn(300, 32)  # a basis no head of this model gives: proves the old entry is the one read
    stored = cached_semantic_basis(marker, autocast.fingerprint, "output")
    assert torch.equal(model_semantic_basis(autocast, "output"), stored)
    fp32 = _wrapped(_tiny_model())
    assert torch.equal(model_semantic_basis(fp32, "output"), stored)  # the same weights, one entry now
