"""Continuous measures, answer-format diagnostics, seeded subsets, settings and the pkt eval flags,
against float64 formulas worked out here."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from pkt_core.cli.main import main
from pkt_core.evaluation.continuous import gap_closed, paired_difference, paired_measures
from pkt_core.evaluation.diagnostics import answer_format, entropy_bits, total_variation
from pkt_core.evaluation.gold_solutions import gold_continuation
from pkt_core.evaluation.prompts import build_prompt, prompt_variant
from pkt_core.evaluation.records import read_items, read_summary
from pkt_core.evaluation.runner import EvalOptions, evaluate
from pkt_core.evaluation.settings import EvalSettings
from pkt_core.evaluation.splits import evaluation_items, ids_digest, sample_subset
from pkt_core.models.loading import wrap_loaded_model
from pkt_core.models.synthetic import byte_level_tokenizer, random_model_from_config, tiny_config
from pkt_core.offline_data import DataSourceError


def tiny(seed: int = 0):
    config = tiny_config("llama", num_layers=2, width=32)
    config.max_position_embeddings = 4096
    return wrap_loaded_model(random_model_from_config(config, seed=seed), byte_level_tokenizer(), f"tiny-{seed}")


def test_entropy_distance_and_flags_by_hand():
    counts = {"A": 1, "B": 6, "C": 1, "D": 0}
    assert entropy_bits(counts) == pytest.approx(-(2 * (1 / 8) * math.log2(1 / 8) + (6 / 8) * math.log2(6 / 8)))
    gold = {"A": 2, "B": 2, "C": 2, "D": 2}
    assert total_variation(counts, gold) == pytest.approx(0.5 * (1 / 8 + 4 / 8 + 1 / 8 + 2 / 8))
    block = answer_format(list("ABBBBBBC"), list("AABBCCDD"), "ABCD", {"low": 0.1, "high": 0.5}, 0.25)
    assert block["dominated"] and block["dominant_option"] == "B" and block["dominant_share"] == 0.75
    assert block["at_chance"]
    spread = answer_format(list("ABCD"), list("ABCD"), "ABCD", {"low": 0.6, "high": 1.0}, 0.25)
    assert not spread["dominated"] and not spread["at_chance"] and spread["entropy_bits"] == pytest.approx(2.0)


def test_paired_difference_and_gap_closed_by_hand():
    rng = np.random.default_rng(3)
    before = rng.normal(-2.0, 0.5, 200)
    source = before + 1.0 + rng.normal(0, 0.1, 200)
    after = before + 0.25 + rng.normal(0, 0.1, 200)
    ids = [str(i) for i in range(200)]
    b, a, s = (dict(zip(ids, values)) for values in (before, after, source))
    difference = paired_difference(b, a)
    assert difference["mean"] == pytest.approx(np.mean(after - before))
    assert difference["low"] < difference["mean"] < difference["high"]
    share = gap_closed(b, a, s)
    assert share["mean"] == pytest.approx((after.mean() - before.mean()) / (source.mean() - before.mean()))
    assert share["low"] < 0.25 < share["high"] and share["high"] - share["low"] < 0.1 and "note" not in share
    # No real gap: the record says the share means nothing.
    flat = gap_closed(b, a, dict(zip(ids, before + rng.normal(0, 0.5, 200))))
    assert "not interpretable" in flat["note"]
    # From item tables, only on common items.
    def table(values):
        return pd.DataFrame({"item_id": ids, "gold_logprob": values})

    paired = paired_measures(table(before), after=table(after)[:150], source=table(source))
    assert paired["gold_logprob"]["after_minus_before"]["n"] == 150


def test_canonical_solution_logprob_is_teacher_forced(tmp_path):
    loaded = tiny()
    evaluate(loaded, EvalOptions("humaneval", limit=2, generate=False, use_cache=False), out=tmp_path)
    item = evaluation_items("humaneval").items[1]
    prompt = build_prompt(prompt_variant("humaneval"), item)
    # The harness boundary: the prompt's trailing whitespace starts the continuation.
    context = prompt.rstrip()
    whole = loaded.tokenizer(context + prompt[len(context):] + gold_continuation(item),
                             add_special_tokens=False)["input_ids"]
    start = len(loaded.tokenizer(context, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logp = torch.log_softmax(loaded.model(torch.tensor([whole])).logits[0].double(), dim=-1)
    expected = float(sum(logp[p - 1, whole[p]] for p in range(start, len(whole))))
    row = read_items(tmp_path).set_index("item_id").loc[item.item_id]
    assert row["gold_logprob"] == pytest.approx(expected, abs=1e-3)
    assert row["outcome"] == "not_generated" and math.isnan(row["score"])
    summary = read_summary(tmp_path)
    assert "pass@1" not in summary["metrics"] and summary["metrics"]["gold_logprob"]["n"] == 2
    assert json.loads(row["details"])["gold"]["gold_tokens"] == len(whole) - start


def test_seeded_samples_are_balanced_and_recorded():
    subset = evaluation_items("mmlu")
    one_each = sample_subset(subset, 57, seed=1)
    assert len({item.subject for item in one_each.items}) == 57
    assert one_each.ids == sample_subset(subset, 57, seed=1).ids
    assert ids_digest(one_each.ids) != ids_digest(sample_subset(subset, 57, seed=2).ids)
    assert "seed 1" in one_each.rule
    arc = sample_subset(evaluation_items("arc_easy"), 10, seed=0)
    order = [item.item_id for item in evaluation_items("arc_easy").items]
    assert len(arc.items) == 10 and [order.index(i) for i in arc.ids] == sorted(order.index(i) for i in arc.ids)


def test_settings_carry_formulation_to_choice_tasks_only():
    settings = EvalSettings.from_dict({"formulation": "rc", "shots": 5, "sample": 30})
    assert settings.options_for("mmlu").formulation == "rc" and settings.options_for("mmlu").shots == 5
    code = settings.options_for("humaneval", limit=4)
    assert code.formulation is None and code.shots is None and code.sample == 30 and code.limit == 4
    assert EvalSettings.from_dict(settings.as_dict()) == settings
    with pytest.raises(DataSourceError, match="unknown evaluation settings"):
        EvalSettings.from_dict({"formulations": "rc"})


def test_transfer_flags_give_the_settings_a_transfer_config_carries():
    import argparse

    from pkt_core.cli.evaluate import add_eval_option_flags, eval_settings_from_args

    parser = argparse.ArgumentParser()
    add_eval_option_flags(parser, prefix="eval-")
    args = parser.parse_args(["--eval-formulation", "mc", "--eval-shots", "5", "--eval-circular",
                              "--eval-prior-items", "20", "--eval-no-generate", "--eval-sample", "100", "--eval-seed", "3"])
    assert eval_settings_from_args(args, prefix="eval-") == EvalSettings(
        formulation="mc", shots=5, circular=True, prior_items=20, generate=False, sample=100, seed=3)
    assert eval_settings_from_args(parser.parse_args([]), prefix="eval-") == EvalSettings()


def test_pkt_eval_prints_formulation_letters_and_paired_measures(tmp_path, capsys):
    folders = {}
    for seed in (0, 1):
        loaded = tiny(seed)
        folders[seed] = tmp_path / f"model-{seed}"
        loaded.model.save_pretrained(folders[seed])
        loaded.tokenizer.save_pretrained(folders[seed])
    base = ["eval", "--task", "arc_easy", "--limit", "12", "--batch-size", "16"]
    assert main([*base, "--model", str(folders[0]), "--out", str(tmp_path / "before"), "--formulation", "mc"]) == 0
    printed = capsys.readouterr().out
    assert "formulation: mc" in printed and "answers: predicted" in printed and "PriDe prior" in printed
    assert main([*base, "--model", str(folders[1]), "--out", str(tmp_path / "after"), "--formulation", "mc",
                 "--before", str(tmp_path / "before"), "--source-eval", str(tmp_path / "before")]) == 0
    printed = capsys.readouterr().out
    assert "paired gold_logprob after_minus_before" in printed and "no gap to close" in printed
    before = read_items(tmp_path / "before").set_index("item_id")["gold_logprob"]
    after = read_items(tmp_path / "after").set_index("item_id")["gold_logprob"]
    assert f"{(after - before).mean():.4f}" in printed
    assert main([*base, "--model", str(folders[0]), "--out", str(tmp_path / "x"), "--formulation", "rc",
                 "--circular"]) == 2
    assert "cloze" in capsys.readouterr().err
