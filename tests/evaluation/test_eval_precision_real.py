"""Slow: on the real 0.5B target, a bf16-autocast evaluation agrees with the fp32 one item by item."""

import pytest

pytestmark = pytest.mark.slow

QUESTIONS = [
    ("What is 7 * 8?", ["54", "56", "64", "48"], 1),
    ("Which planet is closest to the Sun?", ["Venus", "Earth", "Mercury", "Mars"], 2),
    ("In Python, which keyword defines a function?", ["func", "def", "lambda", "define"], 1),
    ("What is the chemical symbol for gold?", ["Ag", "Go", "Gd", "Au"], 3),
    ("How many sides does a hexagon have?", ["6", "5", "8", "7"], 0),
    ("Which data structure is first-in first-out?", ["stack", "heap", "queue", "tree"], 2),
    ("What is the capital of Japan?", ["Osaka", "Kyoto", "Tokyo", "Nagoya"], 2),
    ("What is 2 to the power 10?", ["1000", "1024", "512", "2048"], 1),
]


def _prompt(question: str, choices: list[str]) -> str:
    letters = "ABCD"
    lines = [question, *(f"{letters[i]}. {choice}" for i, choice in enumerate(choices)), "Answer:"]
    return "\n".join(lines)


def test_bf16_evaluation_agrees_with_fp32_per_item(real_pair_home):
    from pkt_core.evaluation.loglikelihood import LoglikelihoodRequest, loglikelihoods
    from pkt_core.models.loading import load_model
    from pkt_core.models.registry import DEFAULT_PAIR, get_pair_spec

    target = get_pair_spec(DEFAULT_PAIR).target
    requests = [LoglikelihoodRequest(_prompt(q, c), f" {letter}") for q, c, _ in QUESTIONS for letter in "ABCD"]
    scores = {}
    for policy in ("fp32", "bf16"):
        loaded = load_model(target, dtype=policy)
        scores[policy] = [r.logprob for r in loglikelihoods(loaded, requests, batch_size=8)]
        del loaded
    gold_gap, agree = [], 0
    for index, (_, _, gold) in enumerate(QUESTIONS):
        rows = {p: scores[p][4 * index:4 * index + 4] for p in scores}
        gold_gap.append(abs(rows["bf16"][gold] - rows["fp32"][gold]))
        chosen = {p: max(range(4), key=rows[p].__getitem__) for p in rows}
        agree += chosen["bf16"] == chosen["fp32"]
        if chosen["bf16"] != chosen["fp32"]:  # only a near-tie in fp32 may flip
            margin = rows["fp32"][chosen["fp32"]] - rows["fp32"][chosen["bf16"]]
            assert margin < 0.1, f"item {index}: bf16 flips a prediction fp32 makes by {margin:.3f} nats"
    print(f"bf16 vs fp32 on {len(QUESTIONS)} items: predictions agree on {agree}, "
          f"gold log-prob |diff| max {max(gold_gap):.4f}, mean {sum(gold_gap) / len(gold_gap):.4f}")
    assert agree >= len(QUESTIONS) - 1, f"predictions agree on {agree} of {len(QUESTIONS)} items"
    assert max(gold_gap) < 0.1, f"gold log-probabilities differ by up to {max(gold_gap):.4f} nats"
