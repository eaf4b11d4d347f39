"""One evaluation: items -> prompts -> model questions -> scores -> records, with the result cache.

:func:`evaluate` is what the CLI, the app and the transfer code call. Items already scored for
the same model fingerprint, task and variant come from the cache; only the rest reach the model.

Choice tasks (MMLU, ARC) go through :mod:`~pkt_core.evaluation.choice` under a formulation (letters
or cloze, 0 or 5 shots, optional CircularEval) and carry the answer-format diagnostics and the
PriDe-corrected accuracy; every task carries the gold answer's log-probability per item
(:mod:`~pkt_core.evaluation.continuous`, :mod:`~pkt_core.evaluation.gold_solutions`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pkt_core.evaluation.cache import ResultCache, evaluation_fingerprint, variant_key
from pkt_core.evaluation.choice import (
    choice_diagnostics,
    choice_metrics,
    estimate_prior,
    item_records,
    pride_estimation_ids,
    rotations_needed,
    score_units,
)
from pkt_core.evaluation.extraction import (
    gsm8k_exact_match,
    gsm8k_flexible_answer,
    gsm8k_strict_answer,
    humaneval_program,
    mbpp_program,
)
from pkt_core.evaluation.formulations import DEFAULT_FORMULATION, Formulation
from pkt_core.evaluation.generation import Sampling, generate_until
from pkt_core.evaluation.gold_solutions import gold_logprobs
from pkt_core.evaluation.loglikelihood import model_max_length
from pkt_core.evaluation.metrics import (
    PairedComparison,
    bootstrap_interval,
    compare_paired,
    pass_at_k,
)
from pkt_core.evaluation.prompts import (
    PromptVariant,
    build_prompt,
    prompt_variant,
    reference_answer,
)
from pkt_core.evaluation.records import (
    read_items,
    scores_by_item,
    write_items,
    write_summary,
)
from pkt_core.evaluation.sandbox import SandboxLimits, detect_isolation, run_programs
from pkt_core.evaluation.splits import (
    evaluation_items,
    ids_digest,
    limit_subset,
    sample_subset,
    split_record,
)
from pkt_core.evaluation.tasks import CHOICE_TASKS, TaskItem
from pkt_core.models.loading import LoadedModel
from pkt_core.models.memory import dtype_name
from pkt_core.offline_data import DataSourceError

SCORING_VERSION = 2  # bump when a change here would change a cached score
# (stage, done, total): stages "model" (log-likelihood or generation) and "execute" (sandbox)
ProgressCallback = Callable[[str, int, int], None]


@dataclass(frozen=True)
class EvalOptions:
    task: str
    limit: int | None = None
    shots: int | None = None
    batch_size: int = 8
    max_new_tokens: int | None = None
    source: str = "offline"
    include_reserved: bool = False
    use_cache: bool = True
    samples: int = 1  # completions per code problem; above 1 they are sampled and pass@k is reported
    temperature: float = 0.8  # only used when samples > 1 (the harness's pass@k setting)
    top_p: float = 0.95
    seed: int = 0
    sandbox_limits: SandboxLimits = field(default_factory=SandboxLimits)
    sandbox_workers: int = 1
    formulation: str | None = None  # choice tasks: "mc" (letters) or "rc" (cloze); default per task
    circular: bool = False  # choice tasks, mc: CircularEval over the cyclic rotations of the options
    prior_items: int | None = None  # PriDe estimation items (default 5%, at least 8); 0: no prior correction
    generate: bool = True  # generation tasks: False scores only the gold answer's log-probability
    sample: int | None = None  # a seeded sample of N items (``seed``) instead of, or within, ``limit``

    def __post_init__(self) -> None:
        if self.task in CHOICE_TASKS:
            Formulation(self.task, self.formulation or DEFAULT_FORMULATION[self.task], self.shots or 0, self.circular)
        elif self.formulation is not None or self.circular:
            raise DataSourceError(f"--formulation and --circular apply to choice tasks ({', '.join(CHOICE_TASKS)}), "
                                  f"not {self.task}")
        if self.prior_items is not None and self.prior_items < 0:
            raise DataSourceError(f"prior_items must be 0 (off) or more, not {self.prior_items}")
        if self.samples < 1:
            raise DataSourceError(f"samples must be at least 1, not {self.samples}")
        if self.samples > 1 and self.task not in ("humaneval", "mbpp"):
            raise DataSourceError(f"several samples per item only make sense for code tasks, not {self.task}")


@dataclass
class EvaluationResult:
    items: pd.DataFrame  # one row per item, columns as in :mod:`pkt_core.evaluation.records`
    summary: dict

    def metric(self, name: str) -> float:
        return float(self.summary["metrics"][name]["mean"])


def _settings(loaded: LoadedModel, variant: PromptVariant, options: EvalOptions) -> dict:
    """Everything besides the model and the item that changes a score: the cache key's variant part."""
    settings = {
        "variant": variant.describe(),
        "dtype": dtype_name(loaded.dtype),
        "max_length": model_max_length(loaded),
        "scoring_version": SCORING_VERSION,
        "source": options.source,
    }
    if variant.task in ("humaneval", "mbpp"):
        settings["sandbox_limits"] = vars(options.sandbox_limits)
        settings["samples"] = options.samples
        if options.samples > 1:
            settings["sampling"] = {"temperature": options.temperature, "top_p": options.top_p, "seed": options.seed}
    return settings


def evaluate(
    loaded: LoadedModel,
    options: EvalOptions,
    out: Path | None = None,
    progress: ProgressCallback | None = None,
    cache: ResultCache | None = None,
) -> EvaluationResult:
    """Score ``loaded`` on ``options.task``; write ``items.parquet`` and ``summary.json`` to ``out``."""
    started = time.time()
    subset = limit_subset(evaluation_items(options.task, options.source, options.include_reserved), options.limit)
    subset = sample_subset(subset, options.sample, options.seed)
    if not subset.items:
        raise DataSourceError(f"no {options.task} items to evaluate ({subset.rule})")
    if options.task in CHOICE_TASKS:
        return _evaluate_choice(loaded, options, subset, out, progress, cache, started)
    variant = prompt_variant(options.task, options.shots, options.max_new_tokens)
    settings = _settings(loaded, variant, options)
    key = variant_key(variant.name, settings)
    fingerprint = evaluation_fingerprint(loaded)
    cache = (cache or ResultCache()) if options.use_cache else None
    gold_progress = (lambda done, total: progress("gold answer", done, total)) if progress else None
    gold, gold_cached = gold_logprobs(loaded, variant, subset.items, _gold_settings(settings), fingerprint, cache,
                                      options.batch_size, gold_progress)
    if options.generate:
        cached = cache.get_many(fingerprint, options.task, key, subset.ids) if cache else {}
        todo = [item for item in subset.items if item.item_id not in cached]
        fresh = _score(loaded, todo, variant, options, progress) if todo else {}
        if cache and fresh:
            cache.put_many(fingerprint, options.task, key, fresh)
    else:  # only the teacher-forced measure: no generation, no sandbox
        cached, fresh = {}, {item.item_id: _not_generated(item, build_prompt(variant, item)) for item in subset.items}
    rows = []
    for item in subset.items:
        record = cached.get(item.item_id) or fresh[item.item_id]
        measured = gold[item.item_id]
        rows.append({**record, "formulation": variant.name, "gold_logprob": measured["gold_logprob"],
                     "gold_prob": None, "details": {**record["details"], "gold": measured},
                     "cached": item.item_id in cached})
    items = pd.DataFrame(rows)
    summary = {
        "task": options.task,
        "model": loaded.describe(),
        "cache_fingerprint": fingerprint,
        "variant": {**variant.describe(), "key": key},
        "shots": variant.shots,
        "chat_template": variant.chat_template,
        "subset": {"rule": subset.rule, "limit": options.limit, "count": len(subset.items),
                   "ids_digest": ids_digest(subset.ids)},
        "splits": split_record(options.task, subset, options.source),
        "settings": settings,
        "counts": {"scored": len(fresh) if options.generate else 0, "from_cache": len(cached),
                   "gold_scored": len(subset.items) - gold_cached, "gold_from_cache": gold_cached},
        "metrics": {**(_metrics(options.task, items, options.samples) if options.generate else {}),
                    **_gold_metrics(rows)},
        "generated": options.generate,
        "versions": _versions(),
        "seconds": round(time.time() - started, 2),
    }
    if options.task in ("humaneval", "mbpp") and options.generate:
        summary["outcomes"] = {outcome: int(count) for outcome, count in items["outcome"].value_counts().items()}
        summary["sandbox_isolation"] = detect_isolation().describe()
    if out is not None:
        write_items(Path(out), rows)
        write_summary(Path(out), summary)
    return EvaluationResult(items, summary)


def _score(
    loaded: LoadedModel, items: Sequence[TaskItem], variant: PromptVariant, options: EvalOptions,
    progress: ProgressCallback | None,
) -> dict[str, dict]:
    model_progress = (lambda done, total: progress("model", done, total)) if progress else None
    prompts = [build_prompt(variant, item) for item in items]
    sampling = Sampling(options.temperature, options.top_p, options.seed) if options.samples > 1 else None
    repeated = [prompt for prompt in prompts for _ in range(options.samples)]
    generations = generate_until(loaded, repeated, variant.stop_sequences, variant.max_new_tokens,
                                 options.batch_size, model_progress, sampling)
    texts = [[generations[index * options.samples + draw].text for draw in range(options.samples)]
             for index in range(len(items))]
    if variant.task == "gsm8k":
        return {item.item_id: _gsm8k_record(item, prompt, completions[0])
                for item, prompt, completions in zip(items, prompts, texts)}
    return _score_code(items, prompts, texts, variant, options, progress)


def _base_record(item: TaskItem, prompt: str) -> dict:
    return {"task": item.task, "item_id": item.item_id, "subject": item.subject, "prompt": prompt,
            "target": reference_answer(item)}


def _gsm8k_record(item: TaskItem, prompt: str, completion: str) -> dict:
    strict, flexible = gsm8k_strict_answer(completion), gsm8k_flexible_answer(completion)
    strict_right = gsm8k_exact_match(strict, item.doc["answer"])
    flexible_right = gsm8k_exact_match(flexible, item.doc["answer"])
    return {
        **_base_record(item, prompt),
        "prediction": flexible,
        "score": float(flexible_right),  # the column holds flexible-extract; the summary has both
        "outcome": "correct" if flexible_right else "incorrect",
        "details": {"completion": completion, "strict_answer": strict, "strict_match": float(strict_right),
                    "flexible_answer": flexible, "flexible_match": float(flexible_right)},
    }


def _score_code(items, prompts, texts, variant, options, progress) -> dict[str, dict]:
    build = humaneval_program if variant.task == "humaneval" else mbpp_program
    programs = [build(item, text) for item, completions in zip(items, texts) for text in completions]
    results = []
    for start in range(0, len(programs), max(1, options.sandbox_workers)):
        results.extend(run_programs(programs[start:start + options.sandbox_workers], options.sandbox_limits,
                                    options.sandbox_workers))
        if progress:
            progress("execute", len(results), len(programs))
    records = {}
    for index, (item, prompt) in enumerate(zip(items, prompts)):
        runs = results[index * options.samples:(index + 1) * options.samples]
        passed = sum(run.passed for run in runs)
        first = runs[0]
        records[item.item_id] = {
            **_base_record(item, prompt),
            "prediction": texts[index][0],
            "score": passed / len(runs),  # pass@1 estimate: 0/1 under greedy decoding
            "outcome": first.outcome,
            "details": {
                "passed": passed, "samples": len(runs),
                "outcomes": [run.outcome for run in runs],
                "detail": first.detail, "stdout": first.stdout, "stderr": first.stderr,
                "wall_seconds": first.wall_seconds,
                "completions": texts[index][1:] if len(runs) > 1 else [],
            },
        }
    return records


def _metrics(task: str, items: pd.DataFrame, samples: int) -> dict:
    details = [json.loads(value) if isinstance(value, str) else value for value in items["details"]]
    if task == "gsm8k":
        return {
            "exact_match,strict-match": bootstrap_interval([detail["strict_match"] for detail in details]).as_dict(),
            "exact_match,flexible-extract": bootstrap_interval(items["score"]).as_dict(),
        }
    metrics = {"pass@1": bootstrap_interval(items["score"]).as_dict()}
    for k in (k for k in (5, 10, 100) if k <= samples):
        metrics[f"pass@{k}"] = bootstrap_interval(
            [pass_at_k(detail["samples"], detail["passed"], k) for detail in details]).as_dict()
    return metrics


def _gold_settings(settings: dict) -> dict:
    """The gold answer's score depends on the prompt and the model, not on generation or sandbox settings."""
    kept = {key: value for key, value in settings.items() if key not in ("sandbox_limits", "samples", "sampling")}
    kept["variant"] = {key: value for key, value in settings["variant"].items()
                       if key not in ("stop_sequences", "max_new_tokens")}
    return kept


def _not_generated(item: TaskItem, prompt: str) -> dict:
    return {**_base_record(item, prompt), "prediction": None, "score": float("nan"), "outcome": "not_generated",
            "details": {}}


def _gold_metrics(rows: Sequence[dict]) -> dict:
    gold = [row["details"]["gold"] for row in rows]
    return {"gold_logprob": bootstrap_interval([g["gold_logprob"] for g in gold]).as_dict(),
            "gold_logprob_per_token": bootstrap_interval([g["gold_logprob_per_token"] for g in gold]).as_dict()}


def _evaluate_choice(loaded: LoadedModel, options: EvalOptions, subset, out: Path | None,
                     progress: ProgressCallback | None, cache: ResultCache | None, started: float) -> EvaluationResult:
    formulation = Formulation(options.task, options.formulation or DEFAULT_FORMULATION[options.task],
                              options.shots or 0, options.circular)
    settings = {"dtype": dtype_name(loaded.dtype), "max_length": model_max_length(loaded),
                "scoring_version": SCORING_VERSION, "source": options.source}
    fingerprint = evaluation_fingerprint(loaded)
    cache = (cache or ResultCache()) if options.use_cache else None
    wants_prior = formulation.name == "mc" and options.prior_items != 0
    estimation = pride_estimation_ids(subset.items, options.prior_items) if wants_prior else []
    units = rotations_needed(formulation, subset.items, set(estimation))
    model_progress = (lambda done, total: progress("model", done, total)) if progress else None
    scored, from_cache = score_units(loaded, formulation, units, settings, fingerprint, cache, options.batch_size,
                                     model_progress)
    by_id = {item.item_id: item for item in subset.items}
    priors = estimate_prior(scored, [by_id[item_id] for item_id in estimation]) if estimation else {}
    records = item_records(formulation, subset.items, scored, set(estimation), priors, _base_record)
    rows = [{**records[item.item_id], "cached": (item.item_id, 0) in from_cache} for item in subset.items]
    metrics = choice_metrics(formulation, rows)
    if options.task == "mmlu":
        metrics["acc_subject_macro"] = {"mean": float(pd.DataFrame(rows).groupby("subject")["score"].mean().mean())}
    items = pd.DataFrame(rows)
    summary = {
        "task": options.task,
        "model": loaded.describe(),
        "cache_fingerprint": fingerprint,
        "variant": {"name": formulation.label, **formulation.describe()},
        "formulation": formulation.describe(),
        "shots": formulation.shots,
        "chat_template": False,
        "subset": {"rule": subset.rule, "limit": options.limit, "count": len(subset.items),
                   "ids_digest": ids_digest(subset.ids), "sample": options.sample, "seed": options.seed},
        "splits": split_record(options.task, subset, options.source),
        "settings": settings,
        "counts": {"scored": len(units) - len(from_cache), "from_cache": len(from_cache),
                   "items": len(subset.items), "rotations": len(units)},
        "metrics": metrics,
        **choice_diagnostics(formulation, subset.items, rows, metrics, priors, estimation),
        "versions": _versions(),
        "seconds": round(time.time() - started, 2),
    }
    if options.task == "mmlu":
        summary["per_subject"] = _per_subject(items)
    if out is not None:
        write_items(Path(out), rows)
        write_summary(Path(out), summary)
    return EvaluationResult(items, summary)


def _per_subject(items: pd.DataFrame) -> list[dict]:
    details = [json.loads(value) if isinstance(value, str) else value for value in items["details"]]
    norm = [detail["acc_norm"] for detail in details]
    frame = items.assign(acc_norm=norm)
    table = frame.groupby("subject").agg(n=("score", "size"), acc=("score", "mean"), acc_norm=("acc_norm", "mean"))
    return [{"subject": subject, "n": int(row.n), "acc": float(row.acc), "acc_norm": float(row.acc_norm)}
            for subject, row in table.iterrows()]


def _versions() -> dict:
    import torch
    import transformers

    import pkt_core

    return {"pkt_core": pkt_core.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__}


def compare_evaluations(
    before: EvaluationResult | Path | str, after: EvaluationResult | Path | str
) -> PairedComparison:
    """Paired comparison of two evaluations of one task (e.g. the target before and after transfer)."""
    def scores(result) -> tuple[dict[str, float], str]:
        items = result.items if isinstance(result, EvaluationResult) else read_items(Path(result))
        tasks = set(items["task"])
        if len(tasks) != 1:
            raise DataSourceError(f"an evaluation must hold one task, found {sorted(tasks)}")
        return scores_by_item(items), tasks.pop()

    scores_before, task_before = scores(before)
    scores_after, task_after = scores(after)
    if task_before != task_after:
        raise DataSourceError(f"cannot pair {task_before} with {task_after}: compare evaluations of the same task")
    return compare_paired(scores_before, scores_after)
