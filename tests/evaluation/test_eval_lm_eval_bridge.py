"""lm-evaluation-harness as a peer: the bridge runs a harness task on a model held in memory, and
lm-eval's own Hugging Face implementation scoring the same task agrees with it.

The task is defined from local files (a JSON-lines data file and a task YAML), so nothing
reaches a hub; lm-eval is in the ``test`` extra.
"""

import json
import math

import pytest

from pkt_core.evaluation.lm_eval_bridge import (
    LmEvalMissingError,
    evaluate_with_lm_eval,
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

needs_lm_eval = pytest.mark.skipif(not lm_eval_available(), reason="lm-eval is not installed (the test extra has it)")

QUESTIONS = [
    {"question": "2 + 2 =", "choices": ["4", "five", "22"], "answer": 0},
    {"question": "The sky is", "choices": ["green", "blue"], "answer": 1},
    {"question": "def f(x): return x *", "choices": ["2", "  two", "x", "None"], "answer": 2},
    {"question": "Capital of France?", "choices": ["Paris", "Rome", "Berlin"], "answer": 0},
    {"question": "Opposite of hot", "choices": ["warm", "cold"], "answer": 1},
]
TASK_YAML = """task: pkt_local_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def tiny():
    return wrap_loaded_model(random_model_from_config(tiny_config("llama", num_layers=2)), byte_level_tokenizer(), "t")


@pytest.fixture
def local_task(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in QUESTIONS), encoding="utf-8")
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "pkt_local_choice.yaml").write_text(TASK_YAML.format(data=data), encoding="utf-8")
    return folder


def _per_sample(results) -> dict[int, list[float]]:
    return {sample["doc_id"]: [float(resp[0]) for resp in sample["filtered_resps"]]
            for sample in results["samples"]["pkt_local_choice"]}


def test_missing_lm_eval_is_a_clear_error():
    if lm_eval_available():
        pytest.skip("lm_eval is installed here")
    with pytest.raises(LmEvalMissingError, match="pip install lm-eval"):
        harness_model(tiny())


@needs_lm_eval
def test_adapter_answers_the_harness_questions_with_our_scorers():
    from lm_eval.api.instance import Instance

    loaded = tiny()
    model = harness_model(loaded)
    request = Instance("loglikelihood", {}, ("Answer:", " B"), 0)
    expected = loglikelihoods(loaded, [LoglikelihoodRequest("Answer:", " B")])[0]
    assert model.loglikelihood([request])[0] == (pytest.approx(expected.logprob), expected.is_greedy)
    generated = model.generate_until([Instance("generate_until", {}, ("def f(x):", {"until": ["\n\n"],
                                                                                    "max_gen_toks": 5}), 0)])
    assert isinstance(generated[0], str)


@needs_lm_eval
def test_a_local_harness_task_through_the_bridge_agrees_with_lm_evals_own_model(local_task, tmp_path):
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    loaded = tiny()
    folder = tmp_path / "tiny-model"
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)

    ours = evaluate_with_lm_eval(loaded, ["pkt_local_choice"], batch_size=4, log_samples=True,
                                 task_manager=TaskManager(include_path=str(local_task), include_defaults=False))
    import lm_eval

    theirs = lm_eval.simple_evaluate(
        model=HFLM(pretrained=str(folder), device="cpu", batch_size=1, dtype="float32"),
        tasks=["pkt_local_choice"], log_samples=True,
        task_manager=TaskManager(include_path=str(local_task), include_defaults=False))
    ours_samples, their_samples = _per_sample(ours), _per_sample(theirs)
    assert sorted(ours_samples) == list(range(len(QUESTIONS)))
    for doc_id, values in ours_samples.items():
        assert values == pytest.approx(their_samples[doc_id], abs=1e-4)  # float32 forward passes, batched apart
    # The harness's own metrics, from the bridge's scores: acc is the argmax, acc_norm per character.
    expected_acc = sum(max(range(len(v)), key=v.__getitem__) == QUESTIONS[d]["answer"]
                       for d, v in ours_samples.items()) / len(QUESTIONS)
    per_char = {d: [ll / len(QUESTIONS[d]["choices"][i]) for i, ll in enumerate(v)] for d, v in ours_samples.items()}
    expected_norm = sum(max(range(len(v)), key=v.__getitem__) == QUESTIONS[d]["answer"]
                        for d, v in per_char.items()) / len(QUESTIONS)
    metrics = ours["results"]["pkt_local_choice"]
    assert math.isclose(metrics["acc,none"], expected_acc) and math.isclose(metrics["acc_norm,none"], expected_norm)
    assert metrics["acc,none"] == theirs["results"]["pkt_local_choice"]["acc,none"]
