"""Runs: every run as a sortable table; broken ones with the reason; pick one to explore, two to compare."""

from __future__ import annotations

import streamlit as st
import studio

from pkt_core.figures.runs_page import runs_table

st.title("PKT Studio")
studio.page_header("Runs", "Every run in " + ", ".join(f"`{root}`" for root in studio.run_roots())
                   + ". Click a column to sort; pick a run to explore, or two to compare.")

listings = studio.listings()
if not listings:
    st.info("No runs yet. Runs appear here when `pkt transfer` (or **New run**) writes them, and the repository "
            "ships real runs in `cached_runs/` once they have been computed.")
    st.stop()

table = runs_table(listings)
complete = table[table["problem"] == ""].drop(columns=["problem"])
broken = table[table["problem"] != ""][["run_id", "status", "problem", "folder"]]

if not complete.empty:
    st.dataframe(
        complete, hide_index=True, key="runs_table",
        column_config={
            "gain": st.column_config.NumberColumn("gain", help="target after - before, primary metric of the "
                                                  "first evaluation the run asked for (named in 'gain of')",
                                                  format="%+.3f"),
            "gain_of": st.column_config.TextColumn("gain of", help="the evaluation and metric the gain shows"),
            "shift": st.column_config.NumberColumn(
                "shift", format="%+.3f", help="the continuous measure of the same evaluation, paired item by item: "
                "after - before of the gold option's probability mass (choice tasks) or the gold answer's log-prob. "
                "An accuracy gain with no shift here is the letter prior moving, not knowledge"),
            "gap_closed": st.column_config.NumberColumn(
                "gap closed", format="%.2f", help="share of the source - target gap on that measure the transfer "
                "closed: (after - before) / (source - before)"),
            "shift_of": st.column_config.TextColumn("shift of", help="the measure and its 95% bootstrap interval"),
            "gains": st.column_config.TextColumn("gains (mean [95% interval])", width="large"),
            "wall_s": st.column_config.NumberColumn("wall (s)", format="%.0f"),
            "peak_rss_mib": st.column_config.NumberColumn("peak RAM (MiB)", format="%.0f"),
            "peak_gpu_mib": st.column_config.NumberColumn("peak GPU (MiB)", format="%.0f"),
            "trainable_params": st.column_config.NumberColumn("trainable params", format="%d"),
            "folder": st.column_config.TextColumn("folder", width="small"),
        },
    )
else:
    st.info("No complete run yet.")
if not broken.empty:
    st.warning(f"{len(broken)} run folder(s) are incomplete or unreadable and are not shown as results.")
    st.dataframe(broken, hide_index=True, key="broken_runs")

if complete.empty:
    st.stop()

folders = list(complete["folder"])
labels = dict(zip(complete["folder"], complete["run_id"]))


def _explore(folder: str) -> None:
    st.session_state[studio.CURRENT_RUN] = folder


left, right = st.columns(2)
with left:
    st.subheader("Explore")
    current = st.session_state.get(studio.CURRENT_RUN)
    if current in folders and st.session_state.get("_explore_follows") != current:
        # The picker follows the run chosen in the sidebar (until the user picks another here).
        st.session_state["explore_pick"] = current
        st.session_state["_explore_follows"] = current
    chosen = st.selectbox("Run to explore", folders, format_func=labels.get, key="explore_pick")
    from pkt_core.figures.runs_page import gain_lines

    chosen_manifest = studio.open_current(chosen).manifest
    for line in gain_lines(chosen_manifest):
        st.caption(f"{chosen_manifest.run_id}: {line}")
    if st.button("Explore this run", key="explore_button", on_click=_explore, args=(chosen,), type="primary"):
        st.switch_page("views/alignment.py")
with right:
    st.subheader("Compare")
    pair = st.multiselect("Two runs to compare", folders, format_func=labels.get, max_selections=2,
                          key=studio.COMPARE_RUNS)

if len(pair) == 2:
    import pandas as pd

    from pkt_core.figures.runs_page import run_gains
    from pkt_core.figures.spec import FigureSpec

    st.subheader("Comparison")
    runs = [studio.open_current(folder) for folder in pair]
    fields = [("pair", lambda m: m.pair or f"{m.source.name} -> {m.target.name}"),
              ("method", lambda m: m.method), ("variant", lambda m: m.variant),
              ("paper version", lambda m: m.paper_version), ("task", lambda m: m.task),
              ("layer map", lambda m: m.mapping.chosen if m.mapping else "none (the method pairs no SemAlign map)"),
              ("losses", lambda m: ", ".join(f"{k}={v.weight}" for k, v in m.losses.items())),
              ("steps per stage", lambda m: m.config.get("steps_per_stage")),
              ("alignment samples", lambda m: len(m.data.alignment_ids)),
              ("wall seconds", lambda m: m.wall_seconds),
              ("trainable parameters", lambda m: m.trainable_parameters),
              ("code revision", lambda m: (m.provenance.code.git_commit or m.provenance.code.package_version)[:12])]
    rows = [{"": name, **{run.run_id: str(read(run.manifest)) for run in runs}} for name, read in fields]
    for run in runs:
        for gain in run_gains(run.manifest):
            label = f"{gain.task} {gain.metric} after - before"
            existing = next((row for row in rows if row[""] == label), None)
            if existing is None:
                existing = {"": label, **{r.run_id: "-" for r in runs}}
                rows.append(existing)
            existing[run.run_id] = "-" if gain.gain is None else f"{gain.gain:+.3f}"
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="compare_table")
    # Linear CKA at the mapped source layer after transfer, per target layer, for both runs.
    frames = []
    for folder, run in zip(pair, runs):
        try:
            profile = studio.cached_spec("alignment_profiles", folder, "linear_cka")
        except Exception as error:  # noqa: BLE001 - a run without the matrices is said so, not fatal
            st.caption(f"{run.run_id}: no linear CKA profile ({error})")
            continue
        part = profile.data[profile.data["series"] == "after: at mapped source layer"][["target_layer", "value"]]
        frames.append(part.assign(series=run.run_id))
    if frames:
        data = pd.concat(frames, ignore_index=True)
        spec = FigureSpec("compare-mapped-cka", "lines", "linear CKA at the mapped source layer, after transfer",
                          data, {"run_id": " vs ".join(r.run_id for r in runs), "measure": "linear_cka",
                                 "runs": [r.run_id for r in runs]},
                          {"x": "target_layer", "y": "value", "series": "series", "x_label": "target layer",
                           "y_label": "linear CKA"})
        studio.show_figure(spec, "compare-profile")
