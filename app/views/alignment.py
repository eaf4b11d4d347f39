"""Layer alignment: target x source heatmaps for every measure the run holds, before/after, difference."""

from __future__ import annotations

import streamlit as st
import studio

from pkt_core.figures.alignment_page import (
    DIFFERENCE_VIEW,
    VIEW_TITLES,
    measure_description,
    measures_in_run,
    missing_measures,
    outlier_note,
    similarity_files,
)

run = studio.require_run()
folder = str(run.folder)
studio.page_header("Layer alignment", f"Run `{run.run_id}`: how each target layer relates to each source layer, "
                   "before and after transfer. Values are read from the run; nothing is recomputed here.")

files, problems = similarity_files(run)
for problem in problems:
    st.warning(f"Not shown: {problem}")
measures = measures_in_run(run)
if not measures:
    st.error(f"Run {run.run_id} holds no layer-similarity matrices (cka_*.json or similarity_*.json).")
    st.stop()

lacking = missing_measures(run)
if lacking:
    st.info("This run holds **" + ", ".join(sorted(measures)) + "** only. Not in this run: " + ", ".join(lacking)
            + ". They are not recomputed in the app; compute them with `pkt similarity` on captures of the pair.")

left, middle, right = st.columns([2, 3, 2])
with left:
    metric = st.selectbox("Measure", sorted(measures), key="alignment_measure", help=None)
    st.caption(measure_description(metric))
from pkt_core.figures.alignment_page import views_for  # noqa: E402

views = views_for(measures, metric)
with middle:
    view = st.radio("View", views, format_func=VIEW_TITLES.get, key="alignment_view", horizontal=True)
with right:
    maps = list(run.mappings.get("mappings", {}))
    chosen = run.mappings.get("chosen")
    overlay_options = ["chosen", *[m for m in maps if m != chosen], "none"]
    overlay = st.selectbox("Layer map drawn over it", overlay_options, key="alignment_overlay",
                           format_func=lambda m: f"{chosen} (used for training)" if m == "chosen" else m,
                           disabled=view == "target_before_after")

spec = studio.cached_spec("alignment_heatmap", folder, metric, view, None if overlay == "none" else overlay)
studio.show_figure(spec, "alignment-heatmap", height=520)
if view == DIFFERENCE_VIEW:
    st.caption("After minus before, per cell (purple: lower after transfer; orange: higher).")

st.subheader("Per-layer profiles")
profile = studio.cached_spec("alignment_profiles", folder, metric, None if overlay in ("none", "chosen") else overlay)
studio.show_figure(profile, "alignment-profile", height=380)

st.subheader("Rows and outlier handling")
st.write(outlier_note(run))
with st.expander("Files"):
    st.dataframe([{"file": f.file, "measure": f.metric, "view": f.view, "shape": f"{f.shape[0]} x {f.shape[1]}",
                   "rows": f.n_rows, "notes": "; ".join(f.notes)} for f in files], hide_index=True,
                 key="alignment_files")
