"""Slow: MMLU on the cached real pair (2 items per subject, 114 items, 0-shot)."""


import pytest

from pkt_core.models.registry import get_pair_spec

pytestmark = pytest.mark.slow

PAIR = get_pair_spec("qwen-coder-1.5b-to-0.5b")


def test_mmlu_source_is_clearly_above_chance_and_above_the_target(real_pair_home, tmp_path):
    from pkt_core.evaluation.cache import ResultCache
    from pkt_core.evaluation.runner import EvalOptions, compare_evaluations, evaluate
    from pkt_core.models.loading import load_model

    cache = ResultCache(tmp_path / "cache.sqlite")  # keep the user's evaluation cache out of the test
    options = EvalOptions("mmlu", limit=2, batch_size=4)
    results = {}
    for name in (PAIR.target, PAIR.source):
        results[name] = evaluate(load_model(name), options, out=tmp_path / name, cache=cache)
        acc = results[name].summary["metrics"]["acc"]
        print(f"{name}: MMLU acc {acc['mean']:.3f} (95% CI {acc['low']:.3f}-{acc['high']:.3f}) on {acc['n']} items")
    source, target = results[PAIR.source].summary["metrics"]["acc"], results[PAIR.target].summary["metrics"]["acc"]
    assert source["n"] == target["n"] == 114
    assert source["low"] > 0.25  # chance is one in four
    assert source["mean"] > target["mean"]
    comparison = compare_evaluations(results[PAIR.target], results[PAIR.source])
    print(f"target -> source flips: {comparison.wrong_to_right} wrong->right, {comparison.right_to_wrong} "
          f"right->wrong, McNemar p = {comparison.mcnemar_p:.4f}")
