"""Backfill: a finished run gains the CKA / CCA family before transfer, only when the rows
reproduce the linear CKA it already holds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transfer_fixtures import addition_samples, make_pair

from pkt_core.runs.catalogue import read_run
from pkt_core.runs.reader import open_run
from pkt_core.transfer.alignment_data import tokenise_samples
from pkt_core.transfer.config import DEFAULT_SIMILARITY_MEASURES, TransferConfig
from pkt_core.transfer.pipeline import run_transfer
from pkt_core.transfer.run_skeleton import probe_rows, probe_token_mask, row_subset
from pkt_core.transfer.similarity_backfill import BackfillError, backfill_run


@pytest.fixture
def cka_only_run(tmp_path):
    samples = (addition_samples(12, seed=5), addition_samples(8, seed=6), "synthetic addition")
    config = TransferConfig(source="tiny-source", target="tiny-target", variant="v1", data_file="synthetic.jsonl",
                            align_samples=12, probe_samples=8, steps_per_stage=1, batch_size=4, stages=[0],
                            similarity_measures=["linear_cka"])
    source, target = make_pair()
    folder = run_transfer(config, out_dir=tmp_path / "run", source=source, target=target, samples=samples)
    # The untouched pair again (same seeds), and the run's own probe rows.
    source, target = make_pair()
    tokens = tokenise_samples(target.tokenizer, samples[1], config.max_tokens)
    subset = row_subset(int(probe_token_mask(tokens).sum()), config.seed)
    return folder, probe_rows(target, tokens, 4, subset)[0], probe_rows(source, tokens, 4, subset)[0]


def test_backfill_adds_every_measure_and_records_the_amendment(cka_only_run):
    folder, target_rows, source_rows = cka_only_run
    before = {e.metric for e in open_run(folder).similarity_entries() if e.view == "target_source_before"}
    assert before == {"linear_cka"}
    result = backfill_run(folder, target_rows, source_rows)
    assert result["linear_cka_max_difference"] < 1e-10
    run = open_run(folder)
    added = {e.metric for e in run.similarity_entries() if e.view == "target_source_before"}
    assert added | set(run.manifest.similarity_skipped_measures()) == set(DEFAULT_SIMILARITY_MEASURES)
    assert {"svcca", "pwcca", "mean_cca", "rbf_cka"} <= added
    assert read_run(folder).complete  # the artefact list follows the new files
    [amendment] = run.manifest.amendments
    assert sorted(amendment["files"]) == sorted(result["added"]) and amendment["provenance"]["code"]


def test_backfill_refuses_when_the_stored_numbers_do_not_reproduce(cka_only_run):
    folder, target_rows, source_rows = cka_only_run
    path = folder / "similarity_linear_cka_target_source_before.json"
    payload = json.loads(path.read_text())
    payload["values"][0][0] = float(np.clip(payload["values"][0][0] - 0.1, 0, 1))
    path.write_text(json.dumps(payload))
    files = sorted(p.name for p in folder.iterdir())
    with pytest.raises(BackfillError, match="differs from the stored one"):
        backfill_run(folder, target_rows, source_rows)
    assert sorted(p.name for p in folder.iterdir()) == files
