"""What every page of the app shares: run discovery, cached readers, the current run, figures with export.

The app reads runs and calls the library: every number drawn here comes from a run folder
through :mod:`pkt_core.runs.reader`, :mod:`pkt_core.figures` and :mod:`pkt_core.figures.projections`.
Readers are cached per (run folder, manifest modification time), so a rewritten run is read again.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
if str(REPOSITORY_ROOT) not in sys.path:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPOSITORY_ROOT))

from pkt_core.runs.catalogue import RunListing, default_run_roots, list_runs  # noqa: E402
from pkt_core.runs.schema import MANIFEST_FILE  # noqa: E402

CURRENT_RUN = "current_run"  # session key: folder of the run being explored
COMPARE_RUNS = "compare_runs"  # session key: run ids picked for comparison


def run_roots() -> list[Path]:
    return default_run_roots(REPOSITORY_ROOT)


def listings() -> list[RunListing]:
    """Every run folder under the roots, complete or not (cheap: manifests only)."""
    return list_runs(run_roots())


def complete_runs() -> list[RunListing]:
    return [listing for listing in listings() if listing.complete]


def _stamp(folder: str) -> float:
    try:
        return (Path(folder) / MANIFEST_FILE).stat().st_mtime
    except OSError:
        return 0.0


@st.cache_data(show_spinner=False, max_entries=64)
def _open(folder: str, stamp: float):
    from pkt_core.runs.reader import open_run

    return open_run(folder)


def open_current(folder: str):
    return _open(folder, _stamp(folder))


def run_label(listing: RunListing) -> str:
    manifest = listing.manifest
    if manifest is None:
        return listing.run_id
    return f"{manifest.run_id} ({manifest.method} {manifest.variant or ''}, {manifest.task or 'data file'})"


def default_run(runs: list[RunListing]) -> RunListing:
    """The run the app opens on: the newest complete SemAlign run (the method the studio is
    about), else the newest complete run."""
    newest = lambda listing: listing.manifest.created_at  # noqa: E731
    semalign = [listing for listing in runs if listing.manifest.method == "semalign"]
    return max(semalign or runs, key=newest)


def current_run_picker() -> str | None:
    """The sidebar's run selector, on every page; returns the chosen run folder (or None)."""
    labels = {str(listing.path): run_label(listing) for listing in complete_runs()}
    folders = list(labels)
    if not folders:
        st.sidebar.info("No complete run yet: start one on **New run**, or put runs in `cached_runs/`.")
        return None
    if st.session_state.get(CURRENT_RUN) not in folders:
        st.session_state[CURRENT_RUN] = str(default_run(complete_runs()).path)
    return st.sidebar.selectbox("Run", folders, key=CURRENT_RUN, format_func=labels.get,
                                help="The run every page shows; pick one on Runs, or here.")


def require_run():
    """The current run, opened; stops the page with a clear message when there is none or it is broken."""
    folder = st.session_state.get(CURRENT_RUN)
    if not folder:
        st.info("No complete run to show. Runs appear when `pkt transfer` (or **New run**) writes them.")
        st.stop()
    from pkt_core.runs.reader import RunReadError

    try:
        return open_current(folder)
    except RunReadError as error:
        st.error(f"This run cannot be read: {error}")
        st.stop()


# -- cached figure builders (each keyed by run folder + manifest stamp) -----------------------


def cached_spec(builder: str, folder: str, *args, **kwargs):
    """``<builder>(run, *args, **kwargs)`` from the figure modules of :mod:`pkt_core.figures`, cached per run stamp."""
    return _cached_spec(builder, folder, _stamp(folder), args, tuple(sorted(kwargs.items())))


@st.cache_data(show_spinner=False, max_entries=512)
def _cached_spec(builder: str, folder: str, stamp: float, args: tuple, kwargs: tuple):
    run = _open(folder, stamp)
    return _figure_builders()[builder](run, *args, **dict(kwargs))


def _figure_builders() -> dict:
    """Every figure or table builder a page may ask for by name (one run in, one spec or table out)."""
    from pkt_core.figures import alignment_page, benchmarks_page, mapping_page

    return {
        "alignment_heatmap": alignment_page.alignment_heatmap,
        "alignment_profiles": alignment_page.alignment_profiles,
        "linear_probe_lines": alignment_page.linear_probe_lines,
        "linear_probe_summary": alignment_page.linear_probe_summary,
        "mapping_bipartite": mapping_page.mapping_bipartite,
        "attribution_bars": mapping_page.attribution_bars,
        "fidelity_lines": mapping_page.fidelity_lines,
        "stage_loss_lines": mapping_page.stage_loss_lines,
        "peer_pairing_bipartite": mapping_page.peer_pairing_bipartite,
        "seeking_sensitivity_bars": mapping_page.seeking_sensitivity_bars,
        "laten_location_bars": mapping_page.laten_location_bars,
        "benchmark_summary": benchmarks_page.benchmark_summary,
        "evaluation_choices": benchmarks_page.evaluation_choices,
        "benchmark_bars": benchmarks_page.benchmark_bars,
        "per_subject": benchmarks_page.per_subject,
        "per_subject_bars": benchmarks_page.per_subject_bars,
        "paired_items": benchmarks_page.paired_items,
        "letter_distribution_bars": benchmarks_page.letter_distribution_bars,
        "calibrated_accuracy": benchmarks_page.calibrated_accuracy,
        "continuous_measures": benchmarks_page.continuous_measures,
        "items_by_gold_change": benchmarks_page.items_by_gold_change,
    }


# -- showing a figure, with server-side export ------------------------------------------------


@st.cache_data(show_spinner=False, max_entries=256)
def _export(_spec, spec_key: str, fmt: str, width: str) -> bytes:
    from pkt_core.figures.export import export_figure
    from pkt_core.figures.spec import PAPER

    return export_figure(_spec, fmt, PAPER, width)


def _spec_key(spec) -> str:
    import hashlib
    import json

    digest = hashlib.sha256()
    digest.update(json.dumps({"name": spec.name, "caption": spec.caption, "encoding": spec.encoding},
                             sort_keys=True, default=str).encode())
    digest.update(spec.data.to_csv(index=False).encode())
    return digest.hexdigest()[:20]


def show_figure(spec, key: str, height: int | None = None, notes: bool = True, select: bool = False):
    """Draw ``spec`` with plotly, its notes, and PDF / SVG / PNG / CSV / caption downloads made
    on the server (matplotlib with the paper preset; the bytes are built when a button is pressed)."""
    from pkt_core.figures.export import export_filename
    from pkt_core.figures.render_plotly import to_plotly
    from pkt_core.figures.spec import EXPORT_FORMATS, MIME_TYPES

    figure = to_plotly(spec)
    if height:
        figure.update_layout(height=height)
    # With ``select``, box and lasso selections rerun the page and come back as the chart's event.
    event = st.plotly_chart(figure, key=f"{key}-chart", on_select="rerun" if select else "ignore",
                            selection_mode=("points", "box", "lasso"))
    for note in spec.notes if notes else ():
        st.caption(note)
    spec_key = _spec_key(spec)
    with st.popover("Export", icon=":material/download:"):
        st.caption("Paper preset: Okabe-Ito / viridis palette, 8 pt DejaVu Sans, fonts embedded. "
                   "The CSV is the data behind the figure; the JSON caption records run, measure and options.")
        width = st.radio("Width", ["single", "double"], horizontal=True, key=f"{key}-width",
                         format_func=lambda w: {"single": "single column (3.5 in)", "double": "double column (7.1 in)"}[w])
        columns = st.columns(len(EXPORT_FORMATS))
        for column, fmt in zip(columns, EXPORT_FORMATS):
            column.download_button(
                fmt.upper(), data=lambda fmt=fmt: _export(spec, spec_key, fmt, width),
                file_name=export_filename(spec, fmt), mime=MIME_TYPES[fmt], key=f"{key}-{fmt}", on_click="ignore",
            )
    return event if select else None


def page_header(title: str, caption: str | None = None) -> None:
    st.header(title)
    if caption:
        st.caption(caption)
