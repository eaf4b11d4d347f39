"""Fixtures for transfer tests: a random tiny pair, and a pair trained on a synthetic task."""

from __future__ import annotations

import pytest
from transfer_fixtures import (
    addition_samples,
    copy_first_operand_samples,
    make_pair,
    train_on,
)


@pytest.fixture
def random_pair():
    return make_pair()


@pytest.fixture(scope="session")
def trained_pair_state():
    """A source that knows addition and a target that only learnt to answer with a digit (it copies
    the first operand): the target has the format and a working output head, not the knowledge.
    (A target trained for a few steps only cannot move its outputs at all through single layers:
    its near-initial head and final norm bound the logit range.)"""
    source, target = make_pair()
    train_on(source, addition_samples(400, seed=1), steps=300)
    train_on(target, copy_first_operand_samples(400, seed=1), steps=150)
    return {k: v.clone() for k, v in source.model.state_dict().items()}, {k: v.clone() for k, v in target.model.state_dict().items()}


@pytest.fixture
def trained_pair(trained_pair_state):
    source, target = make_pair()
    source.model.load_state_dict(trained_pair_state[0])
    target.model.load_state_dict(trained_pair_state[1])
    return source, target
