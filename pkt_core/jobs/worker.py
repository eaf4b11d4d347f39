"""The job worker: takes queued jobs oldest first and runs them in its own process, keeping models
loaded between jobs (``python -m pkt_core.jobs worker``). See :mod:`pkt_core.jobs.queue` for the queue."""

from __future__ import annotations

import argparse
import fcntl
import gc
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pkt_core.jobs.queue import (
    CANCEL,
    DEFAULT_IDLE_EXIT_SECONDS,
    LOCK,
    LOG,
    STATUS,
    UNLOAD,
    WORKER_RECORD,
    Job,
    JobCancelled,
    JobError,
    _now,
    _write_json,
    cancel,
    held_models,
    jobs_dir,
    list_jobs,
    request_unload,
)

if TYPE_CHECKING:
    from pkt_core.models.pool import ModelPool
    from pkt_core.transfer.config import TransferConfig


def run_worker(idle_exit: float = DEFAULT_IDLE_EXIT_SECONDS, poll_seconds: float = 0.5,
               pool: "ModelPool | None" = None) -> int:
    """Work through the queue, keeping models loaded between jobs; exit after ``idle_exit`` seconds
    without a queued job.

    Returns the number of jobs run. A second worker finds the lock taken and returns 0 at once.
    """
    from pkt_core.models.pool import ModelPool

    jobs_dir().mkdir(parents=True, exist_ok=True)
    handle = open(jobs_dir() / LOCK, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return 0
    pool = pool if pool is not None else ModelPool()
    ran = 0
    record = {"pid": os.getpid(), "started_at": _now()}
    try:
        _write_worker_record(record, pool)
        idle_since = time.monotonic()
        while True:
            if (jobs_dir() / UNLOAD).exists():
                record["last_unload"] = {"at": _now(), "models": pool.unload()}
                (jobs_dir() / UNLOAD).unlink(missing_ok=True)
                _write_worker_record(record, pool)
            queued = [job for job in list_jobs() if job.state == "queued"]
            if queued:
                _write_worker_record({**record, "job": queued[0].id}, pool)
                run_job(queued[0], pool)
                record["evicted_after_last_job"] = pool.after_job()
                _write_worker_record(record, pool)
                ran += 1
                idle_since = time.monotonic()
                continue
            if time.monotonic() - idle_since >= idle_exit:
                break
            time.sleep(poll_seconds)
    finally:
        pool.unload()
        _write_worker_record({**record, "ended_at": _now()}, pool)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
    # A job queued between the last look and the unlock would wait for nobody: look once more.
    if any(job.state == "queued" for job in list_jobs()):
        ran += run_worker(idle_exit, poll_seconds, pool)
    return ran


def _write_worker_record(record: dict, pool: "ModelPool") -> None:
    _write_json(jobs_dir() / WORKER_RECORD, {**record, "models": pool.held(), "updated_at": _now()})


LOSS_HISTORY = 500


class _Reporter:
    """Writes a job's status file: planned stages with done / total, throttled for fast steps."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.status = {**job.status, "state": "running", "pid": os.getpid(), "started_at": _now(),
                       "message": "starting", "stages": []}
        self.last_write = 0.0
        self.flush(force=True)

    def plan(self, stages: list[tuple[str, str, int]]) -> None:
        known = {s["name"]: s for s in self.status["stages"]}
        self.status["stages"] = [known.get(name) or {"name": name, "label": label, "done": 0, "total": total,
                                                     "state": "waiting"} for name, label, total in stages]
        self.flush(force=True)

    def _stage(self, name: str) -> dict:
        for stage in self.status["stages"]:
            if stage["name"] == name:
                return stage
        stage = {"name": name, "label": name, "done": 0, "total": 1, "state": "waiting"}
        self.status["stages"].append(stage)
        return stage

    def start(self, name: str) -> None:
        """``name`` begins: every earlier stage that was running is done."""
        names = [s["name"] for s in self.status["stages"]]
        index = names.index(name) if name in names else len(names)
        now = time.time()
        for stage in self.status["stages"][:index]:
            if stage["state"] == "running":
                stage.update(state="done", done=stage["total"], ended=now)
        stage = self._stage(name)
        stage["state"] = "running"
        stage.setdefault("started", now)  # wall-clock seconds: elapsed and the estimate of what is left
        self.status["message"] = f"running {stage['label']}"
        self.flush(force=True)

    def step(self, name: str, done: int, total: int | None = None, loss: float | None = None,
             detail: str | None = None) -> None:
        stage = self._stage(name)
        if stage["state"] != "running":
            self.start(name)
            stage = self._stage(name)
        stage["done"] = done
        stage["step_at"] = time.time()
        if total is not None:
            stage["total"] = total
        if loss is not None:
            stage["loss"] = loss
            # The loss curve the page draws while the stage runs (bounded: the last LOSS_HISTORY steps).
            stage["losses"] = (stage.get("losses") or [])[-(LOSS_HISTORY - 1):] + [loss]
        if detail is not None:
            stage["detail"] = detail
        self.flush()

    def finish_all(self) -> None:
        now = time.time()
        for stage in self.status["stages"]:
            if stage["state"] in ("running", "waiting"):
                stage.update(state="done", done=stage["total"], ended=now)

    def end(self, state: str, **fields) -> None:
        for stage in self.status["stages"]:
            if stage["state"] == "running":
                stage["state"] = "stopped"
        self.status.update(state=state, ended_at=_now(), **fields)
        self.flush(force=True)

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_write >= 0.25:
            self.status["updated_at"] = _now()
            _write_json(self.job.folder / STATUS, self.status)
            self.last_write = now


def run_job(job: Job, pool: "ModelPool | None" = None) -> Job:
    """Run one queued job in this process and record how it ended (models from ``pool`` when given)."""
    if job.cancel_requested:
        job.status = {**job.status, "state": "cancelled", "message": "cancelled before it started", "ended_at": _now()}
        _write_json(job.folder / STATUS, job.status)
        return job
    reporter = _Reporter(job)
    log = open(job.folder / LOG, "a")

    def say(text: str) -> None:
        log.write(f"{_now()} {text}\n")
        log.flush()

    def should_cancel() -> bool:
        return (job.folder / CANCEL).exists()

    say(f"job {job.id} ({job.kind}) started by worker pid {os.getpid()}")
    try:
        if job.kind == "transfer":
            result = _run_transfer(job, reporter, should_cancel, say, pool)
        elif job.kind == "fetch":
            result = _run_fetch(job, reporter, should_cancel, say)
        else:
            raise JobError(f"unknown job kind {job.kind!r}")
    except BaseException as error:  # noqa: BLE001 - every ending is recorded, then re-raised if fatal
        from pkt_core.transfer.stages import TransferCancelled

        cancelled = isinstance(error, (JobCancelled, TransferCancelled)) or should_cancel()
        say(("cancelled: " if cancelled else "failed: ") + f"{type(error).__name__}: {error}")
        if not cancelled:
            say(traceback.format_exc())
        reporter.end("cancelled" if cancelled else "failed", error=f"{type(error).__name__}: {error}",
                     message="cancelled" if cancelled else "failed")
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
    else:
        reporter.finish_all()
        reporter.end("done", result=result, message=f"done: {result}")
        say(f"done: {result}")
    finally:
        log.close()
        gc.collect()
    job.status = reporter.status
    return job


def transfer_plan(config: "TransferConfig", num_target_layers: int, alignment_samples: int | None = None
                  ) -> list[tuple[str, str, int]]:
    """(name, label, total steps) of every stage :func:`~pkt_core.transfer.pipeline.run_transfer`
    reports for ``config.method``, in the order it runs them."""
    from pkt_core.evaluation.settings import EvalSettings
    from pkt_core.evaluation.specs import parse_eval_specs
    from pkt_core.peers.training import minibatch_order
    from pkt_core.transfer.config import FRONTIER_METHODS

    plan: list[tuple[str, str, int]] = []
    if config.method == "semalign":
        plan.append(("bases", "semantic bases and cross-model map", 1))
    plan.append(("probe_before", "probe activations (before)", 1))
    if config.fidelity:
        plan.append(("fidelity", "decomposition fidelity", 1))
    plan.append(("similarity_before", "layer CKA / CCA (before)", 1))
    run_wide = EvalSettings.from_dict(config.eval_settings)
    evaluations = [(spec.key, spec.title(run_wide)) for spec in parse_eval_specs(config.eval_tasks, run_wide)]
    for key, title in evaluations:
        plan += [(f"eval-{key}-source", f"evaluate the source on {title}", 1),
                 (f"eval-{key}-target_before", f"evaluate the target (before) on {title}", 1)]
    if config.method == "semalign":
        plan += [("attribution", "source attribution", 1), ("supervision", "source supervision", 1)]
    elif config.method == "kd":
        plan.append(("source_logits", "source answer distributions", 1))
    if config.method in FRONTIER_METHODS:
        trained = sorted(config.stages) if config.stages is not None else range(num_target_layers)
        plan += [(f"stage-{k:03d}", f"frontier stage: target layer {k}", config.steps_per_stage) for k in trained]
    else:
        steps = len(minibatch_order(alignment_samples or config.align_samples, config.batch_size, config.epochs or 1, 0))
        if config.method == "seeking":
            plan += [("extraction", "sensitivity and sub-block extraction from the source", 1),
                     ("training", "LoRA fine-tuning from the extracted knowledge", steps)]
        elif config.method == "laten":
            plan += [("location", "logit-lens attribution and neuron pairing", 1),
                     ("hypernetworks", "hypernetwork training", steps)]
    plan.append(("probe_after", "probe activations and CKA (after)", 1))
    plan += [(f"eval-{key}-target_after", f"evaluate the target (after) on {title}", 1) for key, title in evaluations]
    return plan


# Progress labels of whole-model training loops -> the stage they belong to.
_TRAINING_LABELS = {"seeking": "training", "laten": "hypernetworks"}


def _run_transfer(job: Job, reporter: _Reporter, should_cancel: Callable[[], bool], say,
                  pool: "ModelPool | None" = None) -> str:
    from pkt_core.models.loading import load_model
    from pkt_core.transfer.config import TransferConfig
    from pkt_core.transfer.pipeline import default_run_folder, run_transfer

    config = TransferConfig(**job.params["config"])
    out = Path(job.params.get("out") or default_run_folder(config))
    loading = [("load_source", f"load source {config.source}", 1), ("load_target", f"load target {config.target}", 1)]
    reporter.plan(loading)
    source_request = (config.source, config.dtype, config.source_device)
    target_request = (config.target, config.dtype, config.target_device)
    if pool is not None:
        from pkt_core.models.pool import pool_key

        held = [request[0] for request in (source_request, target_request) if pool_key(*request) in pool]
        reporter.start("load_source")
        source, target = pool.get_pair(source_request, target_request)
        reporter.start("load_target")
        say("models ready" + (f"; already loaded in the worker: {', '.join(held)}" if held else ""))
    else:
        reporter.start("load_source")
        source = load_model(config.source, dtype=config.dtype, device=config.source_device)
        say(f"loaded source {config.source}")
        if should_cancel():
            raise JobCancelled("cancelled after loading the source")
        reporter.start("load_target")
        target = load_model(config.target, dtype=config.dtype, device=config.target_device)
        say(f"loaded target {config.target}")
    plan = transfer_plan(config, target.adapter.num_layers)
    reporter.plan(loading + plan)
    totals = {name: total for name, _, total in plan}

    def progress(stage: str, step: int, loss: float) -> None:
        if stage in totals:
            reporter.start(stage)
        elif stage.startswith("stage "):
            name = f"stage-{int(stage.split()[1]):03d}"
            reporter.step(name, step + 1, config.steps_per_stage, loss=float(loss))
        elif stage in _TRAINING_LABELS:
            name = _TRAINING_LABELS[stage]
            reporter.step(name, step + 1, totals.get(name), loss=float(loss))

    try:
        folder = run_transfer(config, out_dir=out, resume=bool(job.params.get("resume")), on_progress=progress,
                              should_cancel=should_cancel, source=source, target=target)
    finally:
        del source, target
    return str(folder)


def _run_fetch(job: Job, reporter: _Reporter, should_cancel: Callable[[], bool], say) -> str:
    from pkt_core.models.provisioning import fetch_model, is_cached
    from pkt_core.models.registry import names_to_fetch

    names = names_to_fetch(job.params["name"])
    reporter.plan([(f"fetch:{n}", f"fetch {n}" + (" (cached)" if is_cached(n) else ""), 1) for n in names])
    folders = []
    for name in names:
        stage = f"fetch:{name}"
        reporter.start(stage)

        def progress(part: str, done: int, total: int, stage=stage) -> None:
            if should_cancel():
                raise JobCancelled(f"cancelled while fetching ({part})")
            reporter.step(stage, int(done), int(total) if total else None, detail=part)

        folders.append(str(fetch_model(name, source=job.params.get("source", "auto"), on_progress=progress, log=say)))
    return ", ".join(folders)


# -- command line -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pkt_core.jobs", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="work through the queue (exits when another worker holds the lock)")
    worker.add_argument("--idle-exit", type=float, default=60.0, help="seconds without a queued job before exiting")
    commands.add_parser("list", help="every job and its state, and the models the worker holds")
    commands.add_parser("unload", help="ask the worker to unload the models it keeps between jobs")
    stop = commands.add_parser("cancel", help="cancel a queued or running job")
    stop.add_argument("job_id")
    args = parser.parse_args(argv)
    if args.command == "worker":
        ran = run_worker(args.idle_exit)
        print(f"worker {os.getpid()}: ran {ran} job(s)")
        return 0
    if args.command == "list":
        for job in list_jobs():
            print(f"{job.id}\t{job.state}\t{job.title()}\t{job.status.get('result') or job.status.get('error') or ''}")
        for model in held_models():
            print(f"loaded in the worker: {model['name']} ({model['dtype']}, {model['device']}, {model['weight_mib']} MiB)")
        return 0
    if args.command == "unload":
        print("unload requested" if request_unload() else "no worker is running: nothing is loaded")
        return 0
    job = cancel(args.job_id)
    print(f"{job.id}: {job.state}{' (cancel requested)' if job.state == 'running' else ''}")
    return 0


