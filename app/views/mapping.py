"""Layer mapping: which source layer supervises which target layer, and why: SemAlign's maps,
attribution and fidelity, or a peer's own location results; and the training losses."""

from __future__ import annotations

import streamlit as st
import studio

# The peers' own location results: what the page says, the figure, and the table behind it.
PEER_LOCATIONS = {
    "seeking": (("Seeking Neural Nuggets computes no SemAlign layer map: it ranks source layers by parametric "
                 "sensitivity, extracts sub-blocks of the selected ones and injects them into the paired target "
                 "layers."), "seeking_sensitivity_bars", "seeking_extraction.parquet", "Extracted sub-blocks"),
    "laten": (("LaTen computes no SemAlign layer map: it locates the sublayers whose logit-lens gain is largest in "
               "each model, pairs them by rank and trains a hypernetwork per pair on the located neurons."),
              "laten_location_bars", "laten_neurons.parquet", "Located neurons"),
}

run = studio.require_run()
folder = str(run.folder)
method = run.manifest.method
studio.page_header("Layer mapping", f"Run `{run.run_id}`: which source layer supervises each target layer and why, "
                   "and how the training losses fell.")

if run.layer_maps is not None:
    maps = run.layer_maps
    available, chosen = list(maps.mappings), maps.chosen
    default = [m for m in ("depth", chosen) if m in available]
    shown = st.multiselect("Layer maps", available, default=list(dict.fromkeys(default)), key="mapping_maps",
                           help="The depth map (v1), the map the run trained with, and the other maps it computed.")
    trained = st.toggle("Draw the trained pairs", value=True, key="mapping_trained")
    if shown or trained:
        spec = studio.cached_spec("mapping_bipartite", folder, shown, trained)
        studio.show_figure(spec, "mapping-bipartite", height=520)
        with st.expander("Map tables"):
            st.dataframe(spec.data, hide_index=True, key="mapping_table")
    else:
        st.info("Pick at least one layer map.")

    st.subheader("Source attribution")
    if run.has("attribution.parquet"):
        aggregation = st.radio("Aggregation", ["abs", "signed"], horizontal=True, key="mapping_aggregation",
                               help="Gradient x activation on the answer tokens, summed per source layer.")
        studio.show_figure(studio.cached_spec("attribution_bars", folder, aggregation), "mapping-attribution",
                           height=340)
    else:
        st.info("This run holds no attribution table.")

    st.subheader("Decomposition fidelity")
    if run.has("fidelity.parquet"):
        fidelity = studio.cached_spec("fidelity_lines", folder)
        for note in fidelity.notes:
            if "tied" in note:
                st.warning(note)
            else:  # e.g. the sample the table was computed on
                st.caption(note)
        studio.show_figure(fidelity, "mapping-fidelity", height=380, notes=False)
    else:
        st.info("This run was made without the decomposition-fidelity stage (`--no-fidelity`).")
elif method in PEER_LOCATIONS:
    intro, builder, table_file, table_title = PEER_LOCATIONS[method]
    st.info(intro)
    studio.show_figure(studio.cached_spec("peer_pairing_bipartite", folder), "mapping-peer-pairing", height=460)
    studio.show_figure(studio.cached_spec(builder, folder), f"mapping-{method}", height=360)
    if run.has(table_file):
        with st.expander(table_title):
            st.dataframe(run.table_frame(table_file), hide_index=True, key=f"{method}_location_table")
else:
    st.info(f"{method} trains every target layer against the source's answer distribution (or the answers "
            "themselves): it pairs no layers, so it has no layer map, attribution or location results.")

st.subheader("Training losses")
if run.has("stage_losses.parquet"):
    studio.show_figure(studio.cached_spec("stage_loss_lines", folder), "mapping-losses", height=360)
else:
    st.info("This run recorded no training losses.")
