"""`pkt similarity A_DIR B_DIR`: rows paired by key, the matrix and its metadata written atomically."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from pkt_core.capture.activation_store import CapturedRows, ShardWriter
from pkt_core.cli.main import main
from pkt_core.errors import ActivationStoreError, SimilarityInputError
from pkt_core.similarity.captures import compare_captures, pair_rows
from pkt_core.similarity.files import read_matrix_file, write_matrix_file
from pkt_core.cli.similarity import add_similarity_parser, run_similarity_command

SITE = "resid_post"


def row_signal(keys: np.ndarray) -> np.ndarray:
    """A per-(sequence, position) latent, so that rows only agree when paired by key."""
    return np.stack([np.random.default_rng(int(s) * 1000 + int(p) + 1).standard_normal(3) for s, p in keys])


def all_keys(sequences: int, positions: int) -> list[tuple[int, int]]:
    return [(s, p) for s in range(sequences) for p in [-1, *range(positions)]]


def write_capture(folder, keys, widths, seed, model_name, token_offset=None):
    """A capture folder in the store's format, split over two shards, with layers 0..L-1."""
    keys = np.array(sorted(keys), dtype=np.int64)
    rng = np.random.default_rng(seed)
    signal = row_signal(keys)
    layers = {
        (layer, SITE): torch.from_numpy(
            (signal @ rng.standard_normal((3, width)) + 0.3 * rng.standard_normal((len(keys), width))).astype(np.float32)
        )
        for layer, width in enumerate(widths)
    }
    token_id = torch.from_numpy(keys[:, 0] * 7 + keys[:, 1])
    if token_offset is not None:
        token_id[token_offset] += 1
    writer = ShardWriter(folder, shard_bytes=1)  # every append becomes its own shard
    half = len(keys) // 2
    with writer:
        for part in (slice(0, half), slice(half, None)):
            writer.append(CapturedRows(
                activations={key: value[part] for key, value in layers.items()},
                sequence_id=torch.from_numpy(keys[part, 0]), position=torch.from_numpy(keys[part, 1]),
                token_id=token_id[part],
            ))
        writer.commit({"model": {"name": model_name}, "layers": list(range(len(widths))), "sites": [SITE],
                       "options": {}})
    return keys, {layer: layers[(layer, SITE)].numpy() for layer in range(len(widths))}


def cka_reference(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x.astype(np.float64), y.astype(np.float64)
    n = len(x)
    h = np.eye(n) - 1.0 / n
    k, l = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h)

    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


@pytest.fixture
def captures(tmp_path):
    keys = all_keys(6, 10)
    keys_a = [k for k in keys if k not in {(1, 3), (4, -1), (2, 7)}]
    keys_b = [k for k in keys if k not in {(0, 0), (5, 9)}] + [(6, 0), (6, 1)]
    a = write_capture(tmp_path / "A", keys_a, [8, 8, 8], seed=1, model_name="big")
    b = write_capture(tmp_path / "B", keys_b, [12, 5], seed=2, model_name="small", token_offset=[4, 9])
    return tmp_path / "A", tmp_path / "B", a, b


def paired_reference(a, b):
    """Pair rows with a plain dictionary, independently of the NumPy set routines."""
    (keys_a, layers_a), (keys_b, layers_b) = a, b
    where_b = {tuple(key): row for row, key in enumerate(keys_b.tolist())}
    pairs = [(row, where_b[tuple(key)]) for row, key in enumerate(keys_a.tolist()) if tuple(key) in where_b]
    rows_a, rows_b = (np.array(side) for side in zip(*pairs))
    return np.array([[cka_reference(layers_a[i][rows_a], layers_b[j][rows_b]) for j in layers_b] for i in layers_a]), len(pairs)


def test_compare_captures_pairs_rows_by_key(captures):
    folder_a, folder_b, a, b = captures
    expected, n_common = paired_reference(a, b)
    result, metadata = compare_captures(folder_a, folder_b)
    np.testing.assert_allclose(result.values, expected, rtol=0, atol=1e-10)
    assert n_common == 66 - 5
    assert metadata["n_rows"] == n_common
    assert (metadata["rows_in_a"], metadata["rows_dropped_a"]) == (63, 63 - n_common)
    assert (metadata["rows_in_b"], metadata["rows_dropped_b"]) == (66, 66 - n_common)
    assert metadata["model_a"]["name"] == "big" and metadata["model_b"]["name"] == "small"
    assert metadata["layers_a"] == [0, 1, 2] and metadata["layers_b"] == [0, 1]
    # Two of B's rows were given other token ids; both are among the paired rows.
    assert metadata["token_mismatches"] == 2 and any("token ids" in note for note in metadata["notes"])


def test_cli_writes_json_with_metadata(captures, tmp_path, capsys):
    folder_a, folder_b, a, b = captures
    out = tmp_path / "out" / "cka.json"
    assert main(["similarity", str(folder_a), str(folder_b), "--metric", "linear_cka", "--out", str(out)]) == 0
    document = json.loads(out.read_text())
    expected, n_common = paired_reference(a, b)
    np.testing.assert_allclose(np.array(document["values"]), expected, rtol=0, atol=1e-10)
    assert document["metric"] == "linear_cka" and document["site"] == SITE and document["kind"] == "score"
    assert document["n_rows"] == n_common and "pkt_version" in document
    assert document["form"] == "feature"  # 61 rows of width <= 12: fewer flops than 61 x 61 Gram matrices
    assert sorted(p.name for p in out.parent.iterdir()) == ["cka.json"]  # no temporary file left
    assert f"{n_common} used" in capsys.readouterr().out


def test_cli_npz_subsample_and_options(captures, tmp_path):
    folder_a, folder_b, _, _ = captures
    outs = [tmp_path / f"knn{i}.npz" for i in range(2)]
    for out in outs:
        argv = ["similarity", str(folder_a), str(folder_b), "--metric", "mutual_knn", "--option", "k=3",
                "--max-rows", "30", "--seed", "5", "--out", str(out)]
        assert main(argv) == 0
    (first, metadata), (second, _) = (read_matrix_file(out) for out in outs)
    np.testing.assert_array_equal(first, second)  # the seed fixes the subsample
    assert metadata["n_rows"] == 30 and metadata["options"]["k"] == 3 and first.shape == (3, 2)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--out", "x.csv"], "must end in .json or .npz"),
        (["--out", "x.json", "--option", "bogus=1"], "has no option bogus"),
        (["--out", "x.json", "--metric", "mutual_knn", "--option", "k=three"], "not a valid value"),
        (["--out", "x.json", "--site", "resid_pre"], "has no site 'resid_pre'"),
        (["--out", "x.json", "--max-rows", "2"], "at least 4"),
    ],
)
def test_cli_errors_are_clear_and_exit_2(captures, tmp_path, capsys, monkeypatch, extra, message):
    folder_a, folder_b, _, _ = captures
    monkeypatch.chdir(tmp_path)
    assert main(["similarity", str(folder_a), str(folder_b), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_disjoint_or_tiny_overlaps_are_refused(tmp_path):
    write_capture(tmp_path / "A", all_keys(2, 5), [4], seed=1, model_name="a")
    write_capture(tmp_path / "B", [(s + 10, p) for s, p in all_keys(2, 5)], [4], seed=2, model_name="b")
    write_capture(tmp_path / "C", all_keys(2, 5)[:3] + [(9, 9)], [4], seed=3, model_name="c")
    with pytest.raises(SimilarityInputError, match="share no"):
        compare_captures(tmp_path / "A", tmp_path / "B")
    with pytest.raises(SimilarityInputError, match="only 3 rows are common"):
        compare_captures(tmp_path / "A", tmp_path / "C")
    with pytest.raises(ActivationStoreError, match="no capture folder"):
        compare_captures(tmp_path / "A", tmp_path / "missing")


def test_pair_rows_refuses_duplicate_keys():
    keys = np.array([[0, 1], [0, 2], [0, 1]])
    with pytest.raises(ActivationStoreError, match="occur twice"):
        pair_rows(keys, keys)


def test_parser_registration_sets_the_handler(captures, tmp_path):
    parser = argparse.ArgumentParser(prog="pkt")
    add_similarity_parser(parser.add_subparsers(dest="command"))
    folder_a, folder_b, _, _ = captures
    args = parser.parse_args(["similarity", str(folder_a), str(folder_b), "--out", str(tmp_path / "m.json")])
    assert args.func is run_similarity_command and args.metric == "linear_cka" and args.site == SITE
    assert args.func(args) == 0


def test_write_refuses_non_finite_values(tmp_path):
    with pytest.raises(SimilarityInputError, match="NaN"):
        write_matrix_file(tmp_path / "m.json", np.array([[np.nan]]), {})
    assert list(tmp_path.iterdir()) == []
