"""Layer mapping: bipartite source/target maps, source attribution, decomposition fidelity, stage losses."""

from __future__ import annotations

import streamlit as st
import studio

run = studio.require_run()
folder = str(run.folder)
studio.page_header("Layer mapping", f"Run `{run.run_id}`: which source layer supervises each target layer, why "
                   "(attribution), and how well hidden states decompose in each model's vocabulary bases.")

mappings = run.mappings
available = list(mappings.get("mappings", {}))
chosen = mappings.get("chosen")
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
aggregation = st.radio("Aggregation", ["abs", "signed"], horizontal=True, key="mapping_aggregation",
                       help="Gradient x activation on the answer tokens, summed per source layer.")
studio.show_figure(studio.cached_spec("attribution_bars", folder, aggregation), "mapping-attribution", height=340)

st.subheader("Decomposition fidelity")
fidelity = studio.cached_spec("fidelity_lines", folder)
tied = [note for note in fidelity.notes if "tied" in note]
for note in tied:
    st.warning(note)
studio.show_figure(fidelity, "mapping-fidelity", height=380, notes=False)

st.subheader("Training losses per frontier stage")
import pandas as pd  # noqa: E402

losses = pd.DataFrame(run.table("stage_losses.parquet"))
terms = ["loss"] + [c for c in losses.columns if c.startswith("loss_")]
term = st.selectbox("Loss term", terms, key="mapping_loss_term")
studio.show_figure(studio.cached_spec("stage_loss_lines", folder, term), "mapping-losses", height=340)
