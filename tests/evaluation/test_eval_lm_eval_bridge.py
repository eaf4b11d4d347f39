"""The optional lm-evaluation-harness adapter: runs only where lm_eval is installed."""

import pytest

from pkt_core.evaluation.lm_eval_bridge import (
    LmEvalMissingError,
    harness_model,
    lm_eval_available,
)
from pkt_core.evaluation.loglikelihood import LoglikelihoodRequest, loglikelihoods
from pkt_core.models.loading import wrap_loaded_model
from pkt_core.models.synthetic import (
    byte_level_tokenizer,
    random_model_from_config,
    tiny_config,
)


def tiny():
    return wrap_loaded_model(random_model_from_config(tiny_config("llama", num_layers=2)), byte_level_tokenizer(), "t")


def test_missing_lm_eval_is_a_clear_error():
    if lm_eval_available():
        pytest.skip("lm_eval is installed here")
    with pytest.raises(LmEvalMissingError, match="pip install lm-eval"):
        harness_model(tiny())


def test_adapter_answers_the_harness_questions_with_our_scorers():
    if not lm_eval_available():
        pytest.skip("lm_eval is not installed (optional); `pip install lm-eval` to test the bridge")
    from lm_eval.api.instance import Instance

    loaded = tiny()
    model = harness_model(loaded)
    request = Instance("loglikelihood", {}, ("Answer:", " B"), 0)
    expected = loglikelihoods(loaded, [LoglikelihoodRequest("Answer:", " B")])[0]
    assert model.loglikelihood([request])[0] == (pytest.approx(expected.logprob), expected.is_greedy)
    generated = model.generate_until([Instance("generate_until", {}, ("def f(x):", {"until": ["\n\n"],
                                                                                    "max_gen_toks": 5}), 0)])
    assert isinstance(generated[0], str)
