"""The decomposition-fidelity table: the sampling rule, its record, and values that are the full
computation's on the rows and layers the sample keeps (checked against a float64 formula)."""

import numpy as np
import pytest
import torch

from pkt_core.models.loading import wrap_loaded_model
from pkt_core.models.synthetic import byte_level_tokenizer, random_model_from_config, tiny_config
from pkt_core.transfer.config import TransferConfig
from pkt_core.transfer.fidelity import SAMPLE_LAYERS, SAMPLE_ROWS, fidelity_rows, sampled_layers, sampled_rows
from pkt_core.transfer.model_cache import COMPUTED, HIT


def _config(scope: str, seed: int = 3) -> TransferConfig:
    return TransferConfig(source="s", target="t", data_file="x", fidelity_scope=scope, seed=seed)


def _model(layers: int, width: int, seed: int):
    return wrap_loaded_model(random_model_from_config(tiny_config("qwen2", num_layers=layers, width=width), seed=seed),
                             byte_level_tokenizer(), f"tiny-{layers}-{width}")


def _tokens(layers: int, rows: int, width: int, seed: int) -> dict[int, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {layer: torch.randn(rows, width, generator=generator) * (1 + layer) for layer in range(layers)}


def _float64_fidelity(loaded, states: torch.Tensor, side: str) -> float:
    """cos(S S^T n(h), n(h)) averaged over rows, with S the unit columns of pinv(W), all in float64."""
    weight = (loaded.model.lm_head.weight if side == "output" else loaded.model.model.embed_tokens.weight)
    basis = np.linalg.pinv(weight.detach().double().numpy())
    basis /= np.maximum(np.linalg.norm(basis, axis=0, keepdims=True), 1e-300)  # the padding row's column is 0
    norm = loaded.model.model.norm
    h = states.double().numpy()
    h = h / np.sqrt((h ** 2).mean(axis=1, keepdims=True) + norm.variance_epsilon) * norm.weight.detach().double().numpy()
    recomposed = h @ basis @ basis.T
    cosines = (recomposed * h).sum(1) / (np.linalg.norm(recomposed, axis=1) * np.linalg.norm(h, axis=1))
    return float(cosines.mean())


def test_sampled_layers_spread_over_depth_with_both_ends():
    for count in (9, 12, 24, 28, 40):
        layers = sampled_layers(count)
        assert len(layers) == SAMPLE_LAYERS and layers[0] == 0 and layers[-1] == count - 1
        gaps = np.diff(layers)
        assert gaps.min() >= 1 and gaps.max() - gaps.min() <= 1  # evenly spaced, as integers allow
    assert sampled_layers(24) == [0, 3, 7, 10, 13, 16, 20, 23]
    assert sampled_layers(5) == [0, 1, 2, 3, 4]


def test_sampled_rows_are_seeded_distinct_and_ordered():
    rows = sampled_rows(1000, seed=3)
    assert rows.numel() == SAMPLE_ROWS and torch.equal(rows, sampled_rows(1000, seed=3))
    assert torch.equal(rows, rows.unique()) and int(rows.max()) < 1000
    assert not torch.equal(rows, sampled_rows(1000, seed=4))
    assert torch.equal(sampled_rows(100, seed=3), torch.arange(100))


def test_sampled_fidelity_is_the_full_computation_on_the_rows_and_layers_it_keeps():
    models = {"source": _model(12, 32, seed=1), "target": _model(6, 16, seed=2)}
    tokens = {"source": _tokens(12, 400, 32, seed=5), "target": _tokens(6, 300, 16, seed=6)}
    rows, record, cache = fidelity_rows(_config("sample"), models, tokens)
    assert record["scope"] == "sample" and str(SAMPLE_ROWS) in record["rule"] and record["seed"] == 3
    assert record["layers"] == {"source": sampled_layers(12), "target": list(range(6))}
    assert record["rows"] == {"source": SAMPLE_ROWS, "target": SAMPLE_ROWS}
    assert set(cache.values()) == {COMPUTED}
    assert {(r["model"], r["layer"]) for r in rows} == {(m, l) for m, ls in record["layers"].items() for l in ls}
    assert all(r["rows"] == SAMPLE_ROWS and r["scope"] == "sample" for r in rows)

    kept = {role: sampled_rows(states[0].shape[0], 3) for role, states in tokens.items()}
    restricted = {role: {l: v[kept[role]] for l, v in states.items()} for role, states in tokens.items()}
    full_on_kept, full_record, cache = fidelity_rows(_config("full"), models, restricted)
    assert full_record["scope"] == "full" and set(cache.values()) == {HIT}  # operators read back, not recomputed
    by_key = {(r["model"], r["layer"], r["bases"]): r for r in full_on_kept}
    for row in rows:
        same = by_key[(row["model"], row["layer"], row["bases"])]
        assert row["mean_cosine"] == same["mean_cosine"] and row["std_cosine"] == same["std_cosine"]
        states = tokens[row["model"]][row["layer"]][kept[row["model"]]]
        assert row["mean_cosine"] == pytest.approx(_float64_fidelity(models[row["model"]], states, row["bases"]),
                                                   abs=1e-6)


def test_full_scope_covers_every_row_and_layer():
    models = {"source": _model(10, 16, seed=1)}
    tokens = {"source": _tokens(10, 300, 16, seed=5)}
    rows, record, _ = fidelity_rows(_config("full"), models, tokens)
    assert record["layers"]["source"] == list(range(10)) and record["rows"]["source"] == 300
    assert len(rows) == 10 * 2 and all(r["rows"] == 300 for r in rows)
    layer_five = next(r for r in rows if r["layer"] == 5 and r["bases"] == "input")
    assert layer_five["mean_cosine"] == pytest.approx(_float64_fidelity(models["source"], tokens["source"][5], "input"),
                                                      abs=1e-6)


def test_an_unknown_scope_is_refused():
    from pkt_core.transfer.config import TransferConfigError

    with pytest.raises(TransferConfigError, match="fidelity_scope must be one of sample, full"):
        _config("some")
