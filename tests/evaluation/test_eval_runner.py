"""End to end: records on disk, the result cache, code tasks through the sandbox, paired comparisons, CLI."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from pkt_core.cli.main import main
from pkt_core.evaluation import choice, runner
from pkt_core.evaluation.generation import Generation
from pkt_core.evaluation.prompts import build_prompt, prompt_variant
from pkt_core.evaluation.records import read_items, read_summary
from pkt_core.evaluation.runner import EvalOptions, compare_evaluations, evaluate
from pkt_core.evaluation.splits import evaluation_items, limit_subset
from pkt_core.models.loading import wrap_loaded_model
from pkt_core.models.synthetic import (
    byte_level_tokenizer,
    random_model_from_config,
    tiny_config,
)


def tiny(seed: int = 0):
    config = tiny_config("llama", num_layers=2, width=32)
    config.max_position_embeddings = 4096  # MMLU prompts are longer than the tiny default window
    model = random_model_from_config(config, seed=seed)
    return wrap_loaded_model(model, byte_level_tokenizer(), f"tiny-llama-{seed}")


def fake_generations(monkeypatch, completion_for_prompt):
    """Replace the model's generation by fixed completions, so code scoring is tested on known answers."""
    def generate(loaded, prompts, stop_sequences, max_new_tokens, batch_size=8, progress=None, sampling=None):
        texts = [completion_for_prompt(prompt, index) for index, prompt in enumerate(prompts)]
        return [Generation(text, len(text), "stop_sequence") for text in texts]

    monkeypatch.setattr(runner, "generate_until", generate)


def test_mmlu_records_match_an_independent_scoring_and_the_cache_is_reused(tmp_path, monkeypatch):
    loaded = tiny()
    first = evaluate(loaded, EvalOptions("mmlu", limit=1, batch_size=16), out=tmp_path / "first")
    items, summary = read_items(tmp_path / "first"), read_summary(tmp_path / "first")
    assert len(items) == 57 and items["item_id"].is_unique and not items["cached"].any()
    # Every item once, and the PriDe estimation items under their three other rotations.
    rotated = 3 * summary["prior_correction"]["estimation_items"]
    assert summary["counts"] == {"scored": 57 + rotated, "from_cache": 0, "items": 57, "rotations": 57 + rotated}
    assert summary["metrics"]["acc"]["mean"] == pytest.approx(items["score"].mean())
    assert summary["metrics"]["acc"]["low"] <= summary["metrics"]["acc"]["mean"] <= summary["metrics"]["acc"]["high"]
    assert len(summary["per_subject"]) == 57 and all(row["n"] == 1 for row in summary["per_subject"])
    assert (summary["shots"], summary["chat_template"]) == (0, False)
    assert summary["splits"]["alignment_pool"]["count"] == 285 + 1531

    # One item by hand: the four letters scored by an unpadded float64 pass.
    item = limit_subset(evaluation_items("mmlu"), 1).items[3]
    prompt = build_prompt(prompt_variant("mmlu"), item)
    ids = loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        log_probs = torch.log_softmax(loaded.model(torch.tensor([ids])).logits[0, -1].double(), dim=-1)
    letters = [loaded.tokenizer(f" {letter}", add_special_tokens=False)["input_ids"] for letter in "ABCD"]
    # Byte-level: " A" is two tokens, a space then the letter; score both by hand.
    space_ids = ids + [letters[0][0]]
    with torch.no_grad():
        after_space = torch.log_softmax(loaded.model(torch.tensor([space_ids])).logits[0, -1].double(), dim=-1)
    expected = [float(log_probs[letter[0]] + after_space[letter[1]]) for letter in letters]
    row = items.set_index("item_id").loc[item.item_id]
    details = json.loads(row["details"])
    assert details["loglikelihoods"] == pytest.approx(expected, abs=1e-4)
    assert row["prediction"] == "ABCD"[int(np.argmax(expected))]
    assert row["score"] == float(int(np.argmax(expected)) == item.doc["answer"])

    def must_not_score(*args, **kwargs):
        raise AssertionError("a cached item reached the model")

    with monkeypatch.context() as patch:  # (undo() would also drop the per-test PKT_HOME)
        patch.setattr(choice, "loglikelihoods", must_not_score)
        again = evaluate(loaded, EvalOptions("mmlu", limit=1, batch_size=16))
    assert again.summary["counts"]["scored"] == 0 and again.summary["counts"]["from_cache"] == 57 + rotated
    assert again.items["cached"].all()
    assert list(again.items["score"]) == list(first.items["score"])
    other = evaluate(tiny(seed=1), EvalOptions("mmlu", limit=1, batch_size=16), out=tmp_path / "other")
    assert other.summary["counts"]["scored"] == 57 + rotated  # different weights: a different fingerprint

    comparison = compare_evaluations(tmp_path / "first", tmp_path / "other")
    merged = pd.merge(items[["item_id", "score"]], read_items(tmp_path / "other")[["item_id", "score"]],
                      on="item_id", suffixes=("_a", "_b"))
    assert comparison.n == 57
    assert comparison.right_to_wrong == int(((merged.score_a == 1) & (merged.score_b == 0)).sum())
    assert comparison.wrong_to_right == int(((merged.score_a == 0) & (merged.score_b == 1)).sum())


def test_code_tasks_pass_with_the_reference_solutions_and_fail_without(monkeypatch):
    humaneval = {build_prompt(prompt_variant("humaneval"), item): item.doc["canonical_solution"]
                 for item in evaluation_items("humaneval").items[:4]}
    fake_generations(monkeypatch, lambda prompt, index: humaneval[prompt])
    solved = evaluate(tiny(), EvalOptions("humaneval", limit=4, use_cache=False))
    assert solved.metric("pass@1") == 1.0 and set(solved.items["outcome"]) == {"passed"}
    assert solved.summary["sandbox_isolation"]["python"]

    fake_generations(monkeypatch, lambda prompt, index: "    return None\n")
    unsolved = evaluate(tiny(), EvalOptions("humaneval", limit=4, use_cache=False))
    assert unsolved.metric("pass@1") == 0.0 and set(unsolved.items["outcome"]) <= {"failed", "error"}

    mbpp = {build_prompt(prompt_variant("mbpp"), item): item.doc["code"]
            for item in evaluation_items("mbpp").items[:4]}
    fake_generations(monkeypatch, lambda prompt, index: mbpp[prompt])
    assert evaluate(tiny(), EvalOptions("mbpp", limit=4, use_cache=False)).metric("pass@1") == 1.0


def test_several_samples_give_unbiased_pass_at_k(monkeypatch):
    canonical = {build_prompt(prompt_variant("humaneval"), item): item.doc["canonical_solution"]
                 for item in evaluation_items("humaneval").items[:2]}
    # Prompts arrive repeated per sample: draws 0 and 1 of every problem are right, 2-4 wrong.
    fake_generations(monkeypatch, lambda prompt, index: canonical[prompt] if index % 5 < 2 else "    return 0\n")
    result = evaluate(tiny(), EvalOptions("humaneval", limit=2, samples=5, use_cache=False))
    assert list(result.items["score"]) == [pytest.approx(2 / 5)] * 2
    assert result.metric("pass@1") == pytest.approx(2 / 5)
    assert result.metric("pass@5") == 1.0  # 1 - C(3, 5) / C(5, 5): fewer than 5 wrong draws


def test_gsm8k_strict_and_flexible_scores(monkeypatch):
    items = evaluation_items("gsm8k").items[:3]
    answers = [item.doc["short_answer"] for item in items]
    texts = {
        build_prompt(prompt_variant("gsm8k"), items[0]): f" Some steps.\n#### {answers[0]}",
        build_prompt(prompt_variant("gsm8k"), items[1]): f" So the answer is {answers[1]}.",
        build_prompt(prompt_variant("gsm8k"), items[2]): " #### 123456789",
    }
    fake_generations(monkeypatch, lambda prompt, index: texts[prompt])
    result = evaluate(tiny(), EvalOptions("gsm8k", limit=3, use_cache=False))
    assert result.metric("exact_match,strict-match") == pytest.approx(1 / 3)
    assert result.metric("exact_match,flexible-extract") == pytest.approx(2 / 3)


def test_pkt_eval_command_writes_records_and_refuses_to_overwrite(tmp_path, capsys):
    loaded = tiny()
    folder = tmp_path / "tiny-model"
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    out = tmp_path / "eval"
    arguments = ["eval", "--model", str(folder), "--task", "mmlu", "--limit", "1", "--out", str(out),
                 "--batch-size", "16"]
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    assert "acc" in printed and "abstract_algebra" in printed
    assert len(read_items(out)) == 57 and read_summary(out)["subset"]["limit"] == 1
    assert main(arguments) == 2
    assert "already holds an evaluation" in capsys.readouterr().err
    assert main([*arguments, "--overwrite", "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)["counts"]
    assert counts["scored"] == 0 and counts["from_cache"] == counts["rotations"] >= 57
