"""The registry's declarations are claims: every declared invariance is checked on random data."""

from __future__ import annotations

import numpy as np
import pytest

from pkt_core.similarity import MEASURES, Invariance, Kind, UnknownMeasureError, get_measure


def transform(invariance: Invariance, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    d = x.shape[1]
    if invariance is Invariance.PERMUTATION:
        return x[:, rng.permutation(d)]
    if invariance is Invariance.ORTHOGONAL:
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        return x @ q
    if invariance is Invariance.ISOTROPIC_SCALING:
        return 37.5 * x
    if invariance is Invariance.TRANSLATION:
        return x + 50.0 * rng.standard_normal(d)
    if invariance is Invariance.INVERTIBLE_LINEAR:
        return x @ (rng.standard_normal((d, d)) + 2.0 * np.eye(d))
    raise AssertionError(invariance)


def related_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    z = rng.standard_normal((120, 3))
    x = z @ rng.standard_normal((3, 10)) + 0.5 * rng.standard_normal((120, 10))
    y = np.tanh(z) @ rng.standard_normal((3, 14)) + 0.5 * rng.standard_normal((120, 14))
    return x, y


DECLARED = [(name, invariance) for name, measure in MEASURES.items() for invariance in sorted(measure.invariances)]


@pytest.mark.parametrize("name, invariance", DECLARED, ids=[f"{n}-{i.value}" for n, i in DECLARED])
def test_declared_invariance_holds(name, invariance):
    rng = np.random.default_rng(30)
    x, y = related_pair(rng)
    measure = MEASURES[name]
    before = measure(x, y)
    assert measure(transform(invariance, x, rng), y) == pytest.approx(before, abs=1e-8)
    assert measure(y, transform(invariance, x, rng)) == pytest.approx(measure(y, x), abs=1e-8)


@pytest.mark.parametrize("name", list(MEASURES))
def test_declarations_are_consistent(name):
    measure = MEASURES[name]
    assert measure.kind in (Kind.SCORE, Kind.DISTANCE)
    low, high = measure.value_range
    x, y = related_pair(np.random.default_rng(31))
    value = measure(x, y)
    assert low <= value <= high
    if measure.symmetric:
        assert measure(y, x) == pytest.approx(value, abs=1e-10)
    if Invariance.INVERTIBLE_LINEAR in measure.invariances:  # the larger group contains the smaller ones
        assert {Invariance.ORTHOGONAL, Invariance.ISOTROPIC_SCALING} <= measure.invariances
    if Invariance.ORTHOGONAL in measure.invariances:
        assert Invariance.PERMUTATION in measure.invariances


def test_a_measure_without_a_declared_invariance_really_lacks_it():
    # Guards against declarations that are merely cautious: PWCCA's weights use A's own
    # neurons, so rotating A changes it; linear CKA is not invariant to a general linear map.
    rng = np.random.default_rng(32)
    x, y = related_pair(rng)
    assert Invariance.ORTHOGONAL not in MEASURES["pwcca"].invariances
    assert abs(MEASURES["pwcca"](transform(Invariance.ORTHOGONAL, x, rng), y) - MEASURES["pwcca"](x, y)) > 1e-4
    assert Invariance.INVERTIBLE_LINEAR not in MEASURES["linear_cka"].invariances
    stretched = x @ np.diag(np.geomspace(0.01, 10, 10))
    assert abs(MEASURES["linear_cka"](stretched, y) - MEASURES["linear_cka"](x, y)) > 1e-3


@pytest.mark.parametrize("name", list(MEASURES))
def test_every_declared_option_is_accepted_with_its_default(name):
    measure = MEASURES[name]
    x, y = related_pair(np.random.default_rng(33))
    value = measure(x, y, **measure.options)
    assert measure.layer_matrix([x], [y], **measure.options).values[0, 0] == pytest.approx(value, abs=1e-12)
    assert value == pytest.approx(measure(x, y), abs=1e-12)


def test_unknown_names_get_a_suggestion():
    with pytest.raises(UnknownMeasureError, match="Did you mean 'svcca'"):
        get_measure("svcaa")
