"""Slow checks on the real Qwen2.5-Coder pair from the cache (`pkt models fetch qwen-coder-1.5b-to-0.5b`)."""

import numpy as np
import pytest

from pkt_core.models.registry import get_pair_spec

pytestmark = pytest.mark.slow

PAIR = get_pair_spec("qwen-coder-1.5b-to-0.5b")


def test_capture_on_the_real_pair(real_pair_home):
    from pkt_core.capture.dataset import capture_texts
    from pkt_core.capture.hooks import CaptureOptions
    from pkt_core.models.loading import load_model
    from pkt_core.models.pair_check import check_pair

    assert check_pair(PAIR.name).vocabulary.identical
    texts = ["def fibonacci(n):\n    if n < 2:\n        return n", "The capital of France is"]
    shapes = {}
    for name, layers, width in ((PAIR.target, 24, 896), (PAIR.source, 28, 1536)):
        loaded = load_model(name)
        result = capture_texts(loaded, texts, CaptureOptions(sites=("resid_post",), outlier_norm_factor=20))
        assert result.layers == list(range(layers))
        shapes[name] = result.layer(layers // 2).shape
        assert shapes[name][1] == width
        assert np.isfinite(result.layer(layers - 1)).all()
        # Qwen's first token carries a massive activation: the filter finds it in both sequences.
        assert {tuple(row) for row in result.metadata["dropped_outliers"]["rows"]} >= {(0, 0), (1, 0)}
    assert shapes[PAIR.target][0] == shapes[PAIR.source][0]  # one tokenizer: the same rows
