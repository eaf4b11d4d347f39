"""A file-based job queue for heavy work (transfer runs, model fetches), one job at a time per machine.

The app (or anyone) *submits* a job: a folder ``$PKT_HOME/jobs/<job id>/`` with ``request.json``
(kind and parameters) and ``status.json`` (state ``queued``). A *worker* process,
``python -m pkt_core.jobs worker``, takes jobs oldest first and runs them in its own process, so
the models a job loads live in the worker, never in the app. Only one worker works at a time:
it holds an exclusive ``flock`` on ``$PKT_HOME/jobs/worker.lock`` (a second worker exits at
once), so a second request waits in the queue, and :func:`queue_message` says behind what.

While a job runs, the worker rewrites ``status.json`` atomically: state, the planned stages
with done / total steps (and the loss of training steps), the result (the run folder) or the
error. ``cancel(job_id)`` drops a ``cancel`` flag file that the job's ``should_cancel`` checks
between steps; a cancelled transfer keeps its resumable ``.partial`` folder. A worker that
dies (killed, out of memory) leaves a job ``running`` with a dead pid; readers mark it failed.

Models stay loaded between jobs: the worker keeps a :class:`~pkt_core.models.pool.ModelPool`, so
the next run on the same pair starts without loading (and no model is ever held twice). A job
that changed a model (a transfer trains its target in place) has it evicted afterwards. The
worker lists what it holds in ``worker.json``; :func:`request_unload` (the app's "Unload
models", or ``python -m pkt_core.jobs unload``) frees them, and a worker idle for
``$PKT_JOBS_IDLE_EXIT`` seconds (default 900) exits, which frees them too.

Kinds: ``transfer`` (params: ``config``, the :class:`~pkt_core.transfer.config.TransferConfig`
fields as ``pkt transfer`` builds them, and optionally ``out`` and ``resume``) and ``fetch``
(params: ``name``, a registered model or pair, and ``source``: auto, hub or mirror).

Never imports Streamlit.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from pkt_core.errors import PktError
from pkt_core.paths import pkt_home

KINDS = ("transfer", "fetch")
ACTIVE_STATES = ("queued", "running")
FINAL_STATES = ("done", "failed", "cancelled")
REQUEST = "request.json"
STATUS = "status.json"
CANCEL = "cancel"
LOG = "log.txt"
LOCK = "worker.lock"
WORKER_RECORD = "worker.json"
UNLOAD = "unload"
DEFAULT_IDLE_EXIT_SECONDS = 900.0


class JobError(PktError):
    """A job request is invalid, or names a job that does not exist."""


class JobCancelled(PktError):
    """The user cancelled the job (raised inside the worker)."""


def jobs_dir() -> Path:
    return pkt_home() / "jobs"


def _write_json(path: Path, payload: dict) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(temporary, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (finished, not yet reaped by its parent) counts as ended.
    try:
        with open(f"/proc/{int(pid)}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@dataclass
class Job:
    id: str
    kind: str
    params: dict
    submitted_at: str
    status: dict

    @property
    def folder(self) -> Path:
        return jobs_dir() / self.id

    @property
    def state(self) -> str:
        return self.status.get("state", "queued")

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def stages(self) -> list[dict]:
        return list(self.status.get("stages") or [])

    @property
    def cancel_requested(self) -> bool:
        return (self.folder / CANCEL).exists()

    def title(self) -> str:
        if self.kind == "transfer":
            config = self.params.get("config", {})
            what = config.get("task") or Path(str(config.get("data_file") or "data")).name
            return f"transfer {config.get('variant', '')} {what}: {config.get('source')} -> {config.get('target')}"
        return f"fetch {self.params.get('name')}"

    def log_tail(self, lines: int = 20) -> str:
        path = self.folder / LOG
        if not path.is_file():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# -- submitting and reading -------------------------------------------------------------------


def _validate(kind: str, params: dict) -> dict:
    if kind not in KINDS:
        raise JobError(f"unknown job kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "transfer":
        from pkt_core.transfer.config import TransferConfig

        if "config" not in params:
            raise JobError("a transfer job needs params['config'] (the TransferConfig fields)")
        config = TransferConfig(**params["config"])  # raises TransferConfigError with the reason
        return {**params, "config": config.to_record()}
    from pkt_core.models.registry import names_to_fetch

    if not params.get("name"):
        raise JobError("a fetch job needs params['name'] (a registered model or pair)")
    names_to_fetch(params["name"])  # raises UnknownModelError with suggestions
    if params.get("source", "auto") not in ("auto", "hub", "mirror"):
        raise JobError("source must be auto, hub or mirror")
    return {"name": params["name"], "source": params.get("source", "auto")}


def submit(kind: str, params: dict) -> Job:
    """Queue a job (validated now, so a bad request fails here, not in the worker)."""
    params = _validate(kind, params)
    jobs_dir().mkdir(parents=True, exist_ok=True)
    job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{uuid.uuid4().hex[:6]}"
    folder = jobs_dir() / job_id
    folder.mkdir()
    submitted = _now()
    request = {"id": job_id, "kind": kind, "params": params, "submitted_at": submitted, "order": time.time_ns()}
    _write_json(folder / REQUEST, request)
    status = {"state": "queued", "message": "waiting for the worker", "stages": [], "updated_at": submitted}
    _write_json(folder / STATUS, status)
    return Job(job_id, kind, params, submitted, status)


def _load(folder: Path) -> tuple[Job, int] | None:
    request = _read_json(folder / REQUEST)
    if request is None:
        return None
    status = _read_json(folder / STATUS) or {"state": "queued", "stages": []}
    job = Job(request["id"], request["kind"], request["params"], request["submitted_at"], status)
    if job.state == "running" and not _pid_alive(status.get("pid")):
        job.status = {**status, "state": "failed", "ended_at": _now(),
                      "error": f"the worker process (pid {status.get('pid')}) ended without finishing the job "
                               "(killed, or out of memory?)"}
        _write_json(folder / STATUS, job.status)
    return job, int(request.get("order", 0))


def list_jobs() -> list[Job]:
    """Every job, oldest first."""
    if not jobs_dir().is_dir():
        return []
    loaded = [_load(p) for p in jobs_dir().iterdir() if p.is_dir()]
    return [job for job, _ in sorted((x for x in loaded if x is not None), key=lambda x: x[1])]


def get_job(job_id: str) -> Job:
    loaded = _load(jobs_dir() / job_id)
    if loaded is None:
        raise JobError(f"no job {job_id!r} under {jobs_dir()}")
    return loaded[0]


def cancel(job_id: str) -> Job:
    """Ask a job to stop: a queued job never starts; a running one stops at its next step."""
    job = get_job(job_id)
    if job.finished:
        return job
    (job.folder / CANCEL).write_text(_now())
    if job.state == "queued":
        job.status = {**job.status, "state": "cancelled", "message": "cancelled before it started", "ended_at": _now()}
        _write_json(job.folder / STATUS, job.status)
    return job


def queue_message(job: Job, jobs: list[Job] | None = None) -> str:
    """Where ``job`` stands, in words (what runs now, how many wait before it)."""
    if job.state != "queued":
        return job.status.get("message") or job.state
    jobs = jobs if jobs is not None else list_jobs()
    running = [j for j in jobs if j.state == "running"]
    ahead = []
    for other in jobs:
        if other.id == job.id:
            break
        if other.state == "queued":
            ahead.append(other)
    parts = []
    if running:
        parts.append(f"one heavy job at a time on this machine: waiting for {running[0].title()} ({running[0].id})")
    if ahead:
        parts.append(f"{len(ahead)} queued job(s) ahead")
    if not parts:
        parts.append("next in line" + ("" if worker_alive() else "; starting the worker"))
    return "queued: " + "; ".join(parts)


# -- the worker -------------------------------------------------------------------------------


def worker_alive() -> bool:
    """Whether a worker holds the lock now (checked by trying to take it, without keeping it)."""
    path = jobs_dir() / LOCK
    if not path.exists():
        return False
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def ensure_worker(idle_exit: float | None = None, python: str | None = None) -> subprocess.Popen | None:
    """Start a worker process when jobs are queued and none is working; returns it (or None).

    The worker exits after ``idle_exit`` seconds without work (default ``$PKT_JOBS_IDLE_EXIT``, else
    900: models stay loaded that long after the last job unless unloaded)."""
    if idle_exit is None:
        idle_exit = float(os.environ.get("PKT_JOBS_IDLE_EXIT", DEFAULT_IDLE_EXIT_SECONDS))
    if not any(job.state == "queued" for job in list_jobs()) or worker_alive():
        return None
    jobs_dir().mkdir(parents=True, exist_ok=True)
    package_root = str(Path(__file__).resolve().parents[1])
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, environment.get("PYTHONPATH")) if p)
    log = open(jobs_dir() / "worker.log", "a")
    try:
        return subprocess.Popen(
            [python or sys.executable, "-m", "pkt_core.jobs", "worker", "--idle-exit", str(idle_exit)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True,
        )
    finally:
        log.close()


def held_models() -> list[dict]:
    """The models the worker holds loaded now (empty when no worker runs)."""
    record = _read_json(jobs_dir() / WORKER_RECORD) or {}
    if not worker_alive() or record.get("ended_at"):
        return []
    return list(record.get("models") or [])


def request_unload() -> bool:
    """Ask the worker to unload every model it holds (between jobs, within a poll interval).

    Returns whether a worker is there to do it; with none, nothing is loaded anyway."""
    if not worker_alive():
        return False
    (jobs_dir() / UNLOAD).write_text(_now())
    return True


