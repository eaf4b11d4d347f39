"""Benchmarks: source / target before / target after per task with intervals, per subject, item flips."""

from __future__ import annotations

import streamlit as st
import studio

run = studio.require_run()
folder = str(run.folder)
studio.page_header("Benchmarks", f"Run `{run.run_id}`: the source, the target before and the target after "
                   "transfer, scored on the same items.")

summary = studio.cached_spec("benchmark_summary", folder)
if summary.empty:
    st.info(f"Run {run.run_id} holds no evaluation: no `evaluation/<task>/<role>/` folders and no `evaluation` in "
            "its manifest. Score the models with `pkt eval` and store the results with the run.")
    st.stop()

tasks = sorted(summary["task"].unique())
task = st.selectbox("Task", tasks, key="benchmarks_task")
part = summary[summary["task"] == task]
metrics = list(dict.fromkeys(part["metric"]))
from pkt_core.figures.runs_page import PRIMARY_METRICS  # noqa: E402

default = PRIMARY_METRICS.get(task) if PRIMARY_METRICS.get(task) in metrics else metrics[0]
metric = st.selectbox("Metric", metrics, index=metrics.index(default), key="benchmarks_metric")

columns = st.columns(3)
values = {row.role: row for row in part[part["metric"] == metric].itertuples()}
for column, role in zip(columns, ("source", "target_before", "target_after")):
    row = values.get(role)
    if row is None:
        column.metric(role.replace("_", " "), "not evaluated")
        continue
    delta = None
    if role == "target_after" and "target_before" in values:
        delta = f"{row.mean - values['target_before'].mean:+.3f} vs before"
    interval = "" if row.low != row.low or row.low is None else f"95% interval [{row.low:.3f}, {row.high:.3f}]"
    column.metric(role.replace("_", " "), f"{row.mean:.3f}", delta=delta, help=interval or None)
    if interval:
        column.caption(interval)

studio.show_figure(studio.cached_spec("benchmark_bars", folder, task, metric), "benchmarks-bars", height=360)

if task not in run.evaluated_tasks():
    st.caption("Only the manifest's summary is stored for this task: per-subject and per-item views need the "
               "evaluation folders.")
    st.stop()

from pkt_core.figures.benchmarks_page import CHOICE_OPTIONS  # noqa: E402

st.subheader("Continuous measures: how far the gold answer moved")
continuous = studio.cached_spec("continuous_measures", folder, task)
if continuous.empty:
    st.info("These evaluations hold no per-item gold-answer probabilities (they were scored before the "
            "evaluation recorded them); re-score with `pkt eval` to see a transfer's effect long before "
            "accuracy moves.")
else:
    st.dataframe(continuous, hide_index=True, key="benchmarks_continuous")
    st.caption("Paired over the same items, bootstrap 95% intervals; gap closed = (after - before) / "
               "(source - before), with a joint bootstrap of the three models.")
    moved = studio.cached_spec("items_by_gold_change", folder, task)
    if not moved.empty:
        with st.expander("Items by the change of the gold answer's log-probability (target before -> after)"):
            st.dataframe(moved, hide_index=True, key="benchmarks_gold_change")

if task in CHOICE_OPTIONS:
    st.subheader("Answer format: which option each model picks")
    letters = studio.cached_spec("letter_distribution_bars", folder, task)
    for note in letters.notes:
        (st.warning if "dominated" in note or "at chance" in note else st.caption)(note)
    studio.show_figure(letters, "benchmarks-letters", height=340, notes=False)
    st.caption("A model that answers one letter for most items scores the share of that letter among the gold "
               "answers: a change of its accuracy can be its letter prior moving, not knowledge.")

if task == "mmlu":
    st.subheader("Per subject")
    table = studio.cached_spec("per_subject", folder, task)
    if not table.empty:
        subjects = sorted(table["subject"].unique())
        wide = table.pivot_table(index="subject", columns="role", values="acc")
        if {"target_before", "target_after"} <= set(wide.columns):
            wide["after - before"] = wide["target_after"] - wide["target_before"]
        st.dataframe(wide.reset_index(), hide_index=True, key="benchmarks_subjects_table")
        picked = st.multiselect("Subjects to draw", subjects, default=subjects[: min(12, len(subjects))],
                                key="benchmarks_subjects")
        if picked:
            studio.show_figure(studio.cached_spec("per_subject_bars", folder, task, "acc", picked),
                               "benchmarks-subjects", height=420)

st.subheader("Paired items: target before -> after")
try:
    comparison, items = studio.cached_spec("paired_items", folder, task)
except Exception as error:  # noqa: BLE001 - say why the paired view is missing
    st.info(f"No paired view: {error}")
    st.stop()
a, b, c, d = st.columns(4)
a.metric("gained (wrong -> right)", comparison.wrong_to_right)
b.metric("lost (right -> wrong)", comparison.right_to_wrong)
c.metric("McNemar p", f"{comparison.mcnemar_p:.3g}")
d.metric("after - before", f"{comparison.difference.mean:+.3f}",
         help=f"paired bootstrap 95% interval [{comparison.difference.low:+.3f}, {comparison.difference.high:+.3f}]")
st.caption(f"{comparison.n} paired items; paired bootstrap 95% interval of the difference "
           f"[{comparison.difference.low:+.3f}, {comparison.difference.high:+.3f}].")
show = st.radio("Items", ["gained", "lost", "both right", "both wrong", "all"], horizontal=True,
                key="benchmarks_flip")
shown = items if show == "all" else items[items["flip"] == show]
answer_columns = [c for c in items.columns if c.startswith(("prediction_", "outcome_"))]
st.dataframe(shown[["item_id", "subject", "flip", "gold", *answer_columns]], hide_index=True,
             key="benchmarks_items")
if not shown.empty:
    item_id = st.selectbox("Item", list(shown["item_id"]), key="benchmarks_item")
    item = shown[shown["item_id"] == item_id].iloc[0]
    st.markdown(f"**Gold:** `{item['gold']}`")
    for role in ("source", "target_before", "target_after"):
        if f"prediction_{role}" in item and item[f"prediction_{role}"] == item[f"prediction_{role}"]:
            st.markdown(f"**{role.replace('_', ' ')}:** {item.get(f'outcome_{role}', '')}")
            st.code(str(item[f"prediction_{role}"]), language=None)
    with st.expander("Prompt"):
        st.code(item["prompt"], language=None)
