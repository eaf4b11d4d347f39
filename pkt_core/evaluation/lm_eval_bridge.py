"""Optional: let lm-evaluation-harness evaluate a model held in memory (e.g. a transferred target).

Only where ``lm_eval`` is installed (it is not a dependency). The adapter answers the harness's
three questions with this package's batched scorers, so any harness task can run on a model
that exists only in this process:

    from pkt_core.evaluation.lm_eval_bridge import evaluate_with_lm_eval
    results = evaluate_with_lm_eval(loaded, ["arc_easy"], limit=100)
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from pkt_core.errors import PktError
from pkt_core.evaluation.generation import Sampling, generate_until
from pkt_core.evaluation.loglikelihood import (
    LoglikelihoodRequest,
    loglikelihoods,
    rolling_loglikelihood,
)
from pkt_core.models.loading import LoadedModel

DEFAULT_MAX_GEN_TOKS = 256  # the harness's default for hf models


class LmEvalMissingError(PktError):
    """The optional lm-evaluation-harness is not installed."""


def lm_eval_available() -> bool:
    return importlib.util.find_spec("lm_eval") is not None


def harness_model(loaded: LoadedModel, batch_size: int = 8):
    """An ``lm_eval.api.model.LM`` that scores with ``loaded``."""
    if not lm_eval_available():
        raise LmEvalMissingError("lm-eval is not installed; `pip install lm-eval` to run harness tasks on a model")
    from lm_eval.api.model import LM

    class PktHarnessModel(LM):
        def __init__(self) -> None:
            super().__init__()
            self.loaded = loaded

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            asked = [LoglikelihoodRequest(*request.args[:2]) for request in requests]
            return [(result.logprob, result.is_greedy) for result in loglikelihoods(loaded, asked, batch_size)]

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return [rolling_loglikelihood(loaded, request.args[0], batch_size) for request in requests]

        def generate_until(self, requests, disable_tqdm: bool = False):
            # Requests with the same settings are generated together, in batches.
            groups: dict[tuple, list[int]] = {}
            for index, request in enumerate(requests):
                groups.setdefault(_generation_settings(request.args[1]), []).append(index)
            texts: list[str] = [""] * len(requests)
            for (until, max_tokens, temperature, top_p), indices in groups.items():
                sampling = Sampling(temperature, top_p) if temperature > 0 else None
                generations = generate_until(loaded, [requests[i].args[0] for i in indices], until, max_tokens,
                                             batch_size, sampling=sampling)
                for index, generation in zip(indices, generations):
                    texts[index] = generation.text
            return texts

    return PktHarnessModel()


def _generation_settings(kwargs: dict) -> tuple[tuple[str, ...], int, float, float]:
    until = kwargs.get("until") or ()
    until = (until,) if isinstance(until, str) else tuple(until)
    temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample", False) else 0.0
    return until, int(kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)), temperature, float(kwargs.get("top_p", 1.0))


def evaluate_with_lm_eval(loaded: LoadedModel, tasks: Sequence[str], batch_size: int = 8, **kwargs):
    """Run harness tasks on ``loaded``; ``kwargs`` go to ``lm_eval.simple_evaluate`` (limit, num_fewshot, ...)."""
    model = harness_model(loaded, batch_size)
    import lm_eval

    return lm_eval.simple_evaluate(model=model, tasks=list(tasks), **kwargs)
