import itertools

import numpy as np
import pytest

from pkt_core.transfer.layer_mapping import (
    _monotone_assignment,
    attribution_monotone_map,
    cka_monotone_map,
    depth_map,
    depth_map_one_based,
    interpolated_map,
    relocate_critical_layers,
)


def test_depth_map_reproduces_the_40_to_32_example():
    mapped = depth_map_one_based(40, 32)
    assert mapped[:12] == [1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13, 15]  # method.md, section 3
    assert mapped[-1] == 40
    never = sorted(set(range(1, 41)) - set(mapped))
    assert never == [4, 9, 14, 19, 24, 29, 34, 39]
    zero_based = depth_map(40, 32)
    assert [zero_based.primary_source(k) for k in range(32)] == [l - 1 for l in mapped]


def test_critical_layer_is_relocated_to_the_first_deeper_pair():
    base = depth_map(40, 32)
    relocated = relocate_critical_layers(base, [8])  # 0-based 8 = the paper's layer 9, skipped
    layers = [relocated.primary_source(k) for k in range(32)]
    # k' = min{k : l(k) >= 9} is the 8th target layer (1-based), index 7, which had layer 10.
    assert layers[7] == 8
    assert layers[:7] == [base.primary_source(k) for k in range(7)]
    assert "critical source layer 8" in relocated.notes[0]


def test_interpolation_weights_follow_the_formula():
    mapping = interpolated_map(28, 24)
    for k in range(1, 25):
        u = 28 * k / 24
        a = min(max(int(np.floor(u)), 1), 27)
        lam = min(max(u - a, 0.0), 1.0)
        layers, weights = mapping.sources_of(k - 1)
        combined = {l: w for l, w in zip(layers, weights)}
        assert combined.get(a - 1, 0.0) == pytest.approx(1 - lam)
        assert combined.get(a, 0.0) == pytest.approx(lam)
        assert sum(weights) == pytest.approx(1.0)


@pytest.mark.parametrize("strict", [True, False])
def test_monotone_assignment_is_optimal_by_brute_force(strict):
    rng = np.random.default_rng(0)
    gain = rng.normal(size=(3, 5))
    best = max(
        (combo for combo in itertools.product(range(5), repeat=3)
         if all((b > a) if strict else (b >= a) for a, b in zip(combo, combo[1:]))),
        key=lambda combo: sum(gain[k, l] for k, l in enumerate(combo)),
    )
    assert tuple(_monotone_assignment(gain, strictly_increasing=strict)) == best


def test_attribution_and_cka_maps_are_monotone_one_source_each():
    scores = np.abs(np.random.default_rng(1).normal(size=28))
    mapping = attribution_monotone_map(scores, 24)
    layers = [mapping.primary_source(k) for k in range(24)]
    assert all(b > a for a, b in zip(layers, layers[1:]))
    assert all(len(mapping.sources_of(k)[0]) == 1 for k in range(24))
    cka = np.random.default_rng(2).uniform(size=(24, 28))
    mapped = cka_monotone_map(cka)
    chosen = [mapped.primary_source(k) for k in range(24)]
    assert all(b >= a for a, b in zip(chosen, chosen[1:]))
    assert mapped.paper_version == "v2-reconstructed"
