"""Export: every figure kind as PDF, SVG and PNG that parse, its data as CSV, a JSON caption, the paper
preset's widths; and the app's download buttons hand out those bytes, made on the server."""

import io
import json
import xml.etree.ElementTree as ElementTree

import pandas as pd
import pytest

pytest.importorskip("matplotlib")

from pkt_core.figures import alignment_page, benchmarks_page, export, mapping_page  # noqa: E402
from pkt_core.figures.projections import project, projection_figure  # noqa: E402
from pkt_core.figures.spec import PAPER, FigureError  # noqa: E402
from pkt_core.runs.reader import open_run  # noqa: E402


def check_pdf(data: bytes) -> None:
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    try:
        import pypdf
    except ImportError:
        return
    reader = pypdf.PdfReader(io.BytesIO(data))
    assert len(reader.pages) == 1
    width_pt = float(reader.pages[0].mediabox.width)
    assert 0 < width_pt <= 7.1 * 72 + 1


def check_svg(data: bytes) -> ElementTree.Element:
    root = ElementTree.fromstring(data)
    assert root.tag.endswith("svg")
    return root


def check_png(data: bytes, max_width_in: float, dpi: int) -> tuple[int, int]:
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    # Tight bounding box: never wider than the column plus the margins matplotlib may add.
    assert 0.5 * max_width_in * dpi < image.width <= (max_width_in + 0.5) * dpi
    return image.size


def _specs(run):
    return [
        alignment_page.alignment_heatmap(run, "linear_cka", "target_source_before"),
        alignment_page.alignment_heatmap(run, "linear_cka", alignment_page.DIFFERENCE_VIEW),
        alignment_page.alignment_profiles(run, "linear_cka"),
        mapping_page.mapping_bipartite(run, ["depth", "depth+critical"]),
        mapping_page.attribution_bars(run, "signed"),
        mapping_page.fidelity_lines(run),
        mapping_page.stage_loss_lines(run),
        benchmarks_page.benchmark_bars(run, "mmlu", "acc"),
        benchmarks_page.per_subject_bars(run, "mmlu", "acc", ["anatomy", "astronomy"]),
        projection_figure(run, project(run, 1, 2, "pca"), "correctness"),
    ]


def test_every_figure_kind_exports_to_files_that_parse(app_run):
    run = open_run(app_run)
    for spec in _specs(run):
        check_pdf(export.export_figure(spec, "pdf"))
        root = check_svg(export.export_figure(spec, "svg"))
        # Text stays text in the SVG (editable in a paper): the title is there as characters.
        assert spec.title in "".join(root.itertext())
        check_png(export.export_figure(spec, "png"), PAPER.single_column_in, PAPER.dpi)
        frame = pd.read_csv(io.BytesIO(export.export_figure(spec, "csv")))
        assert list(frame.columns) == list(spec.data.columns) and len(frame) == len(spec.data)
        caption = json.loads(export.export_figure(spec, "json"))
        assert caption["run_id"] == run.run_id and caption["figure"] == spec.name
        assert caption["export"]["palette"] == "Okabe-Ito" and caption["export"]["width_in"] == 3.5


def test_csv_is_the_data_drawn_and_the_caption_names_measure_and_options(app_run):
    run = open_run(app_run)
    spec = alignment_page.alignment_heatmap(run, "linear_cka", "target_source_after", mapping="cka-monotone")
    frame = pd.read_csv(io.BytesIO(export.export_figure(spec, "csv")))
    matrix = json.loads((app_run / "similarity_linear_cka_target_source_after.json").read_text())["values"]
    for row in frame.itertuples():
        assert row.value == pytest.approx(matrix[row.row_layer][row.col_layer])
    mapping = json.loads((app_run / "mappings.json").read_text())["mappings"]["cka-monotone"]["table"]
    marked = sorted((int(r.row_layer), int(r.col_layer)) for r in frame.itertuples() if r.mapping_weight > 0)
    assert marked == sorted((row["target_layer"], s) for row in mapping for s in row["source_layers"])
    caption = json.loads(export.export_figure(spec, "json", width="double"))
    assert (caption["measure"], caption["view"], caption["mapping"]) == ("linear_cka", "target_source_after",
                                                                        "cka-monotone")
    assert caption["export"]["width_in"] == 7.1 and "position 0" in caption["outlier_handling"]


def test_double_column_is_wider_and_bundle_writes_every_format(app_run, tmp_path):
    run = open_run(app_run)
    spec = alignment_page.alignment_heatmap(run, "linear_cka", "target_source_before")
    single = check_png(export.export_figure(spec, "png", width="single"), 3.5, 300)
    double = check_png(export.export_figure(spec, "png", width="double"), 7.1, 300)
    assert double[0] > 1.6 * single[0]
    written = export.export_bundle(spec, tmp_path)
    assert sorted(p.suffix for p in written) == [".csv", ".json", ".pdf", ".png", ".svg"]
    assert all(p.name.startswith(run.run_id) for p in written)
    with pytest.raises(FigureError, match="cannot export as 'eps'"):
        export.export_figure(spec, "eps")
    with pytest.raises(FigureError, match="single' or 'double"):
        export.export_figure(spec, "png", width="triple")


def test_the_apps_download_buttons_serve_server_made_files(app_test, app_run, deferred_downloads):
    at = app_test("views/alignment.py")
    buttons = {button.proto.label: button.proto for button in at.get("download_button")
               if "alignment-heatmap" in button.proto.id and "alignment-heatmap-right" not in button.proto.id}
    assert set(buttons) == {"PDF", "SVG", "PNG", "CSV", "JSON"}
    made = {label: deferred_downloads[proto.deferred_file_id]() for label, proto in buttons.items()}
    check_pdf(made["PDF"])
    check_svg(made["SVG"])
    check_png(made["PNG"], 3.5, 300)
    frame = pd.read_csv(io.BytesIO(made["CSV"]))
    matrix = json.loads((app_run / "similarity_linear_cka_target_source_before.json").read_text())["values"]
    assert frame["value"].tolist() == pytest.approx([v for row in matrix for v in row])
    assert json.loads(made["JSON"])["measure"] == "linear_cka"


def test_the_library_modules_behind_the_app_never_import_streamlit():
    import subprocess
    import sys

    code = ("import sys, pkt_core.figures, pkt_core.figures.projections, pkt_core.jobs.queue, pkt_core.runs.reader; "
            "print('streamlit' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
