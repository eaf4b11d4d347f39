"""``pkt similarity ... --out RUN/similarity_<measure>_<view>.json``: the file joins the run and the
Layer alignment page's data functions show it (the path the page's own advice names)."""

from __future__ import annotations

import numpy as np
import pytest
from run_builders import write_full_run
from tiny_models import SAMPLE_TEXTS, make_tiny_loaded

from pkt_core.capture.dataset import capture_texts
from pkt_core.capture.hooks import CaptureOptions
from pkt_core.cli.main import main
from pkt_core.runs.reader import open_run


def _reference_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Biased linear CKA in float64, from its definition (Kornblith et al. 2019)."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


@pytest.fixture
def run_and_captures(tmp_path):
    run, _ = write_full_run(tmp_path / "run")
    options = CaptureOptions(sites=("resid_post",), token_selection="all", drop_first_position=True)
    target = capture_texts(make_tiny_loaded("qwen2", num_layers=3, seed=1, width=32), SAMPLE_TEXTS, options,
                           out_dir=tmp_path / "target")
    source = capture_texts(make_tiny_loaded("qwen2", num_layers=4, seed=2, width=64), SAMPLE_TEXTS, options,
                           out_dir=tmp_path / "source")
    return run, tmp_path / "target", tmp_path / "source", target, source


def test_a_similarity_file_written_into_a_run_is_shown_by_the_alignment_page(run_and_captures):
    from pkt_core.figures.alignment_page import alignment_heatmap, measures_in_run

    run_folder, target_dir, source_dir, target, source = run_and_captures
    out = run_folder / "similarity_linear_cka_target_source_before.json"
    out.unlink()  # replace the run's own matrix with one computed from the captures
    assert main(["similarity", str(target_dir), str(source_dir), "--metric", "linear_cka", "--out", str(out)]) == 0
    run = open_run(run_folder)
    assert "target_source_before" in measures_in_run(run)["linear_cka"]
    spec = alignment_heatmap(run, "linear_cka", "target_source_before", mapping=None)
    drawn = spec.data["value"].to_numpy().reshape(3, 4)
    expected = np.array([[_reference_cka(np.asarray(target.layer(t, "resid_post"), dtype=np.float64),
                                         np.asarray(source.layer(s, "resid_post"), dtype=np.float64))
                          for s in range(4)] for t in range(3)])
    np.testing.assert_allclose(drawn, expected, rtol=1e-6, atol=1e-9)
    assert run.similarity("linear_cka", "target_source_before").record.view == "target_source_before"
