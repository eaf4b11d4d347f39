"""Layer alignment: target x source heatmaps for every measure the run holds, before/after, difference."""

from __future__ import annotations

import streamlit as st
import studio

from pkt_core.figures.alignment_page import (
    DIFFERENCE_VIEW,
    PEER_PAIRING,
    VIEW_TITLES,
    layer_map_names,
    linear_probe_status,
    measure_description,
    measures_in_run,
    missing_measures,
    outlier_note,
    views_for,
)

run = studio.require_run()
folder = str(run.folder)
studio.page_header("Layer alignment", f"Run `{run.run_id}`: how each target layer relates to each source layer, "
                   "before and after transfer. Values are read from the run; nothing is recomputed here.")

for problem in run.similarity_problems():
    st.warning(f"Not shown: {problem}")
measures = measures_in_run(run)
if not measures:
    st.info(f"Run {run.run_id} holds no layer-similarity matrices (similarity_<measure>_<view>.json). Compute "
            "them with `pkt similarity TARGET_CAPTURE SOURCE_CAPTURE --metric ... --out "
            f"{run.folder}/similarity_<measure>_target_source_before.json` on captures of the pair.")
    st.stop()

lacking = missing_measures(run)
if lacking:
    st.info("This run holds **" + ", ".join(sorted(measures)) + "**. Not in this run: " + ", ".join(lacking)
            + ". The app never recomputes them; `pkt similarity TARGET_CAPTURE SOURCE_CAPTURE --metric M --out "
            f"{run.folder}/similarity_M_target_source_before.json` adds one from captures of the pair.")
for key, why in run.manifest.similarity_skipped.items():
    st.caption(f"Left out by the run: {key}: {why}")

CKA_FAMILY = ("linear_cka", "linear_cka_unbiased", "rbf_cka", "rbf_cka_unbiased")
CCA_FAMILY = ("svcca", "pwcca", "mean_cca")
held = sorted(measures)
left_options = [m for m in held if m in CKA_FAMILY] or held
right_options = [m for m in held if m not in CKA_FAMILY]
right_default = next((m for m in CCA_FAMILY if m in right_options), right_options[0] if right_options else None)

top_left, top_right = st.columns([3, 2])
with top_right:
    maps = layer_map_names(run)
    chosen = run.layer_maps.chosen if run.layer_maps is not None else (PEER_PAIRING if maps else None)
    overlay_options = (["chosen", *[m for m in maps if m != chosen], "none"]) if maps else ["none"]
    overlay = st.selectbox("Layer map drawn over them", overlay_options, key="alignment_overlay",
                           format_func=lambda m: f"{chosen} (used for training)" if m == "chosen" else m,
                           disabled=not maps)
    if not maps:
        st.caption(f"{run.manifest.method} pairs no layers: it trains every target layer against the source's "
                   "outputs, so there is no layer map to draw.")
left, right = st.columns(2)
with left:
    metric = st.selectbox("Measure (CKA family)", left_options, key="alignment_measure",
                          index=left_options.index("linear_cka") if "linear_cka" in left_options else 0)
    st.caption(measure_description(metric))
views = views_for(measures, metric)
with top_left:
    view = st.radio("View", views, format_func=VIEW_TITLES.get, key="alignment_view", horizontal=True)
overlay_for_view = None if overlay == "none" or view == "target_before_after" else overlay
with left:
    spec = studio.cached_spec("alignment_heatmap", folder, metric, view, overlay_for_view)
    studio.show_figure(spec, "alignment-heatmap", height=480)
with right:
    if right_default is None:
        st.selectbox("Measure (CCA family and others)", ["none in this run"], key="alignment_measure_right",
                     disabled=True)
        st.info("This run holds no CCA-family matrix (format-1 runs held linear CKA only); see the measures "
                "not in this run above.")
    else:
        right_metric = st.selectbox("Measure (CCA family and others)", right_options, key="alignment_measure_right",
                                    index=right_options.index(right_default))
        st.caption(measure_description(right_metric))
        if view in views_for(measures, right_metric):
            right_spec = studio.cached_spec("alignment_heatmap", folder, right_metric, view, overlay_for_view)
            studio.show_figure(right_spec, "alignment-heatmap-right", height=480)
        else:
            st.info(f"This run holds no {right_metric} matrix for this view "
                    f"({VIEW_TITLES[view]}); it has: {', '.join(VIEW_TITLES[v] for v in views_for(measures, right_metric))}.")
if view == DIFFERENCE_VIEW:
    st.caption("After minus before, per cell (purple: lower after transfer; orange: higher).")

st.subheader("Per-layer profiles")
profile = studio.cached_spec("alignment_profiles", folder, metric, None if overlay in ("none", "chosen") else overlay)
studio.show_figure(profile, "alignment-profile", height=380)

st.subheader("Rows and outlier handling")
st.write(outlier_note(run))
with st.expander("Files"):
    st.dataframe([{"file": f.file, "measure": f.metric, "view": f.view,
                   "shape": f"{f.record.shape[0]} x {f.record.shape[1]}", "rows": f.record.n_rows,
                   "notes": "; ".join(f.record.notes)} for f in run.similarity_entries()], hide_index=True,
                 key="alignment_files")

st.subheader("Linear probe: the gold answer from each layer's state")
probe_missing = linear_probe_status(run)
if probe_missing is not None:
    st.info(probe_missing)
else:
    st.caption("How well a cross-validated logistic regression on each layer's state at the prompt's last token "
               "predicts the gold option, for the source, the target before and the target after transfer; computed "
               "by the run on its probe items and read from `linear_probe.parquet`.")
    studio.show_figure(studio.cached_spec("linear_probe_lines", folder), "linear-probe", height=400)
    st.dataframe(studio.cached_spec("linear_probe_summary", folder), hide_index=True, key="linear_probe_summary")
    with st.expander("Every layer"):
        st.dataframe(run.linear_probe(), hide_index=True, key="linear_probe_layers")
