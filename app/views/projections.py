"""Projections: PCA / UMAP of the pooled probe states of source, target before and target after."""

from __future__ import annotations

import streamlit as st
import studio

from pkt_core.figures.alignment_page import mapping_table
from pkt_core.figures.projections import (
    ProjectionError,
    projection_figure,
    selected_items,
    selected_points,
    umap_available,
)
from pkt_core.runs.schema import CROSS_MAP_FILE, PROBE_ACTIVATIONS_FILE

run = studio.require_run()
folder = str(run.folder)
studio.page_header("Projections", f"Run `{run.run_id}`: each probe prompt's mean hidden state at one layer pair, "
                   "embedded in 2-D. Results are cached per parameter set, so going back is instant.")

if not run.has(PROBE_ACTIVATIONS_FILE):
    shipped = run.manifest.shipped
    if shipped is not None and PROBE_ACTIVATIONS_FILE in shipped.left_out:
        st.info(f"Run {run.run_id} was shipped without its probe activations, to keep `cached_runs/` small; "
                "every other page shows it in full. To project it, recreate the run with its documented "
                f"command:\n\n`{shipped.reproduce}`")
    else:
        st.info(f"Run {run.run_id} holds no {PROBE_ACTIVATIONS_FILE}: nothing to project.")
    st.stop()


@st.cache_data(show_spinner=False, max_entries=256)
def _project(folder: str, stamp: float, target_layer: int, source_layer: int | None, method: str, space: str,
             neighbours: int, min_dist: float, seed: int):
    from pkt_core.figures.projections import project

    return project(studio.open_current(folder), target_layer, source_layer, method, space, neighbours, min_dist, seed)


manifest = run.manifest
n_target, n_source = manifest.target.num_layers, manifest.source.num_layers
found = mapping_table(run)
map_name, mapping_rows = (found[0], {row.target_layer: row for row in found[1]}) if found else ("depth", {})
has_cross_map = run.has(CROSS_MAP_FILE)

controls, parameters = st.columns([3, 2])
with controls:
    target_layer = st.slider("Target layer", 0, max(0, n_target - 1), value=min(n_target - 1, n_target // 2),
                             key="projection_target_layer") if n_target > 1 else 0
    spaces = ["joint", "target"] if has_cross_map else ["target"]
    space = st.radio("Space", spaces, horizontal=True, key="projection_space",
                     format_func={"joint": "source (through M) + target before/after",
                                  "target": "target before/after only"}.get)
    if not has_cross_map:
        st.caption(f"{manifest.method} builds no source-to-target map M, so source states cannot be placed in the "
                   "target's space: the target before and after are projected.")
    row = mapping_rows.get(target_layer)
    # Without a map for this layer, the depth-proportional source layer.
    mapped = (row.source_layers[max(range(len(row.weights)), key=row.weights.__getitem__)] if row
              else round(target_layer * (n_source - 1) / max(1, n_target - 1)))
    follow = st.toggle(f"Source layer from the run's map ({map_name})", value=True,
                       key="projection_follow_map", disabled=space == "target")
    if space == "target":
        source_layer = mapped  # unused in the target's own space
    elif follow:
        source_layer = mapped
        st.caption(f"Layer pair: source {source_layer} -> target {target_layer}")
    else:
        source_layer = st.slider("Source layer", 0, max(0, n_source - 1), value=mapped, key="projection_source_layer")
    colour_by = st.radio("Colour by", ["model", "label", "correctness"], horizontal=True, key="projection_colour",
                         format_func={"model": "model", "label": "task label", "correctness": "correctness"}.get)
with parameters:
    methods = ["pca", "umap"]
    method = st.radio("Method", methods, horizontal=True, key="projection_method", format_func=str.upper)
    has_umap = umap_available()
    if method == "umap" and not has_umap:
        st.warning("UMAP needs the `umap-learn` package (`pip install -e .[app]`); showing PCA.")
        method = "pca"
    neighbours = st.number_input("Neighbours", 2, 200, 15, key="projection_neighbours", disabled=method != "umap")
    min_dist = st.number_input("Min distance", 0.0, 1.0, 0.1, step=0.05, key="projection_min_dist",
                               disabled=method != "umap")
    seed = st.number_input("Seed", 0, 2**31 - 1, 0, key="projection_seed", disabled=method != "umap")
    if method == "umap":
        st.caption("The first UMAP in a worker compiles its kernels (numba): about 15 s once, then fast.")

try:
    with st.spinner("Projecting..."):
        projection = _project(folder, studio._stamp(folder), int(target_layer),
                              None if space == "target" else int(source_layer), method, space,
                              int(neighbours) if method == "umap" else 15, float(min_dist) if method == "umap" else 0.1,
                              int(seed) if method == "umap" else 0)
except ProjectionError as error:
    st.error(str(error))
    st.stop()

spec = projection_figure(run, projection, colour_by)
if colour_by == "correctness" and (projection.points["correct"] == "not evaluated").all():
    st.info("No evaluation of this run scored the probe prompts, so correctness is unknown for every point "
            "(probes are MMLU evaluation items when the run's task is mmlu; evaluate with the same items).")
event = studio.show_figure(spec, "projection", height=560, select=True)
st.subheader("Selected probes")
points = (event or {}).get("selection", {}).get("points", []) if event else []
chosen = selected_points(projection, [(p["x"], p["y"]) for p in points if "x" in p and "y" in p])
if chosen.empty:
    st.caption("Select points on the chart (box or lasso, in its toolbar) to list those probe items with their gold "
               "answer and each model's answer and outcome.")
else:
    st.dataframe(selected_items(run, list(chosen["probe_id"])), hide_index=True, key="projection_selected")
