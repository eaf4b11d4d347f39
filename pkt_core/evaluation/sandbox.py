"""Run model-written code as hostile: in a child process, limited, isolated, and always cleaned up.

What every run gets:

- a fresh temporary working folder (removed afterwards) and an environment of a few fixed
  variables, so no secret of the parent (tokens, keys) is inherited;
- resource limits set before the code runs: CPU time, address space, file size, open files,
  number of processes, no core files; and a wall-clock timeout enforced by the parent, which
  then kills the child's whole process group;
- a trusted launcher that runs the program in a forked child and reports how it ended. A test
  that passes has run to its last line: the launcher then prints a one-time marker the parent
  checks, so ``sys.exit(0)`` or ``os._exit(0)`` halfway through is an error, not a pass.

Where the OS allows (:func:`detect_isolation` probes once per process and records the result):

- as root with util-linux ``unshare``: new network, PID and mount namespaces (no network at
  all, not even loopback; the code sees only its own processes, and all of them die with the
  launcher), and the code runs as the unprivileged user ``nobody``, so it cannot write the
  parent's files or signal its processes, and the process limit applies (root ignores it);
- as another user: an unprivileged user namespace with the same network and PID namespaces,
  where the kernel allows them;
- otherwise only the limits above. Then a program that sets out to do so can still reach the
  network, signal processes of the same user, write where that user may, or leave a
  ``setsid`` grandchild running; run evaluations as root in a container, or enable
  unprivileged user namespaces, to close those holes.

Remaining gaps even at the strongest level: world-writable folders such as ``/tmp`` stay
writable by ``nobody`` (no private mounts are made), and a program that inspects the
launcher's memory could forge the success marker; neither is something a model writes by
accident.

Outcomes: ``passed`` (ran to the end), ``failed`` (an assertion failed), ``error`` (any other
exception, or an early exit), ``timeout`` (wall-clock or CPU limit), ``killed`` (ended by a
signal: memory, file size, or something it did to itself).
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from pkt_core.errors import PktError

OUTCOMES = ("passed", "failed", "error", "timeout", "killed")
OUTPUT_KEPT_CHARS = 4000
SANDBOX_USER = "nobody"
POLL_SECONDS = 0.01
EXIT_PASSED, EXIT_ASSERTION, EXIT_EXCEPTION, EXIT_SYSTEM_EXIT, EXIT_LAUNCHER_FAILED = 0, 1, 2, 3, 4
SIGNAL_EXIT_BASE = 128
PROBE_PROGRAM = (
    "import array, bisect, cmath, collections, copy, datetime, decimal, fractions, functools, hashlib, heapq\n"
    "import itertools, math, operator, random, re, statistics, string, sys, typing\n"
    "assert math.gcd(12, 18) == 6 and re.sub('a', 'b', 'aa') == 'bb'\n"
)

# Runs inside the sandbox before any untrusted code, as a ``-c`` script so the program cannot
# edit it. Limits and the user switch happen here; the program runs in a forked child so that
# killing "its parent" hits the launcher, never the evaluator.
LAUNCHER = r'''
import json, os, resource, sys, traceback

def launch():
    config = json.loads(sys.argv[1])
    marker = sys.stdin.readline().strip()
    def limit(kind, soft, hard=None):
        resource.setrlimit(kind, (soft, soft if hard is None else hard))
    limit(resource.RLIMIT_CORE, 0)
    limit(resource.RLIMIT_CPU, config["cpu_seconds"], config["cpu_seconds"] + 1)
    limit(resource.RLIMIT_AS, config["memory_bytes"])
    limit(resource.RLIMIT_FSIZE, config["file_bytes"])
    limit(resource.RLIMIT_NOFILE, config["open_files"])
    with open(config["program"], encoding="utf-8") as handle:
        source = handle.read()
    if config["uid"] is not None:
        os.setgroups([])
        os.setgid(config["gid"])
        os.setuid(config["uid"])
    limit(resource.RLIMIT_NPROC, config["max_processes"])
    child = os.fork()
    if child == 0:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        code = 0
        try:
            exec(compile(source, "program.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        except AssertionError:
            traceback.print_exc()
            code = 1
        except SystemExit as stop:
            sys.stderr.write(f"the program called sys.exit({stop.code!r}) before it finished\n")
            code = 3
        except BaseException:
            traceback.print_exc()
            code = 2
        else:
            sys.stdout.flush()
            os.write(1, ("\n" + marker + "\n").encode())
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    del marker, source
    status = os.waitpid(child, 0)[1]
    if os.WIFSIGNALED(status):
        os._exit(128 + os.WTERMSIG(status))
    os._exit(os.WEXITSTATUS(status))

try:
    launch()
except BaseException:
    traceback.print_exc()
    os._exit(4)
'''


class SandboxError(PktError):
    """Model-written code cannot be run safely here (no usable interpreter, bad limits, ...)."""


@dataclass(frozen=True)
class SandboxLimits:
    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    open_files: int = 64
    max_processes: int = 16  # beyond what the sandbox's user already runs

    def __post_init__(self) -> None:
        if self.wall_seconds <= 0 or self.cpu_seconds < 1 or self.memory_bytes < (64 << 20) \
                or self.file_bytes < 4096 or self.open_files < 16 or self.max_processes < 1:
            raise SandboxError(
                f"sandbox limits too small to start Python: {self}; allow at least 1 s of CPU, "
                f"64 MiB of memory, 4 KiB files, 16 open files and 1 process"
            )


@dataclass(frozen=True)
class Isolation:
    """How programs are isolated on this machine (found by probing, recorded with every result)."""

    command_prefix: tuple[str, ...]
    python: str
    user_id: int | None  # the unprivileged user the code runs as, None: the evaluator's own user
    group_id: int | None
    network_disabled: bool
    pid_namespace: bool

    def describe(self) -> dict:
        return {**asdict(self), "command_prefix": list(self.command_prefix)}


@dataclass(frozen=True)
class ExecutionResult:
    outcome: str
    detail: str
    stdout: str
    stderr: str
    exit_code: int | None
    wall_seconds: float

    @property
    def passed(self) -> bool:
        return self.outcome == "passed"


def clean_environment(work_folder: Path) -> dict[str, str]:
    """The only variables a program sees: nothing of the parent's environment leaks through."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(work_folder),
        "TMPDIR": str(work_folder),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
    }


def _processes_of_user(user_id: int) -> int:
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("Uid:"):
                    count += int(line.split()[1]) == user_id
                    break
        except OSError:  # the process ended while we looked
            continue
    return count


def _sandbox_user() -> tuple[int, int] | None:
    try:
        entry = pwd.getpwnam(SANDBOX_USER)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def _python_candidates() -> list[str]:
    # The evaluator's interpreter first; a system one where that lives in a folder the
    # unprivileged user cannot read (e.g. under /root).
    found = [sys.executable, getattr(sys, "_base_executable", None), shutil.which("python3"), "/usr/bin/python3"]
    unique: list[str] = []
    for path in found:
        if path and os.path.isfile(path) and path not in unique:
            unique.append(path)
    return unique


def _candidate_isolations() -> list[Isolation]:
    unshare = shutil.which("unshare")
    user = _sandbox_user() if os.geteuid() == 0 else None
    namespaces = ("--net", "--pid", "--fork", "--kill-child", "--mount-proc")
    modes: list[tuple[tuple[str, ...], tuple[int, int] | None]] = []
    if unshare and user:
        modes.append(((unshare, *namespaces), user))
    if unshare:
        modes.append(((unshare, "--user", "--map-root-user", *namespaces), None))
    if user:
        modes.append(((), user))
    modes.append(((), None))
    return [
        Isolation(prefix, python, ids[0] if ids else None, ids[1] if ids else None, bool(prefix), bool(prefix))
        for prefix, ids in modes
        for python in _python_candidates()
    ]


@lru_cache(maxsize=1)
def detect_isolation() -> Isolation:
    """The strongest isolation that runs a probe program correctly here; see the module docstring."""
    probe_limits = SandboxLimits(wall_seconds=20, cpu_seconds=10)
    tried = []
    for isolation in _candidate_isolations():
        result = _execute(PROBE_PROGRAM, probe_limits, isolation)
        if result.passed:
            return isolation
        tried.append(f"{' '.join(isolation.command_prefix) or 'no namespaces'} / {isolation.python} / "
                     f"user {isolation.user_id}: {result.outcome} {result.detail}")
    raise SandboxError("no way found to run Python programs in a sandbox here; tried:\n  " + "\n  ".join(tried))


def run_program(
    source: str, limits: SandboxLimits | None = None, isolation: Isolation | None = None
) -> ExecutionResult:
    """Run ``source`` as a Python program in the sandbox and say how it ended."""
    return _execute(source, limits or SandboxLimits(), isolation or detect_isolation())


def run_programs(
    sources: Sequence[str], limits: SandboxLimits | None = None, workers: int = 1
) -> list[ExecutionResult]:
    """Several programs, ``workers`` at a time (each in its own sandbox); results in order."""
    if workers < 1:
        raise SandboxError(f"workers must be at least 1, not {workers}")
    isolation = detect_isolation()
    limits = limits or SandboxLimits()
    if workers == 1:
        return [_execute(source, limits, isolation) for source in sources]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda source: _execute(source, limits, isolation), sources))


def _execute(source: str, limits: SandboxLimits, isolation: Isolation) -> ExecutionResult:
    base = Path(tempfile.mkdtemp(prefix="pkt-sandbox-"))  # mode 0700: the code's user cannot enter it
    try:
        work = base / "work"
        work.mkdir()
        program = base / "program.py"
        program.write_text(source, encoding="utf-8")
        if isolation.user_id is not None:
            os.chown(work, isolation.user_id, isolation.group_id)
            os.chmod(work, 0o700)
        runs_as = isolation.user_id if isolation.user_id is not None else os.getuid()
        config = {
            "program": str(program),
            "uid": isolation.user_id,
            "gid": isolation.group_id,
            "cpu_seconds": limits.cpu_seconds,
            "memory_bytes": limits.memory_bytes,
            "file_bytes": limits.file_bytes,
            "open_files": limits.open_files,
            # The kernel counts every process of the user, so allow what it already runs plus ours.
            "max_processes": _processes_of_user(runs_as) + limits.max_processes + 2,
        }
        marker = secrets.token_hex(16)
        command = [*isolation.command_prefix, isolation.python, "-I", "-B", "-c", LAUNCHER, json.dumps(config)]
        stdout_path, stderr_path = base / "stdout", base / "stderr"
        with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
            started = time.monotonic()
            process = subprocess.Popen(
                command, cwd=work, env=clean_environment(work), stdin=subprocess.PIPE, stdout=stdout,
                stderr=stderr, start_new_session=True, close_fds=True,
            )
            try:
                process.stdin.write(f"{marker}\n".encode())
                process.stdin.close()
            except OSError:  # the child is already gone; its status says why
                pass
            timed_out = not _wait_unreaped(process.pid, started + limits.wall_seconds)
            _kill_process_group(process.pid)
            exit_code = process.wait()
            elapsed = time.monotonic() - started
        out = stdout_path.read_bytes().decode("utf-8", errors="replace")
        err = stderr_path.read_bytes().decode("utf-8", errors="replace")
        marker_line = f"\n{marker}\n"
        finished = out.endswith(marker_line)
        if finished:
            out = out[: -len(marker_line)]
        outcome, detail = _classify(exit_code, timed_out, finished, err, limits)
        return ExecutionResult(outcome, detail, out[:OUTPUT_KEPT_CHARS], err[-OUTPUT_KEPT_CHARS:], exit_code,
                               round(elapsed, 3))
    finally:
        _remove_tree(base)


def _wait_unreaped(pid: int, deadline: float) -> bool:
    """Wait until the child ends or the deadline passes, without reaping it.

    An unreaped child keeps its pid, so its process-group id cannot be reused by an unrelated
    process before the group is killed.
    """
    while True:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)


def _kill_process_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # nothing left in the group
        pass


def _classify(exit_code: int, timed_out: bool, finished: bool, stderr: str, limits: SandboxLimits) -> tuple[str, str]:
    last_line = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    if timed_out:
        return "timeout", f"wall-clock limit of {limits.wall_seconds} s reached"
    if exit_code < 0:
        return "killed", f"the sandbox ended by signal {_signal_name(-exit_code)}"
    if exit_code == EXIT_PASSED:
        if finished:
            return "passed", ""
        return "error", "the program exited before it finished (os._exit or similar)"
    if exit_code == EXIT_ASSERTION:
        return "failed", last_line or "an assertion failed"
    if exit_code in (EXIT_EXCEPTION, EXIT_SYSTEM_EXIT):
        return "error", last_line or "the program raised an exception"
    if exit_code == EXIT_LAUNCHER_FAILED:
        return "error", f"the sandbox could not start the program: {last_line}"
    if exit_code > SIGNAL_EXIT_BASE:
        number = exit_code - SIGNAL_EXIT_BASE
        if number == signal.SIGXCPU:
            return "timeout", f"CPU-time limit of {limits.cpu_seconds} s reached"
        if number == signal.SIGXFSZ:
            return "killed", f"file-size limit of {limits.file_bytes} bytes reached"
        return "killed", f"the program ended by signal {_signal_name(number)}"
    return "error", f"exit code {exit_code}: {last_line}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _remove_tree(folder: Path) -> None:
    """Remove the sandbox folder even where the program took the write bit off its own files."""
    def make_writable_and_retry(function, path, _error):
        try:
            os.chmod(os.path.dirname(path), 0o700)
            os.chmod(path, 0o700)
            function(path)
        except OSError:
            pass

    shutil.rmtree(folder, onerror=make_writable_and_retry)
