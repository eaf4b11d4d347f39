"""New run: configure a transfer, hand it to the background worker, follow it stage by stage, cancel it.

The work happens in a separate worker process (``python -m pkt_core.jobs worker``), one heavy
job at a time per machine; this page only writes a request and reads status files, so it (and
every other browser tab) stays responsive, and the models live in the worker, never in the app.
The worker keeps them loaded between runs (each model once) until "Unload models" or until it has
been idle for ``$PKT_JOBS_IDLE_EXIT`` seconds; the page lists what it holds.
"""

from __future__ import annotations

import streamlit as st
import studio

from pkt_core.errors import PktError
from pkt_core.jobs import queue as job_queue
from pkt_core.jobs.progress import duration_text, stage_timing
from pkt_core.models.registry import MODELS, PAIRS

studio.page_header("New run", "Pick a pair, a method and variant, the data and a budget. The run goes to a "
                   "background worker (one heavy job at a time on this machine; others queue) and appears in "
                   "Runs when done.")


def _cached(name: str) -> bool:
    from pkt_core.models.provisioning import is_cached

    return is_cached(name)


# -- what to run ------------------------------------------------------------------------------
who = st.radio("Models", ["registered pair", "your own models"], horizontal=True, key="new_who")
if who == "registered pair":
    pair = st.selectbox("Pair", list(PAIRS), key="new_pair", format_func=lambda p: f"{p}: {PAIRS[p].notes}")
    source, target = PAIRS[pair].source, PAIRS[pair].target
else:
    pair = None
    left, right = st.columns(2)
    source = left.text_input("Source (registered name, model folder, .gguf or hub id)", key="new_source").strip()
    target = right.text_input("Target (registered name, model folder, .gguf or hub id)", key="new_target").strip()

missing = [name for name in (source, target) if name in MODELS and not _cached(name)]
if missing:
    st.warning("Not in the model cache: " + ", ".join(f"`{m}`" for m in missing)
               + ". Fetch them first (a background job with progress), or submit: the fetch is queued before the run.")
    fetch_source = st.radio("Fetch from", ["auto", "hub", "mirror"], horizontal=True, key="new_fetch_source",
                            help="auto: the hub when reachable, else the verified offline mirror")
    if st.button("Fetch " + " and ".join(missing), key="new_fetch"):
        for name in missing:
            job_queue.submit("fetch", {"name": name, "source": fetch_source})
        job_queue.ensure_worker()
        st.toast("Fetch queued")

from pkt_core.transfer.config import (  # noqa: E402
    FRONTIER_METHODS,
    LOSSES,
    MAPPINGS,
    METHOD_DEFAULTS,
    METHODS,
    VARIANTS,
)

METHOD_LABELS = {"semalign": "SemAlign", "seeking": "Seeking Neural Nuggets", "laten": "LaTen",
                 "kd": "logit distillation (control)", "finetune": "plain fine-tuning (control)"}
first, second, third = st.columns(3)
method = first.selectbox("Method", list(METHODS), key="new_method", format_func=lambda m: METHOD_LABELS.get(m, m))
if method == "semalign":
    variant = second.selectbox("Variant", list(VARIANTS), key="new_variant",
                               format_func=lambda v: f"{v}: {VARIANTS[v]['paper_version']}")
    mapping = third.selectbox("Layer map", ["(variant default)", *MAPPINGS], key="new_mapping")
else:
    variant, mapping = "", "(variant default)"
    second.caption(f"{METHOD_LABELS[method]}: {METHODS[method]['paper_version']}; one preset, "
                   f"losses {', '.join(f'{k}={w}' for k, w in METHODS[method]['losses'].items())}")
defaults = METHOD_DEFAULTS[method]

data_kind = st.radio("Data", ["task", "data file"], horizontal=True, key="new_data_kind")
if data_kind == "task":
    from pkt_core.evaluation.tasks import ALIGNMENT_TASKS

    task, data_file = (st.selectbox("Task (alignment samples from its non-evaluation split)", ALIGNMENT_TASKS,
                                    key="new_task"), None)
else:
    task, data_file = None, st.text_input("JSON lines file with prompt and answer", key="new_data_file").strip() or None

st.markdown("**Budget**")
b1, b2, b3, b4 = st.columns(4)
align_samples = b1.number_input("Alignment samples", 1, 100_000, 32, key="new_align")
probe_samples = b2.number_input("Probe prompts", 1, 10_000, 48, key="new_probes")
if method in FRONTIER_METHODS:
    steps, epochs = b3.number_input("Steps per stage", 1, 100_000, 2, key="new_steps"), None
else:
    steps, epochs = 2, b3.number_input("Epochs", 1, 10_000, int(defaults["epochs"]), key=f"new_epochs_{method}")
batch_size = b4.number_input("Batch size", 1, 4096, int(defaults["batch_size"]), key=f"new_batch_{method}")
c1, c2, c3, c4 = st.columns(4)
learning_rate = c1.number_input("Learning rate", 1e-7, 1.0, float(defaults["learning_rate"]), format="%.1e",
                                key=f"new_lr_{method}")
max_tokens = c2.number_input("Max tokens", 8, 32_768, 256, key="new_max_tokens")
if method in FRONTIER_METHODS:
    trainable = c3.selectbox("Trainable", ["block", "lora"], key="new_trainable")
    stages_text = c4.text_input("Stages (target layers)", "all", key="new_stages", help="e.g. 0-5,8 or all")
else:
    trainable, stages_text = "block", "all"
d1, d2, d3 = st.columns(3)
dtype = d1.selectbox("Precision", ["auto", "fp32", "bf16", "fp16"], key="new_dtype",
                     help="auto: bf16 autocast with fp32 master weights where the device multiplies bf16 natively "
                          "(a CUDA GPU with bf16, a CPU with AVX-512 BF16 or AMX), fp32 elsewhere; the run records "
                          "what it picked. bf16 / fp16 on a CPU without native support run about ten times slower.")
device = d2.text_input("Device", "cpu", key="new_device", help="cpu, cuda:N or auto")
seed = d3.number_input("Seed", 0, 2**31 - 1, 0, key="new_seed")
st.markdown("**Evaluation** (source, target before and target after, on the same items)")
from pkt_core.evaluation.specs import OFFERED_FORMULATIONS, specs_in_formulations
from pkt_core.evaluation.tasks import CHOICE_TASKS, EVAL_TASKS

# The subsets the shipped runs use: MMLU 5 per subject (285 items), the first 40 of the others.
DEFAULT_LIMITS = {"mmlu": 5}
e1, e2 = st.columns([3, 1])
eval_tasks = e1.multiselect("Tasks to evaluate", list(EVAL_TASKS), default=[task] if task in EVAL_TASKS else [],
                            key="new_eval_tasks",
                            help="A run without an evaluation has no before/after behaviour to show.")
first_task = eval_tasks[0] if eval_tasks else "mmlu"
eval_limit = e2.number_input("Items (MMLU: per subject)", 1, 100_000, DEFAULT_LIMITS.get(first_task, 40),
                             key="new_eval_limit")
formulations: list[str] = []
if any(name in CHOICE_TASKS for name in eval_tasks):
    formulations = st.multiselect(
        "Formulations of the choice tasks", list(OFFERED_FORMULATIONS), format_func=OFFERED_FORMULATIONS.get,
        key="new_eval_formulations",
        help="Each one is an evaluation of its own of every choice task (MMLU, ARC), for all three models, shown "
             "side by side on Benchmarks. None: each task's default (MMLU letters, ARC cloze).")
eval_specs = specs_in_formulations(eval_tasks, formulations)
if eval_specs:
    from pkt_core.evaluation.specs import parse_eval_spec
    from pkt_core.evaluation.splits import evaluation_items, limit_subset
    from pkt_core.jobs.progress import duration_text
    from pkt_core.runs.cost_estimates import estimate_evaluation

    lines = []
    for name in eval_specs:
        try:
            count = len(limit_subset(evaluation_items(parse_eval_spec(name).task), int(eval_limit)).items)
        except PktError as error:
            lines.append(f"{name}: cannot read its items ({error})")
            continue
        estimate = estimate_evaluation(studio.listings(), name, count, source, target)
        cost = (f"about {duration_text(estimate.seconds)} for the three models" if estimate.seconds is not None
                else "no estimate")
        lines.append(f"**{name}**: {count} items, {cost} ({estimate.basis})")
    st.caption("  \n".join(lines))
else:
    st.caption("No evaluation: the run will hold layer similarity and losses, but no benchmark behaviour.")
weights: dict[str, float] = {}
if method == "semalign":
    with st.expander("Loss weights (default: the variant's)"):
        st.caption("Leave all at 0 to use the variant's preset: " + ", ".join(
            f"{v}: {', '.join(f'{k}={w}' for k, w in VARIANTS[v]['losses'].items())}" for v in VARIANTS))
        weights = {name: st.number_input(name, 0.0, 100.0, 0.0, key=f"new_loss_{name}") for name in LOSSES}

if st.button("Start run" if not missing else "Fetch models, then run", type="primary", key="new_submit",
             disabled=not (source and target)):
    from pkt_core.cli.arguments import parse_layer_list

    try:
        stages = parse_layer_list(stages_text.strip() or "all")
        config = {
            "source": source, "target": target, "pair": pair, "method": method, "variant": variant, "task": task,
            "data_file": data_file, "align_samples": int(align_samples), "probe_samples": int(probe_samples),
            "steps_per_stage": int(steps), "batch_size": int(batch_size), "learning_rate": float(learning_rate),
            "max_tokens": int(max_tokens), "trainable": trainable,
            "epochs": int(epochs) if epochs is not None else None,
            "losses": {k: float(v) for k, v in weights.items() if v > 0},
            "mapping": "" if mapping == "(variant default)" else mapping,
            "stages": list(stages) if stages else None, "seed": int(seed), "dtype": dtype,
            "source_device": device, "target_device": device,
            "eval_tasks": eval_specs, "eval_limit": int(eval_limit) if eval_specs else None,
        }
        for name in missing:
            job_queue.submit("fetch", {"name": name, "source": "auto"})
        job = job_queue.submit("transfer", {"config": config})
    except PktError as error:
        st.error(f"Not submitted: {error}")
    else:
        job_queue.ensure_worker()
        st.success(f"Submitted {job.id}. {job_queue.queue_message(job)}")


# -- the queue, polled ------------------------------------------------------------------------
def _explore(folder: str) -> None:
    st.session_state[studio.CURRENT_RUN] = folder


@st.fragment(run_every=2.0)
def job_panel() -> None:
    everything = job_queue.list_jobs()
    if any(job.state == "queued" for job in everything):
        job_queue.ensure_worker()
    st.subheader("Jobs")
    if not everything:
        st.caption("No jobs yet.")
        return
    st.caption("Worker: " + ("running" if job_queue.worker_alive() else "not running (starts when a job is queued)")
               + f"; job files under `{job_queue.jobs_dir()}`.")
    loaded = job_queue.held_models()
    if loaded:
        names, action = st.columns([5, 1])
        names.caption("Loaded in the worker, kept for the next run: " + "; ".join(
            f"`{m['name']}` ({m['dtype']}, {m['device']}, {m['weight_mib']:,.0f} MiB)" for m in loaded))
        action.button("Unload models", key="unload_models", on_click=job_queue.request_unload,
                      help="free the worker's memory now (it also unloads when idle for a while)")
    for job in reversed(everything[-10:]):
        with st.container(border=True):
            head, action = st.columns([5, 1])
            head.markdown(f"**{job.title()}**  \n`{job.id}`: **{job.state}**"
                          + (" (cancel requested)" if job.cancel_requested and not job.finished else ""))
            if not job.finished:
                action.button("Cancel", key=f"cancel-{job.id}", on_click=job_queue.cancel, args=(job.id,))
            if job.state == "queued":
                st.info(job_queue.queue_message(job, everything))
            for stage in job.stages:
                total = max(1, int(stage.get("total") or 1))
                done = min(total, int(stage.get("done") or 0))
                timing = stage_timing(stage)
                text = f"{stage['label']}: {stage['state']}"
                if total > 1 or stage["state"] == "running":
                    text += f" ({done}/{total})"
                if timing.elapsed_seconds is not None:
                    text += f", {duration_text(timing.elapsed_seconds)}"
                if stage["state"] == "running":
                    text += (f", about {duration_text(timing.remaining_seconds)} left ({timing.rate_note})"
                             if timing.remaining_seconds is not None else f" ({timing.rate_note})")
                if stage.get("loss") is not None:
                    text += f", loss {stage['loss']:.4f}"
                if stage.get("detail"):
                    text += f", {stage['detail']}"
                st.progress(done / total if stage["state"] != "done" else 1.0, text=text)
                if stage["state"] == "running" and len(stage.get("losses") or []) >= 2:
                    st.line_chart({"loss": stage["losses"]}, height=140, x_label="step", y_label="loss")
            if job.state == "failed":
                st.error(job.status.get("error", "failed"))
                tail = job.log_tail()
                if tail:
                    st.code(tail, language=None)
            if job.state == "cancelled" and job.kind == "transfer":
                st.caption("The partial run is kept (`.partial`) and resumable with `pkt transfer ... --resume`.")
            if job.state == "done" and job.kind == "transfer":
                result = job.status.get("result")
                st.success(f"Run written to `{result}`; it is listed on Runs.")
                st.button("Explore it", key=f"explore-{job.id}", on_click=_explore, args=(result,))


job_panel()
