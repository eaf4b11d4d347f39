import json

import numpy as np
import pytest
import torch
from tiny_models import SAMPLE_TEXTS, make_tiny_loaded

from pkt_core.capture.activation_store import open_activations
from pkt_core.capture.dataset import CaptureCancelled, capture_texts
from pkt_core.capture.hooks import CaptureOptions
from pkt_core.errors import ActivationStoreError


@pytest.fixture
def loaded():
    return make_tiny_loaded("qwen2")


def test_disk_capture_reads_back_like_the_memory_capture(loaded, tmp_path):
    options = CaptureOptions(include_logits=True, outlier_norm_factor=3.0)
    in_memory = capture_texts(loaded, SAMPLE_TEXTS, options, batch_size=2)
    on_disk = capture_texts(loaded, SAMPLE_TEXTS, options, batch_size=2, out_dir=tmp_path / "capture")
    assert not on_disk.in_memory and on_disk.n_rows == in_memory.n_rows
    for layer in in_memory.layers:
        for site in in_memory.sites:
            np.testing.assert_array_equal(on_disk.layer(layer, site), in_memory.layer(layer, site))
    np.testing.assert_array_equal(on_disk.row_keys(), in_memory.row_keys())
    torch.testing.assert_close(on_disk.logits(), in_memory.logits())
    assert on_disk.metadata["dropped_outliers"] == in_memory.metadata["dropped_outliers"]
    assert on_disk.metadata["model"]["name"] == "tiny-qwen2"
    assert not (tmp_path / "capture.partial").exists()


def test_capture_too_big_for_memory_streams_to_shards(loaded, isolated_pkt_home):
    result = capture_texts(loaded, SAMPLE_TEXTS * 4, CaptureOptions(), batch_size=2, memory_budget_bytes=1000)
    assert not result.in_memory
    assert result.folder.parent == isolated_pkt_home / "activations"
    reference = capture_texts(loaded, SAMPLE_TEXTS * 4, CaptureOptions(), batch_size=2)
    np.testing.assert_array_equal(result.layer(2), reference.layer(2))


def test_many_small_shards_keep_row_order(loaded, tmp_path):
    from pkt_core.capture.activation_store import ShardWriter
    from pkt_core.capture.dataset import pad_batch, tokenize_texts
    from pkt_core.capture.hooks import capture_batch

    encoded = tokenize_texts(loaded.tokenizer, SAMPLE_TEXTS, 512)
    writer = ShardWriter(tmp_path / "sharded", shard_bytes=1)  # one shard per batch
    with writer:
        for start in range(0, len(encoded), 2):
            indices = list(range(start, min(start + 2, len(encoded))))
            ids, mask = pad_batch([encoded[i] for i in indices], 0, "right")
            writer.append(capture_batch(loaded.model, ids, mask, CaptureOptions(), indices))
        writer.commit({"layers": [0, 1, 2], "sites": ["resid_pre", "resid_post", "contribution"], "options": {}})
    result = open_activations(tmp_path / "sharded")
    assert len(result.metadata["shards"]) == 3
    keys = result.row_keys()
    assert (np.diff(keys[:, 0]) >= 0).all()


def test_cancelled_capture_leaves_nothing_and_keeps_the_old_folder(loaded, tmp_path):
    target = tmp_path / "capture"
    first = capture_texts(loaded, SAMPLE_TEXTS[:2], CaptureOptions(), out_dir=target)
    calls = {"n": 0}

    def cancel_on_second_batch():
        calls["n"] += 1
        return calls["n"] >= 2

    with pytest.raises(CaptureCancelled):
        capture_texts(loaded, SAMPLE_TEXTS, CaptureOptions(), batch_size=1, out_dir=target, overwrite=True,
                      should_cancel=cancel_on_second_batch)
    assert not (tmp_path / "capture.partial").exists()
    survivor = open_activations(target)
    assert survivor.n_rows == first.n_rows


def test_existing_folder_is_not_overwritten_without_asking(loaded, tmp_path):
    capture_texts(loaded, SAMPLE_TEXTS[:1], CaptureOptions(), out_dir=tmp_path / "c")
    with pytest.raises(ActivationStoreError, match="already exists"):
        capture_texts(loaded, SAMPLE_TEXTS[:1], CaptureOptions(), out_dir=tmp_path / "c")


@pytest.mark.parametrize("damage", ["no_metadata", "bad_json", "missing_shard", "truncated_shard", "row_count"])
def test_corrupt_folders_give_clear_errors(loaded, tmp_path, damage):
    folder = tmp_path / "capture"
    capture_texts(loaded, SAMPLE_TEXTS, CaptureOptions(), out_dir=folder)
    metadata_path = folder / "capture.json"
    shard = folder / json.loads(metadata_path.read_text())["shards"][0]["file"]
    if damage == "no_metadata":
        metadata_path.unlink()
    elif damage == "bad_json":
        metadata_path.write_text("{not json")
    elif damage == "missing_shard":
        shard.unlink()
    elif damage == "truncated_shard":
        shard.write_bytes(shard.read_bytes()[:100])
    elif damage == "row_count":
        metadata = json.loads(metadata_path.read_text())
        metadata["n_rows"] += 1
        metadata_path.write_text(json.dumps(metadata))
    with pytest.raises(ActivationStoreError):
        open_activations(folder).layer(0)


def test_missing_folder_and_unknown_layer(loaded, tmp_path):
    with pytest.raises(ActivationStoreError, match="no capture folder"):
        open_activations(tmp_path / "nowhere")
    result = capture_texts(loaded, SAMPLE_TEXTS, CaptureOptions(layers=(1,)))
    with pytest.raises(ActivationStoreError, match="layer 0 was not captured"):
        result.layer(0)
