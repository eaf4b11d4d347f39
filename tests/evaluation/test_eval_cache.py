"""The result cache: keyed storage under $PKT_HOME, and fingerprints that change with any weight."""

import torch

from pkt_core.evaluation.cache import ResultCache, evaluation_fingerprint, variant_key
from pkt_core.models.loading import wrap_loaded_model
from pkt_core.models.synthetic import (
    byte_level_tokenizer,
    random_model_from_config,
    tiny_config,
)


def test_records_round_trip_under_pkt_home(isolated_pkt_home):
    cache = ResultCache()
    assert cache.path.parent == isolated_pkt_home / "eval_cache"
    records = {str(i): {"score": i % 2, "prediction": f"p{i}"} for i in range(1203)}  # several query chunks
    cache.put_many("model-a", "mmlu", "v1", records)
    assert cache.get_many("model-a", "mmlu", "v1", [str(i) for i in range(1300)]) == records
    assert cache.get_many("model-a", "mmlu", "v2", ["1"]) == {}
    assert cache.get_many("model-b", "mmlu", "v1", ["1"]) == {}
    cache.put_many("model-a", "mmlu", "v1", {"1": {"score": 0}})  # a rescore replaces the record
    assert cache.get_many("model-a", "mmlu", "v1", ["1"]) == {"1": {"score": 0}}
    assert ResultCache().count("model-a") == 1203  # another handle on the same file sees it all
    assert cache.forget("model-a") == 1203 and cache.count() == 0


def test_variant_key_changes_with_any_setting():
    base = {"shots": 0, "dtype": "fp32", "stops": ["\n"]}
    assert variant_key("harness-0shot", base) == variant_key("harness-0shot", dict(reversed(base.items())))
    assert variant_key("harness-0shot", base) != variant_key("harness-0shot", {**base, "dtype": "bf16"})


def test_a_model_changed_in_memory_gets_a_new_fingerprint():
    model = random_model_from_config(tiny_config("qwen2", num_layers=2), seed=0)
    loaded = wrap_loaded_model(model, byte_level_tokenizer(), "tiny")
    before = evaluation_fingerprint(loaded)
    assert evaluation_fingerprint(wrap_loaded_model(model, byte_level_tokenizer(), "tiny")) == before
    with torch.no_grad():
        model.model.layers[-1].mlp.down_proj.weight[5, 7] += 1e-3  # one weight, deep in the last layer
    assert evaluation_fingerprint(loaded) != before
