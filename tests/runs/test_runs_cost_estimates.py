"""Evaluation cost estimates: the measured seconds per item of the same models on the same evaluation,
never a rate measured in another formulation (cloze and CircularEval cost differently from letters)."""

from __future__ import annotations

import pytest
from run_builders import write_full_run

from pkt_core.evaluation.settings import EvalSettings
from pkt_core.runs.catalogue import list_runs
from pkt_core.runs.cost_estimates import estimate_evaluation
from pkt_core.runs.schema import MANIFEST_FILE, RunManifest, StageCost, read_json_record
from pkt_core.runs.writer import write_validated_manifest

# Seconds per item measured by the earlier run: role -> (letters, cloze).
RATES = {"source": (2.0, 10.0), "target_before": (1.0, 5.0), "target_after": (1.0, 4.0)}
ITEMS = 57


@pytest.fixture(scope="module")
def listings(tmp_path_factory):
    """An earlier run of src / tgt holding MMLU twice: letters (key mmlu, a run from before formulations
    were recorded) and cloze (key mmlu-rc), with the wall time of each evaluation stage."""
    folder, _ = write_full_run(tmp_path_factory.mktemp("runs") / "earlier")
    manifest = read_json_record(RunManifest, folder / MANIFEST_FILE)
    letters = manifest.evaluation["mmlu"]
    cloze = letters.model_copy(deep=True)
    cloze.spec = "mmlu:rc"
    for role, (letter_rate, cloze_rate) in RATES.items():
        setattr(letters, role, letters.role(role).model_copy(update={"items": ITEMS}))
        setattr(cloze, role, cloze.role(role).model_copy(update={
            "items": ITEMS, "formulation": {"name": "rc", "circular": False, "shots": 0}}))
        manifest.stages[f"eval-mmlu-{role}"] = StageCost(wall_seconds=letter_rate * ITEMS)
        manifest.stages[f"eval-mmlu-rc-{role}"] = StageCost(wall_seconds=cloze_rate * ITEMS)
    manifest.evaluation["mmlu-rc"] = cloze
    write_validated_manifest(folder, manifest)
    return list_runs([folder.parent])


@pytest.mark.parametrize("spec, run_wide, column", [
    ("mmlu", None, 0), ("mmlu:mc", None, 0), ("mmlu:rc@1", None, 1),
    ("mmlu", EvalSettings(formulation="rc"), 1),  # a plain task under --eval-formulation rc is the cloze one
])
def test_an_estimate_uses_the_rate_of_the_same_formulation(listings, spec, run_wide, column):
    estimate = estimate_evaluation(listings, spec, 100, "src", "tgt", run_wide)
    expected = {role: rates[column] * 100 for role, rates in RATES.items()}
    assert estimate.per_role == pytest.approx(expected)
    assert estimate.seconds == pytest.approx(sum(expected.values()))
    assert "earlier" in estimate.basis and estimate.task == spec


@pytest.mark.parametrize("spec, run_wide", [
    ("mmlu:mc+circular", None),  # CircularEval scores every rotation: no rate was measured for it
    ("mmlu", EvalSettings(shots=5)),  # nor for 5 shots
    ("arc_easy", None),
])
def test_no_rate_of_another_formulation_or_task_stands_in(listings, spec, run_wide):
    estimate = estimate_evaluation(listings, spec, 100, "src", "tgt", run_wide)
    assert estimate.seconds is None and set(estimate.per_role.values()) == {None}
    assert estimate.basis == f"no earlier run measured src / tgt on {spec}"


def test_rates_of_other_models_are_not_used(listings):
    assert estimate_evaluation(listings, "mmlu", 100, "src", "another").per_role["target_before"] is None
    assert estimate_evaluation(listings, "mmlu", 100, "src", "another").per_role["source"] == pytest.approx(200.0)
