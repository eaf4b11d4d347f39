"""Benchmarks: source / target before / target after per task with intervals, per subject, item flips.

A run may hold several evaluations of one task (letters, cloze, CircularEval): a formulation picker
chooses one (default: the first the run asked for) and everything below shows that evaluation.
"""

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

from pkt_core.figures.benchmarks_page import default_metric



def _metric_follows_the_evaluation() -> None:
    # Another task or formulation is read by its own metric (cloze: acc_norm), not the one picked before.
    st.session_state.pop("benchmarks_metric", None)


choices = studio.cached_spec("evaluation_choices", folder)
task = st.selectbox("Task", list(choices), key="benchmarks_task", on_change=_metric_follows_the_evaluation)
offered = {choice.key: choice for choice in choices[task]}
if len(offered) > 1:
    key = st.radio("Formulation", list(offered), format_func=lambda k: offered[k].title, horizontal=True,
                   key="benchmarks_formulation", on_change=_metric_follows_the_evaluation,
                   help="How the items were asked: letters = the options shown as A, B, .. and the letter scored; "
                        "cloze = each answer text scored as the continuation (per character); CircularEval = "
                        "letters, right only under every rotation of the options. The run scored each one for all "
                        "three models.")
else:
    key = next(iter(offered))
    if offered[key].formulation:
        st.caption(f"Formulation: {offered[key].title}.")
choice = offered[key]
part = summary[summary["evaluation"] == key]
metrics = list(dict.fromkeys(part["metric"]))
default = default_metric(choice, metrics)
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

studio.show_figure(studio.cached_spec("benchmark_bars", folder, key, metric), "benchmarks-bars", height=360)

if key not in run.evaluated_tasks():
    st.caption("Only the manifest's summary is stored for this task: per-subject and per-item views need the "
               "evaluation folders.")
    st.stop()

from pkt_core.evaluation.tasks import CHOICE_TASKS
from pkt_core.figures.spec import FigureError

st.subheader("Continuous measures: how far the gold answer moved")
continuous = studio.cached_spec("continuous_measures", folder, key)
if continuous.empty:
    st.info("These evaluations hold no per-item gold-answer probabilities (they were scored before the "
            "evaluation recorded them); re-score with `pkt eval` to see a transfer's effect long before "
            "accuracy moves.")
else:
    st.dataframe(continuous, hide_index=True, key="benchmarks_continuous")
    st.caption("Paired over the same items, bootstrap 95% intervals; gap closed = (after - before) / "
               "(source - before), with a joint bootstrap of the three models.")
    moved = studio.cached_spec("items_by_gold_change", folder, key)
    if not moved.empty:
        with st.expander("Items by the change of the gold answer's log-probability (target before -> after)"):
            st.dataframe(moved, hide_index=True, key="benchmarks_gold_change")

if task in CHOICE_TASKS:
    st.subheader("Answer format: which option each model picks")
    try:
        letters = studio.cached_spec("letter_distribution_bars", folder, key)
    except FigureError as error:
        st.info(f"No answer-format panel: {error}")
    else:
        for note in letters.notes:
            (st.warning if "dominated" in note or "at chance" in note else st.caption)(note)
        studio.show_figure(letters, "benchmarks-letters", height=340, notes=False)
        st.caption("A model that answers one letter for most items scores the share of that letter among the gold "
                   "answers: a change of its accuracy can be its letter prior moving, not knowledge.")
        calibrated = studio.cached_spec("calibrated_accuracy", folder, key)
        if not calibrated.empty:
            st.dataframe(calibrated, hide_index=True, key="benchmarks_calibrated",
                         column_config={name: st.column_config.NumberColumn(name, format="%.3f")
                                        for name in ("letter accuracy", "calibrated accuracy")})
            st.caption("Calibrated accuracy: each model's own letter prior removed without labels (Batch "
                       "Calibration, Zhou et al. 2024: its mean option probability over these items divided out). "
                       "A gain that vanishes here was the prior moving; one that stays is in the answers' content.")

if task == "mmlu":
    st.subheader("Per subject")
    table = studio.cached_spec("per_subject", folder, key)
    if not table.empty:
        subjects = sorted(table["subject"].unique())
        # Per subject the summaries keep acc and acc_norm: the cloze formulation is read by acc_norm.
        subject_metric = "acc_norm" if default == "acc_norm" and "acc_norm" in table else "acc"
        st.caption(f"Per-subject {subject_metric}.")
        wide = table.pivot_table(index="subject", columns="role", values=subject_metric)
        # Columns in the order the page names the models everywhere else (pivot_table sorts them by name).
        wide = wide[[role for role in ("source", "target_before", "target_after") if role in wide.columns]]
        if {"target_before", "target_after"} <= set(wide.columns):
            wide["after - before"] = wide["target_after"] - wide["target_before"]
        st.dataframe(wide.reset_index(), hide_index=True, key="benchmarks_subjects_table")
        picked = st.multiselect("Subjects to draw", subjects, default=subjects[: min(12, len(subjects))],
                                key="benchmarks_subjects")
        if picked:
            studio.show_figure(studio.cached_spec("per_subject_bars", folder, key, subject_metric, picked),
                               "benchmarks-subjects", height=420)

st.subheader("Paired items: target before -> after")
try:
    comparison, items = studio.cached_spec("paired_items", folder, key)
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
    if task in ("humaneval", "mbpp"):
        # A code item's gold is its test program: a completion is right when these tests pass.
        st.markdown("**Tests** (the item's gold: a completion passes when they run without error):")
        st.code(str(item["gold"]), language="python")
    else:
        st.markdown(f"**Gold:** `{item['gold']}`")
    for role in ("source", "target_before", "target_after"):
        if f"prediction_{role}" in item and item[f"prediction_{role}"] == item[f"prediction_{role}"]:
            st.markdown(f"**{role.replace('_', ' ')}:** {item.get(f'outcome_{role}', '')}")
            st.code(str(item[f"prediction_{role}"]), language=None)
    with st.expander("Prompt"):
        st.code(item["prompt"], language=None)
