import shutil

import numpy as np
import pandas as pd
import pytest

from run_builders import as_first_edition_items, write_full_run

from pkt_core.evaluation.records import read_items, read_summary
from pkt_core.runs.catalogue import list_runs, read_run
from pkt_core.runs.gold_backfill import GoldBackfillError, backfill_run
from pkt_core.runs.reader import RunReadError, open_run
from pkt_core.runs.shared_folders import folder_digest
from pkt_core.runs.shared_tensors import SHARED_FOLDER
from pkt_core.runs.shipping import prune_unreferenced, ship_run

SHARED_ROLES = ("evaluation/mmlu/source", "evaluation/mmlu/target_before")


def _ship(tmp_path, seeds):
    """Runs written with the given seeds (a seed draws its own scores), shipped side by side."""
    root = tmp_path / "cached"
    root.mkdir()
    originals = [write_full_run(tmp_path / "runs" / f"run{i}", seed=seed)[0] for i, seed in enumerate(seeds)]
    return [ship_run(run, root, f"pkt transfer --out {run.name}") for run in originals], originals, root


def _folders(root):
    return sorted(p for p in (root / SHARED_FOLDER).iterdir() if p.is_dir())


def test_evaluation_folders_runs_hold_alike_are_stored_once_and_every_reader_sees_the_originals(tmp_path):
    shipped, originals, root = _ship(tmp_path, seeds=(0, 0))
    # The source and untouched-target evaluations of the two runs are one folder each.
    folders = _folders(root)
    assert len(folders) == 2
    for folder in folders:  # named by the digest of its files
        assert folder.name == folder_digest(folder)
    for run_folder, original in zip(shipped, originals):
        run = open_run(run_folder)
        assert set(run.manifest.shipped.shared_folders) == set(SHARED_ROLES)
        for relative in SHARED_ROLES:
            assert not (run_folder / relative).exists()
        assert (run_folder / "evaluation/mmlu/target_after/summary.json").is_file()  # its own, never shared
        assert run.evaluated_tasks() == {"mmlu": ["source", "target_before", "target_after"]}
        for role in ("source", "target_before", "target_after"):
            expected = original / "evaluation" / "mmlu" / role
            pd.testing.assert_frame_equal(run.evaluation_items("mmlu", role), read_items(expected))
            assert run.evaluation_summary("mmlu", role).model_dump() == \
                open_run(original).evaluation_summary("mmlu", role).model_dump()
            # Readers that take a folder (the paired comparison, the calibration) get the shared copy.
            assert read_summary(run.evaluation_folder("mmlu", role)) == read_summary(expected)
    assert [(listing.path.name, listing.complete) for listing in list_runs([root])] == [
        ("run0", True), ("run1", True)]


def test_a_run_whose_evaluation_differs_keeps_its_own_copy_and_pruning_keeps_what_is_named(tmp_path):
    shipped, originals, root = _ship(tmp_path, seeds=(0, 1))
    assert len(_folders(root)) == 4  # nothing alike: each run's two folders, stored once each
    for run_folder, original in zip(shipped, originals):
        pd.testing.assert_frame_equal(open_run(run_folder).evaluation_items("mmlu", "source"),
                                      read_items(original / "evaluation/mmlu/source"))
    shutil.rmtree(shipped[1])
    removed = prune_unreferenced(root)
    assert len([p for p in removed if not p.suffix]) == 2  # the folders; the rest are tensor parts and len(_folders(root)) == 2
    assert read_run(shipped[0]).complete


def test_a_changed_or_missing_shared_folder_is_named_and_nothing_is_read_wrong(tmp_path):
    shipped, _, root = _ship(tmp_path, seeds=(0, 0))
    digest = open_run(shipped[0]).manifest.shipped.shared_folders["evaluation/mmlu/source"]
    items = root / SHARED_FOLDER / digest / "items.parquet"
    frame = read_items(items.parent)
    frame["score"] = 1.0 - frame["score"]  # a readable table, other numbers
    frame.to_parquet(items)
    with pytest.raises(RunReadError, match=f"{SHARED_FOLDER}/{digest} does not hold the files its name says"):
        open_run(shipped[0]).evaluation_items("mmlu", "source")
    listing = read_run(shipped[1])
    assert not listing.complete and "does not hold the files" in listing.problem
    shutil.rmtree(items.parent)
    listing = read_run(shipped[1])
    assert not listing.complete and f"{SHARED_FOLDER}/{digest} is missing" in listing.problem


def test_backfilling_a_shared_evaluation_is_refused_so_no_other_run_changes(tmp_path):
    original, _ = write_full_run(tmp_path / "runs" / "old")
    as_first_edition_items(original, np.random.default_rng(0))  # scored before the gold measures existed
    root = tmp_path / "cached"
    root.mkdir()
    shipped = ship_run(original, root, "pkt transfer --out old")
    digest = open_run(shipped).manifest.shipped.shared_folders["evaluation/mmlu/source"]
    before = folder_digest(root / SHARED_FOLDER / digest)
    with pytest.raises(GoldBackfillError, match="stored in _shared/ for several shipped runs"):
        backfill_run(shipped)
    assert folder_digest(root / SHARED_FOLDER / digest) == before
    assert backfill_run(original)["filled"]  # the unshipped folder can be amended, then shipped again
