"""Batched greedy generation (left padding, KV cache) against a one-prompt, no-cache argmax loop."""

import pytest
import torch

from pkt_core.evaluation.generation import Sampling, cut_at_stop, generate_until
from pkt_core.evaluation.loglikelihood import ScoringError, encode
from pkt_core.models.loading import wrap_loaded_model
from pkt_core.models.synthetic import (
    byte_level_tokenizer,
    random_model_from_config,
    tiny_config,
)

PROMPTS = ["def f(x):", "Hello", "The quick brown fox jumps over the", "a"]


def tiny(model_type: str, seed: int = 0):
    model = random_model_from_config(tiny_config(model_type, num_layers=2), seed=seed)
    return wrap_loaded_model(model, byte_level_tokenizer(), f"tiny-{model_type}")


def reference_greedy(loaded, prompt: str, max_new_tokens: int) -> list[int]:
    """Full forward pass per step on the unpadded sequence, no cache: the plainest greedy decoder."""
    ids = encode(loaded.tokenizer, prompt)
    generated = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(loaded.model(torch.tensor([ids + generated])).logits[0, -1].argmax())
            if token == loaded.tokenizer.eos_token_id:
                break
            generated.append(token)
    return generated


@pytest.mark.parametrize("model_type", ["qwen2", "gpt_neox", "gemma3_text"])
def test_batched_greedy_generation_matches_the_plain_loop(model_type):
    loaded = tiny(model_type, seed=2)
    generations = generate_until(loaded, PROMPTS, stop_sequences=[], max_new_tokens=10, batch_size=3)
    for prompt, generation in zip(PROMPTS, generations):
        expected = reference_greedy(loaded, prompt, 10)
        assert generation.text == loaded.tokenizer.decode(expected, skip_special_tokens=True)
        assert generation.num_tokens == len(expected)


def test_stop_sequences_cut_the_text_and_end_the_row():
    loaded = tiny("llama", seed=1)
    free = generate_until(loaded, PROMPTS, [], max_new_tokens=12, batch_size=4)
    checked = 0
    for prompt, unstopped in zip(PROMPTS, free):
        if len(unstopped.text) < 4:
            continue
        stop = unstopped.text[2:4]  # a stop sequence the model is known to produce
        stopped = generate_until(loaded, [prompt], [stop], max_new_tokens=12)[0]
        assert stopped.text == unstopped.text[: unstopped.text.find(stop)]
        assert stopped.stopped_by == "stop_sequence"
        assert stopped.num_tokens <= unstopped.num_tokens
        checked += 1
    assert checked >= 2


def test_cut_at_stop_takes_the_earliest_stop():
    assert cut_at_stop("abc\n\nQuestion: x", ["Question:", "\n\n"]) == ("abc", True)
    assert cut_at_stop("no stop", ["###"]) == ("no stop", False)


def test_sampling_is_reproducible_from_its_seed():
    loaded = tiny("llama")
    first = generate_until(loaded, PROMPTS, [], 8, sampling=Sampling(temperature=1.0, seed=7))
    again = generate_until(loaded, PROMPTS, [], 8, sampling=Sampling(temperature=1.0, seed=7))
    other = generate_until(loaded, PROMPTS, [], 8, sampling=Sampling(temperature=1.0, seed=8))
    assert [g.text for g in first] == [g.text for g in again]
    assert [g.text for g in first] != [g.text for g in other]
    with pytest.raises(ScoringError, match="temperature > 0"):
        Sampling(temperature=0.0)


def test_bad_generation_requests_are_refused():
    loaded = tiny("llama")
    with pytest.raises(ScoringError, match="tokenise to nothing"):
        generate_until(loaded, [""], [], 4)
    with pytest.raises(ScoringError, match="no room for the prompt"):
        generate_until(loaded, ["x"], [], 10_000)


@pytest.mark.parametrize("host_sync_steps", [1, 3])
@pytest.mark.parametrize("model_type", ["qwen2", "gpt_neox", "gemma3_text"])
def test_rows_that_stop_early_leave_the_batch_and_the_others_continue_unchanged(model_type, host_sync_steps,
                                                                                 monkeypatch):
    from transformers.cache_utils import DynamicCache

    from pkt_core.evaluation import generation

    # Rows leave the batch when the host reads the new tokens: every step, or every few steps.
    monkeypatch.setattr(generation, "HOST_SYNC_STEPS", host_sync_steps)
    loaded = tiny(model_type, seed=2)
    free = generate_until(loaded, PROMPTS, [], max_new_tokens=12, batch_size=len(PROMPTS))
    # Stops the model is known to produce, early in some rows: those rows finish first.
    stops = sorted({g.text[1:3] for g in free[::2] if len(g.text) >= 3})
    assert stops
    selected = []
    original = DynamicCache.batch_select_indices
    monkeypatch.setattr(DynamicCache, "batch_select_indices",
                        lambda self, indices: (selected.append(len(indices)), original(self, indices))[1])
    together = generate_until(loaded, PROMPTS, stops, max_new_tokens=12, batch_size=len(PROMPTS))
    assert selected, "no row left the batch: the test did not exercise compaction"
    for prompt, generation in zip(PROMPTS, together):
        alone = generate_until(loaded, [prompt], stops, max_new_tokens=12, batch_size=1)[0]
        assert (generation.text, generation.num_tokens, generation.stopped_by) == \
            (alone.text, alone.num_tokens, alone.stopped_by)
