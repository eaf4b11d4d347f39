import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from run_builders import write_full_run

from pkt_core.runs.catalogue import read_run
from pkt_core.runs.reader import RunReadError, open_run
from pkt_core.runs.shared_tensors import SHARED_FOLDER, tensor_digest
from pkt_core.runs.shipping import main, prune_unreferenced, share_shipped, ship_run

PROBES, CROSS = "probe_activations.safetensors", "cross_map.safetensors"


def _written(folder):
    return load_file(str(folder / PROBES)), load_file(str(folder / CROSS))["cross_map"]


def _shipped_pair(tmp_path):
    """Two runs of one pair shipped side by side: same probes and map, their own target-after states."""
    first, _ = write_full_run(tmp_path / "runs" / "first")
    second, _ = write_full_run(tmp_path / "runs" / "second")
    raw = load_file(str(second / PROBES))
    changed = {key: (value + 1 if key.startswith("target_after") else value) for key, value in raw.items()}
    save_file(changed, str(second / PROBES))  # the one thing a second run does differently
    root = tmp_path / "cached"
    root.mkdir()
    return [ship_run(run, root, f"pkt transfer --out {run.name}") for run in (first, second)], (first, second), root


def test_shipped_runs_store_what_they_hold_alike_once_and_read_back_every_tensor(tmp_path):
    shipped, originals, root = _shipped_pair(tmp_path)
    parts = sorted((root / SHARED_FOLDER).glob("*.safetensors"))
    # source and target-before states, and the map: three parts for both runs together.
    assert len(parts) == 3
    for run_folder, original in zip(shipped, originals):
        probes, cross = _written(original)
        run = open_run(run_folder)
        assert run.has(PROBES) and run.has(CROSS)
        assert not (run_folder / CROSS).exists()  # all of it is shared
        own = load_file(str(run_folder / PROBES))
        assert set(own) == {key for key in probes if key.startswith("target_after")}
        read = run.tensors(PROBES)
        assert read.keys() == probes.keys() and all(torch.equal(read[k].float(), probes[k].float()) for k in probes)
        # The map is stored in float16 (shipping's rounding), then shared.
        assert torch.allclose(run.tensors(CROSS)["cross_map"].float(), cross, rtol=1e-3, atol=1e-3)
    for part in parts:  # each part is named by the digest of what it holds
        assert part.stem == tensor_digest(load_file(str(part)))
    from pkt_core.runs.catalogue import list_runs

    assert [(listing.path.name, listing.complete) for listing in list_runs([root])] == [
        ("first", True), ("second", True)]


def test_a_missing_or_changed_shared_part_is_named_and_nothing_is_read_wrong(tmp_path):
    shipped, _, root = _shipped_pair(tmp_path)
    [digest] = open_run(shipped[0]).manifest.shipped.shared_parts[CROSS]
    part = root / SHARED_FOLDER / f"{digest}.safetensors"
    tensors = load_file(str(part))
    save_file({"cross_map": tensors["cross_map"] * 2}, str(part))  # a readable file, other numbers
    with pytest.raises(RunReadError, match=f"{SHARED_FOLDER}/{digest}.safetensors does not hold the tensors"):
        open_run(shipped[0]).tensors(CROSS)
    part.unlink()
    listing = read_run(shipped[1])
    assert not listing.complete and f"{SHARED_FOLDER}/{digest}.safetensors is missing" in listing.problem


def test_parts_no_run_names_are_pruned_and_the_others_kept(tmp_path):
    shipped, _, root = _shipped_pair(tmp_path)
    before = {p.name for p in (root / SHARED_FOLDER).iterdir()}
    shutil.rmtree(shipped[1])
    assert prune_unreferenced(root) == []  # the second run's own parts were in its folder; all shared stay
    shutil.rmtree(shipped[0])
    removed = prune_unreferenced(root)
    assert {p.name for p in removed} == before and not any((root / SHARED_FOLDER).iterdir())


def test_runs_shipped_before_parts_were_shared_are_converted_in_place_with_the_same_tensors(tmp_path, capsys):
    first, _ = write_full_run(tmp_path / "runs" / "first")
    root = tmp_path / "cached"
    root.mkdir()
    folder = ship_run(first, root, "pkt transfer --out first")
    # As shipping wrote runs before: the files whole, no parts named.
    for name in (PROBES, CROSS):
        path = folder / name
        merged = open_run(folder).tensors(name)
        save_file(merged, str(path))
    for relative in open_run(folder).manifest.shipped.shared_folders:  # the evaluations too
        shutil.copytree(open_run(folder).evaluation_folder(*relative.split("/")[1:]), folder / relative)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["shipped"].pop("shared_parts")
    manifest["shipped"].pop("shared_folders")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    old = {name: open_run(folder).tensors(name) for name in (PROBES, CROSS)}
    old_items = open_run(folder).evaluation_items("mmlu", "source")
    shutil.rmtree(root / SHARED_FOLDER)
    assert main(["share", str(root)]) == 0 and str(folder) in capsys.readouterr().out
    run = open_run(folder)
    assert set(run.manifest.shipped.shared_parts) == {PROBES, CROSS}
    assert set(run.manifest.shipped.shared_folders) == {"evaluation/mmlu/source", "evaluation/mmlu/target_before"}
    assert not (folder / "evaluation/mmlu/source").exists()
    assert run.evaluation_items("mmlu", "source").equals(old_items)
    for name, tensors in old.items():
        read = run.tensors(name)
        assert read.keys() == tensors.keys() and all(torch.equal(read[k], tensors[k]) for k in tensors)
    assert share_shipped(root) == []  # nothing left to share
