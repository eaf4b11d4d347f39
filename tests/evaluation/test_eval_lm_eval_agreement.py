"""Slow: lm-eval's own implementation (its HFLM model and its installed MMLU templates) and ours
score the same MMLU items on the real 0.5B target and must agree item by item, in the letter
formulation (lm-eval ``mmlu``) and the cloze formulation (``mmlu_continuation``).

lm-eval reads the same offline Arrow files: each subject's installed template is included by a
local task YAML that only swaps the hub dataset for ``dataset_path: arrow`` and ``data_files``.
"""

import os
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

TARGET = "qwen2.5-coder-0.5b"
FORMULATIONS = {"mc": "default", "rc": "continuation"}


@pytest.fixture
def real_target(monkeypatch):
    from pkt_core.models.provisioning import is_cached

    pytest.importorskip("lm_eval")
    monkeypatch.setenv("PKT_HOME", os.environ.get("PKT_REAL_HOME", str(Path.home() / ".cache" / "pkt")))
    if not is_cached(TARGET):
        pytest.skip(f"{TARGET} is not cached; run `pkt models fetch {TARGET}`")
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    return TARGET


def write_local_tasks(folder: Path, kind: str) -> list[str]:
    """One task per subject: lm-eval's installed template and description, our offline files."""
    import lm_eval

    from pkt_core.evaluation.tasks import MMLU_SUBJECTS, mmlu_root

    installed = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / kind
    names = []
    for subject in MMLU_SUBJECTS:
        original = yaml.safe_load((installed / f"mmlu_{subject}.yaml").read_text())
        files = {split: str(next((mmlu_root() / subject / split).glob("*.arrow"))) for split in ("test", "dev")}
        name = f"pkt_{kind}_{subject}"
        config = {"include": str(installed / original["include"]), "task": name, "dataset_path": "arrow",
                  "dataset_name": None, "dataset_kwargs": {"data_files": files},
                  "description": original["description"]}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
        names.append(name)
    return names


def test_lm_eval_and_pkt_agree_on_every_mmlu_item(real_target, tmp_path, monkeypatch):
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from pkt_core.evaluation.cache import ResultCache
    from pkt_core.evaluation.records import read_items
    from pkt_core.evaluation.runner import EvalOptions, evaluate
    from pkt_core.models.loading import load_model
    from pkt_core.paths import model_cache_dir

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    loaded = load_model(real_target)
    harness = HFLM(pretrained=str(model_cache_dir(real_target)), device="cpu", dtype="float32", batch_size=8)
    cache = ResultCache(tmp_path / "cache.sqlite")
    for formulation, kind in FORMULATIONS.items():
        folder = tmp_path / kind
        folder.mkdir()
        names = write_local_tasks(folder, kind)
        theirs = lm_eval.simple_evaluate(model=harness, tasks=names, limit=1, log_samples=True,
                                         task_manager=TaskManager(include_path=str(folder), include_defaults=False))
        evaluate(loaded, EvalOptions("mmlu", limit=1, formulation=formulation, prior_items=0, batch_size=8),
                 out=tmp_path / f"ours-{formulation}", cache=cache)
        ours = read_items(tmp_path / f"ours-{formulation}").set_index("item_id")
        worst, disagreements = 0.0, []
        for name in names:
            (sample,) = theirs["samples"][name]
            subject = name.removeprefix(f"pkt_{kind}_")
            row = ours.loc[f"{subject}/test/{sample['doc_id']}"]
            details = __import__("json").loads(row["details"])
            their_lls = [float(resp[0]) for resp in sample["filtered_resps"]]
            worst = max(worst, max(abs(a - b) for a, b in zip(their_lls, details["loglikelihoods"])))
            if (details["acc"], details["acc_norm"]) != (float(sample["acc"]), float(sample.get("acc_norm", sample["acc"]))):
                disagreements.append(subject)
        print(f"{formulation}: {len(names)} items, predictions disagree on {len(disagreements)}, "
              f"largest log-likelihood difference {worst:.2e}")
        assert not disagreements, f"{formulation}: lm-eval and pkt disagree on {disagreements}"
        assert worst < 1e-4
