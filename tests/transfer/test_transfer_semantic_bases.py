import numpy as np
import torch

from pkt_core.transfer.semantic_bases import (
    cached_semantic_basis,
    cross_model_map,
    decomposition_fidelity,
    heads_are_tied,
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
