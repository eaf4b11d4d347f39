"""Batched log-likelihoods against hand-computed float64 log-softmax, and the trailing-space pitfall."""

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from pkt_core.evaluation.loglikelihood import (
    LoglikelihoodRequest,
    ScoringError,
    encode,
    encode_pair,
    loglikelihoods,
    rolling_loglikelihood,
)
from pkt_core.evaluation.metrics import MetricInputError, choice_predictions
from pkt_core.models.loading import wrap_loaded_model
from pkt_core.models.synthetic import (
    byte_level_tokenizer,
    random_model_from_config,
    tiny_config,
)

REQUESTS = [
    LoglikelihoodRequest("The capital of France is", " Paris"),
    LoglikelihoodRequest("The capital of France is", " Rome"),  # same context, same length: one forward
    LoglikelihoodRequest("Answer: ", "B"),  # trailing space moves onto the continuation
    LoglikelihoodRequest("", "hello"),  # empty context: scored after the BOS token
    LoglikelihoodRequest("x", "y"),
    LoglikelihoodRequest("def add(a, b):\n    return", " a + b\n"),
]


def tiny(model_type: str, tokenizer=None, seed: int = 0):
    model = random_model_from_config(tiny_config(model_type, num_layers=2), seed=seed)
    return wrap_loaded_model(model, tokenizer or byte_level_tokenizer(), f"tiny-{model_type}")


def reference_score(model, token_ids: list[int], continuation_length: int) -> tuple[float, bool]:
    """Sum of log p(token | everything before) over the last tokens: one unpadded pass, float64 softmax."""
    with torch.no_grad():
        logits = model(torch.tensor([token_ids])).logits[0].double()
    log_probs = torch.log_softmax(logits, dim=-1)
    total, greedy = 0.0, True
    for position in range(len(token_ids) - continuation_length, len(token_ids)):
        total += float(log_probs[position - 1, token_ids[position]])
        greedy &= int(logits[position - 1].argmax()) == token_ids[position]
    return total, greedy


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "gemma2"])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_batched_scores_match_hand_computed_log_softmax(model_type, batch_size):
    loaded = tiny(model_type)
    results = loglikelihoods(loaded, REQUESTS, batch_size=batch_size)
    bos = loaded.tokenizer.bos_token_id
    for request, result in zip(REQUESTS, results):
        # One token per byte: the continuation is the last len(bytes) tokens of the whole text.
        whole = (request.context + request.continuation).encode()
        context_bytes = len(request.context.rstrip().encode())
        ids = [bos] if not request.context else []
        ids += loaded.tokenizer.convert_tokens_to_ids(list(loaded.tokenizer.tokenize(whole.decode())))
        expected, greedy = reference_score(loaded.model, ids, len(whole) - context_bytes)
        assert result.logprob == pytest.approx(expected, abs=1e-4)
        assert result.is_greedy == greedy
        assert result.num_tokens == len(whole) - context_bytes


def test_long_contexts_keep_their_last_tokens_like_the_harness():
    loaded = tiny("qwen2")
    request = LoglikelihoodRequest("abcdefghijklmnopqrstuvwxyz", "XY")
    result = loglikelihoods(loaded, [request], max_length=8)[0]
    ids = encode(loaded.tokenizer, "abcdefghijklmnopqrstuvwxyz" + "XY")[-9:]  # max_length + 1 tokens
    expected, _ = reference_score(loaded.model, ids, 2)
    assert result.logprob == pytest.approx(expected, abs=1e-4)


def test_rolling_loglikelihood_of_a_short_text_is_its_full_log_probability():
    loaded = tiny("llama")
    text = "print('hi')"
    ids = [loaded.tokenizer.bos_token_id] + encode(loaded.tokenizer, text)
    expected, _ = reference_score(loaded.model, ids, len(text))
    assert rolling_loglikelihood(loaded, text) == pytest.approx(expected, abs=1e-4)


def merging_tokenizer() -> PreTrainedTokenizerFast:
    """A BPE tokenizer that folds a leading space into the letters A-D, as real tokenizers do."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: index for index, token in enumerate(alphabet)}
    merges = []
    for letter in "ABCD":
        vocab["Ġ" + letter] = len(vocab)
        merges.append(("Ġ", letter))
    for special in ("<pad>", "<bos>", "<eos>"):
        vocab[special] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")


def test_trailing_space_pitfall_is_avoided():
    tokenizer = merging_tokenizer()
    space_a = tokenizer.convert_tokens_to_ids("ĠA")
    whole = encode(tokenizer, "Answer: A")
    assert whole[-1] == space_a  # the model saw " A" as one token in training
    # The pitfall: encoding the two strings apart ends the context on a lone space token, and
    # scores "A" after it, a sequence this tokenizer never produces.
    naive = encode(tokenizer, "Answer: ") + encode(tokenizer, "A")
    assert naive != whole and naive[-2] == tokenizer.convert_tokens_to_ids("Ġ")
    context_ids, continuation_ids = encode_pair(tokenizer, "Answer: ", "A")
    assert continuation_ids == [space_a]
    assert context_ids + continuation_ids == whole
    loaded = tiny("llama", tokenizer=tokenizer)
    result = loglikelihoods(loaded, [LoglikelihoodRequest("Answer: ", "A")])[0]
    expected, _ = reference_score(loaded.model, whole, 1)
    naive_score, _ = reference_score(loaded.model, naive, 1)
    assert result.logprob == pytest.approx(expected, abs=1e-4)
    assert abs(result.logprob - naive_score) > 1e-3  # the two readings really differ


def test_acc_and_acc_norm_choose_by_total_and_per_character_log_likelihood():
    # Totals: choice 0 wins. Per character: -3/1, -4/4 = -1, -10/2 = -5, so choice 1 wins.
    assert choice_predictions([-3.0, -4.0, -10.0], ["a", "bbbb", "cc"]) == (0, 1)
    assert choice_predictions([-1.0, -0.5, -2.0, -3.0], list("ABCD")) == (1, 1)  # MMLU: the two agree
    with pytest.raises(MetricInputError):
        choice_predictions([-1.0], ["a", "b"])


def test_unscorable_requests_are_refused():
    loaded = tiny("llama")
    with pytest.raises(ScoringError, match="tokenises to nothing"):
        loglikelihoods(loaded, [LoglikelihoodRequest("context", "")])
    with pytest.raises(ScoringError, match="batch size"):
        loglikelihoods(loaded, REQUESTS, batch_size=0)
    with pytest.raises(ScoringError, match="exceeds the model's window"):
        loglikelihoods(loaded, [LoglikelihoodRequest("a", "b" * 20)], max_length=8)
