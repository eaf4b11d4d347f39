"""All layer pairs at once: every form of the engine against a pair-by-pair reference loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pkt_core.errors import SimilarityInputError
from pkt_core.similarity import (
    MEASURES,
    Kind,
    UnknownMeasureError,
    layer_similarity_matrix,
    linear_cka_matrix,
    rbf_cka_matrix,
)


def hsic_reference(k: np.ndarray, l: np.ndarray, estimator: str) -> float:
    n = k.shape[0]
    if estimator == "biased":
        h = np.eye(n) - 1.0 / n
        return float(np.trace(k @ h @ l @ h)) / (n - 1) ** 2
    kt, lt = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
    ones = np.ones(n)
    return float(
        np.trace(kt @ lt) + (ones @ kt @ ones) * (ones @ lt @ ones) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (ones @ kt @ lt @ ones)
    ) / (n * (n - 3))


def reference_matrix(grams_a, grams_b, estimator):
    return np.array([
        [hsic_reference(k, l, estimator) / np.sqrt(hsic_reference(k, k, estimator) * hsic_reference(l, l, estimator))
         for l in grams_b]
        for k in grams_a
    ])


def model_layers(rng, n, widths, drift):
    """Layers of one 'model': a residual stream that drifts from layer to layer."""
    stream = rng.standard_normal((n, 4))
    layers = []
    for width in widths:
        stream = stream + drift * rng.standard_normal(stream.shape)
        layers.append(stream @ rng.standard_normal((4, width)) + 0.3 * rng.standard_normal((n, width)) + 2.0)
    return layers


@pytest.fixture
def two_models():
    rng = np.random.default_rng(11)
    return model_layers(rng, 40, [12, 30, 7], 0.5), model_layers(rng, 40, [9, 50, 25, 3], 0.8)


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize(
    "form, budget, expected_form",
    [("gram", 1 << 30, "gram"), ("feature", 1 << 30, "feature"), ("gram", 7 * 40 * 8 * 9, "gram-blocked"),
     ("feature", 1, "feature")],  # budget 1: no centred layer is cached, all recomputed
)
def test_linear_matrix_matches_pairwise_reference(two_models, estimator, form, budget, expected_form):
    layers_a, layers_b = two_models
    expected = reference_matrix([x @ x.T for x in layers_a], [y @ y.T for y in layers_b], estimator)
    result = linear_cka_matrix(layers_a, layers_b, estimator=estimator, form=form, memory_budget_bytes=budget)
    assert result.form == expected_form
    assert result.values.shape == (3, 4)
    np.testing.assert_allclose(result.values, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_rbf_matrix_matches_pairwise_reference(two_models, estimator):
    from scipy.spatial.distance import pdist, squareform

    def gram(x):
        sq = pdist(x, "sqeuclidean")
        return np.exp(-squareform(sq) / (2 * 1.5**2 * np.median(sq)))

    layers_a, layers_b = two_models
    expected = reference_matrix([gram(x) for x in layers_a], [gram(y) for y in layers_b], estimator)
    result = rbf_cka_matrix(layers_a, layers_b, estimator=estimator, bandwidth_multiplier=1.5)
    np.testing.assert_allclose(result.values, expected, rtol=0, atol=1e-10)
    assert len(result.options["bandwidths_a"]) == 3 and len(result.options["bandwidths_b"]) == 4


def test_rbf_over_memory_budget_says_so(two_models):
    layers_a, layers_b = two_models
    with pytest.raises(SimilarityInputError, match="memory budget"):
        rbf_cka_matrix(layers_a, layers_b, memory_budget_bytes=1000)


def test_auto_form_follows_the_flop_count():
    rng = np.random.default_rng(0)
    wide = [rng.standard_normal((30, 200)) for _ in range(2)]
    tall = [rng.standard_normal((400, 5)) for _ in range(2)]
    assert linear_cka_matrix(wide, wide).form == "gram"  # n^2 (sum d) << n (sum d)^2
    assert linear_cka_matrix(tall, tall).form == "feature"


@pytest.mark.parametrize("name", list(MEASURES))
def test_self_comparison_diagonal(name):
    # Layers compared with themselves: score 1 (or distance 0) on the diagonal, for every measure.
    layers = model_layers(np.random.default_rng(12), 60, [5, 8, 6], 0.7)
    values = layer_similarity_matrix(layers, layers, name).values
    expected = 1.0 if MEASURES[name].kind is Kind.SCORE else 0.0
    np.testing.assert_allclose(np.diag(values), expected, rtol=0, atol=1e-7)


@pytest.mark.filterwarnings("ignore:.*by construction")  # wide layers: CCA's documented small-n warning
@pytest.mark.parametrize("name", list(MEASURES))
def test_matrix_entries_equal_the_pair_function(name, two_models):
    layers_a, layers_b = (layers[:2] for layers in two_models)
    measure = MEASURES[name]
    values = measure.layer_matrix(layers_a, layers_b).values
    for i, x in enumerate(layers_a):
        for j, y in enumerate(layers_b):
            assert values[i, j] == pytest.approx(measure(x, y), abs=1e-10)


def test_torch_float32_layers_equal_numpy_layers(two_models):
    layers_a, layers_b = two_models
    as_float32 = [x.astype(np.float32) for x in layers_a]
    from_torch = linear_cka_matrix([torch.from_numpy(x) for x in as_float32], layers_b).values
    np.testing.assert_array_equal(from_torch, linear_cka_matrix(as_float32, layers_b).values)


def test_layer_errors_name_the_layer(two_models):
    layers_a, layers_b = two_models
    short = [*layers_b[:2], layers_b[2][:30]]
    with pytest.raises(SimilarityInputError, match=r"layers_b\[2\] has 30"):
        linear_cka_matrix(layers_a, short)
    broken = [x.copy() for x in layers_a]
    broken[1][3, 4] = np.nan
    with pytest.raises(SimilarityInputError, match=r"A layer 7 contains 1 NaN"):
        linear_cka_matrix(broken, layers_b, names_a=["A layer 5", "A layer 7", "A layer 9"])
    with pytest.raises(SimilarityInputError, match="empty"):
        linear_cka_matrix([], layers_b)


def test_unknown_measure_and_option(two_models):
    layers_a, layers_b = two_models
    with pytest.raises(UnknownMeasureError, match="linear_cka"):
        layer_similarity_matrix(layers_a, layers_b, "linear_ckaa")
    with pytest.raises(UnknownMeasureError, match="no option k"):
        layer_similarity_matrix(layers_a, layers_b, "linear_cka", k=3)
