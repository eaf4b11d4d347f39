"""Minibatch CKA (Nguyen et al. 2021): sums of per-batch unbiased HSIC, normalised once."""

from __future__ import annotations

import numpy as np
import pytest
from similarity_references import hsic_unbiased_reference, run_two_gloo_ranks

from pkt_core.errors import SimilarityInputError
from pkt_core.similarity import MinibatchCKA


def minibatch_reference(layers_a, layers_b, batch_rows: int) -> np.ndarray:
    """Nguyen et al. 2021, eq. (3): the HSIC sums over batches, then one normalisation."""
    batches = range(0, layers_a[0].shape[0], batch_rows)

    def summed(x, y):
        return sum(hsic_unbiased_reference(x[s:s + batch_rows] @ x[s:s + batch_rows].T,
                                           y[s:s + batch_rows] @ y[s:s + batch_rows].T) for s in batches)

    return np.array([[summed(x, y) / np.sqrt(summed(x, x) * summed(y, y)) for y in layers_b] for x in layers_a])


def model_layers(rng, n, widths):
    z = rng.standard_normal((n, 3))
    return [z @ rng.standard_normal((3, w)) + rng.standard_normal((n, w)) + 1.0 for w in widths]


@pytest.fixture
def layers():
    rng = np.random.default_rng(40)
    return model_layers(rng, 96, [6, 20, 9]), model_layers(rng, 96, [15, 4])


def feed(accumulator, layers_a, layers_b, batch_rows, batches):
    for k in batches:
        rows = slice(k * batch_rows, (k + 1) * batch_rows)
        accumulator.update([x[rows] for x in layers_a], [y[rows] for y in layers_b])


def test_accumulator_matches_the_minibatch_formula(layers):
    layers_a, layers_b = layers
    accumulator = MinibatchCKA(3, 2)
    feed(accumulator, layers_a, layers_b, 24, range(4))
    result = accumulator.result()
    np.testing.assert_allclose(result.values, minibatch_reference(layers_a, layers_b, 24), rtol=0, atol=1e-10)
    assert (accumulator.n_batches, accumulator.n_rows, result.form) == (4, 96, "minibatch")


def test_one_batch_is_the_full_batch_unbiased_cka(layers):
    layers_a, layers_b = layers
    accumulator = MinibatchCKA(3, 2)
    accumulator.update(layers_a, layers_b)
    full = np.array([[hsic_unbiased_reference(x @ x.T, y @ y.T)
                      / np.sqrt(hsic_unbiased_reference(x @ x.T, x @ x.T) * hsic_unbiased_reference(y @ y.T, y @ y.T))
                      for y in layers_b] for x in layers_a])
    np.testing.assert_allclose(accumulator.result().values, full, rtol=0, atol=1e-10)


def test_it_is_not_the_mean_of_per_batch_cka(layers):
    # The point of accumulating HSIC: a mean of per-batch ratios is a different (biased) quantity.
    layers_a, layers_b = layers
    x, y = layers_a[1], layers_b[0]
    per_batch = []
    for s in range(0, 96, 24):
        k, l = x[s:s + 24] @ x[s:s + 24].T, y[s:s + 24] @ y[s:s + 24].T
        per_batch.append(hsic_unbiased_reference(k, l) / np.sqrt(hsic_unbiased_reference(k, k)
                                                                 * hsic_unbiased_reference(l, l)))
    accumulator = MinibatchCKA(1, 1)
    feed(accumulator, [x], [y], 24, range(4))
    assert abs(accumulator.result().values[0, 0] - np.mean(per_batch)) > 1e-6


def test_merge_combines_partial_results_exactly(layers):
    layers_a, layers_b = layers
    whole, even, odd = MinibatchCKA(3, 2), MinibatchCKA(3, 2), MinibatchCKA(3, 2)
    feed(whole, layers_a, layers_b, 16, range(6))
    feed(even, layers_a, layers_b, 16, [0, 2, 4])
    feed(odd, layers_a, layers_b, 16, [5, 3, 1])
    merged = odd.merge(even).result()
    np.testing.assert_allclose(merged.values, whole.result().values, rtol=0, atol=1e-13)
    assert (odd.n_batches, odd.n_rows) == (6, 96)


def test_guards(layers):
    layers_a, layers_b = layers
    accumulator = MinibatchCKA(3, 2)
    with pytest.raises(SimilarityInputError, match="no batches"):
        accumulator.result()
    with pytest.raises(SimilarityInputError, match="at least 4"):
        accumulator.update([x[:3] for x in layers_a], [y[:3] for y in layers_b])
    with pytest.raises(SimilarityInputError, match="3 x 2 layers"):
        accumulator.update(layers_a[:2], layers_b)
    accumulator.update([x[:10] for x in layers_a], [y[:10] for y in layers_b])
    with pytest.raises(SimilarityInputError, match=r"layers_a\[1\] had 20 features"):
        accumulator.update([layers_a[0][:10], layers_a[2][:10], layers_a[2][:10]], [y[:10] for y in layers_b])
    with pytest.raises(SimilarityInputError, match="cannot merge"):
        accumulator.merge(MinibatchCKA(2, 2))


def test_all_reduce_without_torch_distributed_is_a_no_op(layers):
    layers_a, layers_b = layers
    accumulator = MinibatchCKA(3, 2)
    feed(accumulator, layers_a, layers_b, 32, range(3))
    before = accumulator.result().values
    assert accumulator.all_reduce() == 1
    np.testing.assert_array_equal(accumulator.result().values, before)


def test_gloo_all_reduce_over_two_processes_gives_the_single_process_answer(layers, tmp_path):
    layers_a, layers_b = layers
    batch_rows = 16
    single = MinibatchCKA(3, 2)
    feed(single, layers_a, layers_b, batch_rows, range(6))
    data_file = tmp_path / "data.npz"
    np.savez(data_file, layers_a=np.stack([np.pad(x, ((0, 0), (0, 20 - x.shape[1]))) for x in layers_a]),
             layers_b=np.stack([np.pad(y, ((0, 0), (0, 15 - y.shape[1]))) for y in layers_b]),
             batch_rows=batch_rows)
    # Zero padding columns to stack the layers changes no Gram matrix, so no CKA value.
    out_file = tmp_path / "result.npz"
    run_two_gloo_ranks(tmp_path, data_file, out_file)
    result = np.load(out_file)
    assert int(result["world"]) == 2
    assert (int(result["n_batches"]), int(result["n_rows"])) == (6, 96)
    np.testing.assert_allclose(result["values"], single.result().values, rtol=0, atol=1e-13)
