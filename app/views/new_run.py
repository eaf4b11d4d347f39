"""New run: configure a transfer, hand it to the background worker, follow it stage by stage, cancel it.

The work happens in a separate worker process (``python -m pkt_core.jobs worker``), one heavy
job at a time per machine; this page only writes a request and reads status files, so it (and
every other browser tab) stays responsive, and the models live in the worker, never in the app.
"""

from __future__ import annotations

import streamlit as st

import studio
from pkt_core import jobs
from pkt_core.errors import PktError
from pkt_core.registry import MODELS, PAIRS

studio.page_header("New run", "Pick a pair, a method and variant, the data and a budget. The run goes to a "
                   "background worker (one heavy job at a time on this machine; others queue) and appears in "
                   "Runs when done.")


def _cached(name: str) -> bool:
    from pkt_core.provisioning import is_cached

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
            jobs.submit("fetch", {"name": name, "source": fetch_source})
        jobs.ensure_worker()
        st.toast("Fetch queued")

from pkt_core.transfer.config import LOSSES, MAPPINGS, VARIANTS  # noqa: E402

first, second, third = st.columns(3)
method = first.selectbox("Method", ["semalign"], key="new_method")
variant = second.selectbox("Variant", list(VARIANTS), key="new_variant",
                           format_func=lambda v: f"{v}: {VARIANTS[v]['paper_version']}")
mapping = third.selectbox("Layer map", ["(variant default)", *MAPPINGS], key="new_mapping")

data_kind = st.radio("Data", ["task", "data file"], horizontal=True, key="new_data_kind")
if data_kind == "task":
    from pkt_core.evaluation.tasks import TASKS

    task, data_file = st.selectbox("Task (alignment samples from its non-evaluation split)", TASKS, key="new_task"), None
else:
    task, data_file = None, st.text_input("JSON lines file with prompt and answer", key="new_data_file").strip() or None

st.markdown("**Budget**")
b1, b2, b3, b4 = st.columns(4)
align_samples = b1.number_input("Alignment samples", 1, 100_000, 32, key="new_align")
probe_samples = b2.number_input("Probe prompts", 1, 10_000, 48, key="new_probes")
steps = b3.number_input("Steps per stage", 1, 100_000, 2, key="new_steps")
batch_size = b4.number_input("Batch size", 1, 4096, 8, key="new_batch")
c1, c2, c3, c4 = st.columns(4)
learning_rate = c1.number_input("Learning rate", 1e-7, 1.0, 1e-4, format="%.1e", key="new_lr")
max_tokens = c2.number_input("Max tokens", 8, 32_768, 256, key="new_max_tokens")
trainable = c3.selectbox("Trainable", ["block", "lora"], key="new_trainable")
stages_text = c4.text_input("Stages (target layers)", "all", key="new_stages", help="e.g. 0-5,8 or all")
d1, d2, d3 = st.columns(3)
dtype = d1.selectbox("dtype", ["fp32", "bf16", "fp16"], key="new_dtype")
device = d2.text_input("Device", "cpu", key="new_device", help="cpu, cuda:N or auto")
seed = d3.number_input("Seed", 0, 2**31 - 1, 0, key="new_seed")
with st.expander("Loss weights (default: the variant's)"):
    st.caption("Leave all at 0 to use the variant's preset: " + ", ".join(
        f"{v}: {', '.join(f'{k}={w}' for k, w in VARIANTS[v]['losses'].items())}" for v in VARIANTS))
    weights = {name: st.number_input(name, 0.0, 100.0, 0.0, key=f"new_loss_{name}") for name in LOSSES}

if st.button("Start run" if not missing else "Fetch models, then run", type="primary", key="new_submit",
             disabled=not (source and target)):
    from pkt_core.cli import parse_layer_list

    try:
        stages = parse_layer_list(stages_text.strip() or "all")
        config = {
            "source": source, "target": target, "pair": pair, "method": method, "variant": variant, "task": task,
            "data_file": data_file, "align_samples": int(align_samples), "probe_samples": int(probe_samples),
            "steps_per_stage": int(steps), "batch_size": int(batch_size), "learning_rate": float(learning_rate),
            "max_tokens": int(max_tokens), "trainable": trainable,
            "losses": {k: float(v) for k, v in weights.items() if v > 0},
            "mapping": "" if mapping == "(variant default)" else mapping,
            "stages": list(stages) if stages else None, "seed": int(seed), "dtype": dtype,
            "source_device": device, "target_device": device,
        }
        for name in missing:
            jobs.submit("fetch", {"name": name, "source": "auto"})
        job = jobs.submit("transfer", {"config": config})
    except PktError as error:
        st.error(f"Not submitted: {error}")
    else:
        jobs.ensure_worker()
        st.success(f"Submitted {job.id}. {jobs.queue_message(job)}")


# -- the queue, polled ------------------------------------------------------------------------
def _explore(folder: str) -> None:
    st.session_state[studio.CURRENT_RUN] = folder


@st.fragment(run_every=2.0)
def job_panel() -> None:
    everything = jobs.list_jobs()
    if any(job.state == "queued" for job in everything):
        jobs.ensure_worker()
    st.subheader("Jobs")
    if not everything:
        st.caption("No jobs yet.")
        return
    st.caption("Worker: " + ("working" if jobs.worker_alive() else "idle (starts when a job is queued)")
               + f"; job files under `{jobs.jobs_dir()}`.")
    for job in reversed(everything[-10:]):
        with st.container(border=True):
            head, action = st.columns([5, 1])
            head.markdown(f"**{job.title()}**  \n`{job.id}`: **{job.state}**"
                          + (" (cancel requested)" if job.cancel_requested and not job.finished else ""))
            if not job.finished:
                action.button("Cancel", key=f"cancel-{job.id}", on_click=jobs.cancel, args=(job.id,))
            if job.state == "queued":
                st.info(jobs.queue_message(job, everything))
            for stage in job.stages:
                total = max(1, int(stage.get("total") or 1))
                done = min(total, int(stage.get("done") or 0))
                text = f"{stage['label']}: {stage['state']}"
                if total > 1 or stage["state"] == "running":
                    text += f" ({done}/{total})"
                if stage.get("loss") is not None:
                    text += f", loss {stage['loss']:.4f}"
                if stage.get("detail"):
                    text += f", {stage['detail']}"
                st.progress(done / total if stage["state"] != "done" else 1.0, text=text)
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
