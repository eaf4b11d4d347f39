"""Gold measures backfilled into letter-formulation items that were scored before the measures existed."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from run_builders import as_first_edition_items as _as_old_run, write_full_run
from scipy.special import log_softmax

from pkt_core.evaluation.records import read_summary, write_items, write_summary
from pkt_core.runs.gold_backfill import GoldBackfillError, backfill_run
from pkt_core.runs.reader import open_run

LETTERS = "ABCD"



def test_gold_measures_are_the_log_softmax_of_the_stored_option_likelihoods(tmp_path):
    folder, _ = write_full_run(tmp_path / "old-run")
    stored = _as_old_run(folder, np.random.default_rng(3))
    result = backfill_run(folder)
    assert sorted(result["filled"]) == ["mmlu/source", "mmlu/target_after", "mmlu/target_before"]
    run = open_run(folder)
    for role in ("source", "target_before", "target_after"):
        items = run.evaluation_items("mmlu", role)
        for _, row in items.iterrows():
            lls, gold = stored[(role, row["item_id"])]
            expected = log_softmax(lls)[gold]  # scipy, float64: independent of the module
            assert row["gold_logprob"] == pytest.approx(expected, abs=1e-12)
            assert row["gold_prob"] == pytest.approx(np.exp(expected), abs=1e-12)
        metric = run.manifest.evaluation["mmlu"].__getattribute__(role).metrics["gold_prob"]
        assert metric.mean == pytest.approx(items["gold_prob"].mean(), abs=1e-12)
        assert metric.low <= metric.mean <= metric.high
    assert run.manifest.amendments[-1]["evaluations"] == result["filled"]
    assert backfill_run(folder)["filled"] == []  # a second pass has nothing to do


def test_a_record_that_is_not_a_letter_record_is_refused_and_the_run_is_left_as_it_was(tmp_path):
    folder, _ = write_full_run(tmp_path / "odd-run")
    _as_old_run(folder, np.random.default_rng(4))
    role_folder = folder / "evaluation" / "mmlu" / "target_after"
    rows = [{**row, "details": json.loads(row["details"]), "formulation": None, "gold_logprob": None,
             "gold_prob": None} for row in pd.read_parquet(role_folder / "items.parquet").to_dict("records")]
    lls = rows[0]["details"]["loglikelihoods"]
    rows[0]["prediction"] = LETTERS[int(np.argmin(lls))]  # not what its likelihoods rank first
    write_items(role_folder, rows)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    before = {p: p.read_bytes() for p in files}
    with pytest.raises(GoldBackfillError, match="rank another letter first"):
        backfill_run(folder)
    assert {p: p.read_bytes() for p in files} == before  # the other roles' tables were not touched either
