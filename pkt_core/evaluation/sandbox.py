"""Run model-written code as hostile: in a child process, limited, isolated, and always cleaned up.

Processes. The evaluator starts a *launcher* (as root inside new namespaces where the OS
allows); the launcher prepares the sandbox, then forks the *program process*, which drops
to the user ``nobody`` and runs the program. The launcher stays outside the program's
reach (another user, no shared memory) and tells the evaluator, on a pipe the program
process closes before any of its code runs, how the program process ended.

What every run gets:

- a fresh working folder and an environment of a few fixed variables, so no secret of the
  parent (tokens, keys) is inherited;
- limits set before the code runs: CPU time, address space per process, file size, open
  files, number of processes, no core files; a wall-clock timeout enforced by the evaluator,
  which then kills the whole sandbox;
- where a cgroup memory controller is writable (v2 ``memory.max``, else v1
  ``memory.limit_in_bytes``): one memory limit for the whole run, all its processes and the
  RAM-backed files they write together; otherwise only the per-process address-space limit;
- clean-up that cannot fail on anything the program made (depth, permissions, special
  files, links, immutable bits); no exception from one program stops an evaluation: the
  program is recorded as ``error`` with the reason.

The verdict channel. A ``passed`` needs the program process's own code to have run to its
last line, and nothing the program can read lets it claim that: there is no secret marker.

- After the program's last statement, trusted code connects a Unix socket to the launcher
  and sends ``finished``. The launcher counts it only if the kernel says the sender
  (``SO_PEERCRED``) is the program process itself, and only with exit status 0. The address
  is in the program's ``sys.argv``: it is not a secret, the kernel's word on the sender is.
- Before that point an audit hook, installed before the program's first line and impossible
  to remove from Python, refuses every connection to that address. Forked or spawned
  processes have other pids; ``os.exec*`` (same pid, fresh interpreter) is refused.
- The objects that send the message exist only on the C stack of the statement that runs
  the program: in no frame's variables, no module, not ``sys.modules['__main__']``; what the
  hook consults is bound in closures, so rebinding the launcher's globals or the builtins
  changes nothing. The hook refuses what could still reach them or skip lines:
  ``gc.get_objects``/``get_referrers``/``get_referents``, ``sys.settrace``/``setprofile`` and
  ``sys.monitoring`` (tracing can jump over lines), ``ctypes`` and the interpreter's test
  modules (raw memory), and sub-interpreters (they would start without the hook). ``/proc`` is an empty folder inside the sandbox, so
  ``/proc/self/mem`` cannot rewrite the process either; where no private mounts can be
  made, the hook refuses paths under ``/proc`` instead, which is only best effort (a symlink
  swapped between the check and the open, or a rebound ``os.path`` function, gets past it).
- So ``sys.exit(0)`` or ``os._exit(0)`` halfway through is an error, not a pass; so is
  ``raise StopIteration``, and a launcher that the program calls again reports nothing.

Isolation, where the OS allows (:func:`detect_isolation` probes once per process; what each
run reached is recorded in its :attr:`ExecutionResult.isolation`):

- as root with util-linux ``unshare``: new network, PID and mount namespaces (no network at
  all, not even loopback; the code sees only its own processes, and all of them die with the
  launcher) and the user ``nobody``, so it cannot write the evaluator's files or signal its
  processes, the process limit applies (root ignores it), and the process is not dumpable
  (with the kernel's default ``fs.suid_dumpable = 0``: no other ``nobody`` process, such as
  one it spawns without the hook, can trace it). Private, size-limited tmpfs mounts replace
  ``/tmp``, ``/var/tmp``, ``/dev/shm``, ``/run/lock`` and the working folder, so nothing the
  program writes outlives the run or pins memory after it; ``setpriv --no-new-privs`` stops
  set-user-id programs from granting privileges;
- as another user: an unprivileged user namespace with the same network, PID and mount
  namespaces where the kernel allows them; the program is then root *inside* that namespace
  and keeps its capabilities there, so it can undo the private mounts (and reach its own
  memory through a fresh ``/proc``): the verdict is weaker in this mode;
- otherwise only the limits and the audit hook. Then a program that sets out to do so can
  reach the network, signal processes of the same user, write where that user may, leave
  files in ``/tmp`` or a ``setsid`` grandchild running; run evaluations as root in a
  container, or enable unprivileged user namespaces, to close those holes.

What this does not defend against:

- memory-safety bugs of CPython itself: code objects built from raw bytecode (``marshal``
  cannot be refused, imports use it), known interpreter crashers. A program that exploits
  one can rewrite the interpreter, and with it the verdict;
- tests fooled without touching the verdict: the tests run in the same interpreter as the
  code they test, so a value whose ``__eq__`` always says ``True``, or a redefined ``abs``,
  ``len`` or ``__import__``, passes weak assertions. Closing that needs the tests in another
  process exchanging plain values with the code, which needs the program's code and tests
  as separate texts; this API receives one program;
- denial of service inside the limits (a run that uses all its CPU, memory or time), and
  kernel exploits.

Outcomes: ``passed`` (ran to the end), ``failed`` (an assertion failed), ``error`` (any other
exception, an early exit, or a sandbox failure), ``timeout`` (wall-clock or CPU limit),
``killed`` (ended by a signal: memory, file size, or something it did to itself).
"""

from __future__ import annotations

import array
import fcntl
import itertools
import json
import os
import pwd
import secrets
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from pkt_core.errors import PktError

OUTCOMES = ("passed", "failed", "error", "timeout", "killed")
OUTPUT_KEPT_CHARS = 4000
SANDBOX_USER = "nobody"
POLL_SECONDS = 0.01
EXIT_PASSED, EXIT_ASSERTION, EXIT_EXCEPTION, EXIT_SYSTEM_EXIT, EXIT_LAUNCHER_FAILED = 0, 1, 2, 3, 4
SIGNAL_EXIT_BASE = 128
# Folders every user may write: each gets a private tmpfs inside the sandbox's mount namespace.
SHARED_FOLDERS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
SCRATCH_INODES = 1 << 16  # per private folder: room for deep or wide trees, yet bounded
WORK_FOLDER_FILES = 4  # the working folder holds this many files of the largest allowed size
REPORT_WAIT_SECONDS = 10.0  # the launcher is dead or dying when this wait starts
CGROUP_SETTLE_ROUNDS = 200  # x POLL_SECONDS: for killed processes to leave their cgroup
PROBE_PROGRAM = (
    "import array, bisect, cmath, collections, copy, datetime, decimal, fractions, functools, hashlib, heapq\n"
    "import itertools, math, operator, random, re, statistics, string, sys, typing\n"
    "assert math.gcd(12, 18) == 6 and re.sub('a', 'b', 'aa') == 'bb'\n"
)

# Runs as ``python -c`` so the program cannot edit it. Everything lives inside ``launch`` (its
# frame is gone before the program starts), and the module's last statement runs the program
# and then the report with only C code holding them: see the module docstring.
LAUNCHER = r'''
import _socket, functools, json, os, resource, socket, struct, subprocess, sys, traceback, types

FINISHED = b"finished"
UNSAFE_MODULES = frozenset({
    "ctypes", "_ctypes", "_ctypes_test", "_testcapi", "_testinternalcapi", "_testbuffer", "_testclinic",
    "_testimportmultiple", "_testmultiphase", "_testsinglephase", "_xxtestfuzz",
    "_xxsubinterpreters", "_interpreters", "_xxinterpchannels", "_interpchannels", "_interpqueues",
})
# A new interpreter in the same process would start without this hook: refused, like tracing.
REFUSED_EVENTS = frozenset({
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.settrace", "sys.setprofile",
    "sys._settraceallthreads", "sys._setprofileallthreads", "sys.monitoring.register_callback", "os.exec",
    "cpython.PyInterpreterState_New",
})


def launch():
    """In the launcher: prepare, fork, supervise, never return. In the program process: return its two steps."""
    config = json.loads(sys.argv[1])
    reached = {}
    try:
        with open(config["program"], encoding="utf-8") as handle:
            source = handle.read()  # before a private /tmp may cover the folder it is in
        join_memory_group(config, reached)
        make_private_folders(config, reached)
        address = b"\0" + config["verdict_address"].encode()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(address)
        listener.listen(16)
        program_pid = os.fork()
    except BaseException:
        traceback.print_exc()
        tell_evaluator(config["report_fd"], {"launcher_failed": True, "reached": reached})
    if program_pid == 0:
        listener.close()
        return program_steps(config, source, address, reached.get("proc_hidden", False))
    supervise(config["report_fd"], program_pid, listener, reached)


def join_memory_group(config, reached):
    if config["cgroup_procs"]:
        try:
            with open(config["cgroup_procs"], "w") as procs:
                procs.write("0")  # this process; the program process and its children inherit it
            reached["memory_group"] = True
        except OSError as error:
            reached["memory_group_error"] = str(error)


def mount_tmpfs(target, options):
    command = ["mount", "-t", "tmpfs", "-o", "nosuid,nodev," + options, "tmpfs", target]
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, env={"PATH": "/usr/bin:/bin"})
    except OSError:
        return False
    return done.returncode == 0


def make_private_folders(config, reached):
    if not config["private_mounts"]:
        return
    size = f"size={config['scratch_bytes']},nr_inodes={config['inodes']}"
    reached["private_folders"] = [
        folder for folder in config["shared_folders"]
        if os.path.isdir(folder) and not os.path.islink(folder) and mount_tmpfs(folder, size + ",mode=1777")
    ]
    work, uid, gid = config["work"], config["uid"], config["gid"]
    os.makedirs(work, exist_ok=True)  # where /tmp is now private, the folder is made again on its tmpfs
    owner = f",uid={uid},gid={gid}" if uid is not None else ""
    work_size = f"size={config['work_bytes']},nr_inodes={config['inodes']}"
    reached["work_folder"] = "private tmpfs" if mount_tmpfs(work, work_size + ",mode=0700" + owner) else "on disk"
    if uid is not None:
        os.chown(work, uid, gid)
    os.chdir(work)  # the tmpfs now covering the path, not the folder underneath
    # Last: mount itself reads /proc/self/mountinfo.
    reached["proc_hidden"] = mount_tmpfs("/proc", "ro,size=4k,mode=0555")


def program_steps(config, source, address, proc_hidden):
    """Confine this process, then hand back (run the program, report its end) to the C-only caller."""
    try:
        os.closerange(3, 1 << 16)  # the listener and the evaluator's pipe: the program must not hold them
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        set_limits(config)
        if config["uid"] is not None:
            os.setgroups([])
            os.setgid(config["gid"])
            os.setuid(config["uid"])  # also makes the process non-dumpable: no one can trace it
        limit(resource.RLIMIT_NPROC, config["max_processes"])  # the working folder is already the cwd
        module = types.ModuleType("__main__")
        sys.modules["__main__"] = module  # the launcher's own module leaves sys.modules
        allowed = []
        sys.addaudithook(make_hook(allowed, proc_hidden, address, inside_proc=under_proc))
    except BaseException:
        traceback.print_exc()
        os._exit(4)
    open_socket = socket.socket

    def report():
        allowed.append(True)  # the program has ended: the hook lets this socket through
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        verdict = open_socket(socket.AF_UNIX, socket.SOCK_STREAM)
        verdict.connect(address)
        verdict.sendall(FINISHED)
        verdict.close()
        os._exit(0)

    return functools.partial(run_program, source, module.__dict__), report


def run_program(source, namespace):
    exec(compile(source, "program.py", "exec"), namespace)


def limit(kind, soft, hard=None):
    resource.setrlimit(kind, (soft, soft if hard is None else hard))


def set_limits(config):
    limit(resource.RLIMIT_CORE, 0)
    limit(resource.RLIMIT_CPU, config["cpu_seconds"], config["cpu_seconds"] + 1)
    limit(resource.RLIMIT_AS, config["memory_bytes"])
    limit(resource.RLIMIT_FSIZE, config["file_bytes"])
    limit(resource.RLIMIT_NOFILE, config["open_files"])


def make_hook(allowed, proc_hidden, verdict, refused=REFUSED_EVENTS, unsafe=UNSAFE_MODULES, unix=socket.AF_UNIX,
              family_of=_socket.socket.__dict__["family"].__get__, refuse=PermissionError, type_of=type,
              text=str, raw=bytes, inside_proc=None):
    # Everything the hook consults is bound here, before the program runs: the program can
    # rebind the launcher's globals and the builtins, but it cannot reach these cells.
    # family_of reads the C socket's own field, whatever a subclass says its family is.
    def hook(event, args):
        if event in refused or event.startswith("ctypes."):
            raise refuse(f"the sandbox does not allow {event}")
        if event == "import" and type_of(args[0]) is text and unsafe.intersection(args[0].split(".")):
            raise refuse(f"the sandbox does not allow importing {args[0]}")
        if event == "socket.connect" and not allowed and family_of(args[0]) == unix:
            target = args[1]
            if type_of(target) is text:
                target = target.encode("utf-8", "surrogateescape")  # as the socket module encodes it
            # Other types (bytearray, buffers) could change between the connect and this check.
            if type_of(target) is not raw or target == verdict:
                raise refuse("the sandbox does not let the program connect to its launcher")
        if not proc_hidden and event in ("open", "os.chdir") and inside_proc(args[0]):
            raise refuse("the sandbox does not allow /proc")
    return hook


def under_proc(path):
    """Best effort where /proc could not be hidden: paths that lead into it, after symlinks."""
    if type(path) is int:
        return False  # a file descriptor the process already has
    try:
        name = os.fsdecode(os.fspath(path))
    except (TypeError, ValueError):
        return True
    parts = [part for part in name.split("/") if part not in ("", ".")]
    # The working folder is not in /proc (nothing can move it there), so a relative path without
    # ".." or links stays out of it; this also spares deep folders a getcwd() per open.
    if not name.startswith("/") and ".." not in parts \
            and not any(os.path.islink("/".join(parts[: i + 1])) for i in range(len(parts))):
        return False
    try:
        return os.path.realpath(name).split("/")[1:2] == ["proc"]
    except OSError:
        return True  # cannot tell: refuse


def supervise(report_fd, program_pid, listener, reached):
    # Wait without reaping: until it is reaped, the program's pid cannot belong to anyone else.
    os.waitid(os.P_PID, program_pid, os.WEXITED | os.WNOWAIT)
    finished = verified_finish(listener, program_pid)
    status = os.waitpid(program_pid, 0)[1]
    tell_evaluator(report_fd, {"status": status, "finished": finished, "reached": reached})


def verified_finish(listener, program_pid):
    """Whether the program process itself (by the kernel's word) sent FINISHED before it ended."""
    listener.setblocking(False)
    finished = False
    for _ in range(64):  # the backlog holds at most 16; later connections come from leftovers
        try:
            connection, _ = listener.accept()
        except BlockingIOError:
            break
        with connection:
            pid = struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
            if pid == program_pid:
                connection.setblocking(False)
                try:
                    finished = finished or connection.recv(len(FINISHED) + 1) == FINISHED
                except OSError:
                    pass
    return finished


def tell_evaluator(report_fd, report):
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        os.write(report_fd, json.dumps(report).encode())
    finally:
        os._exit(0)


try:
    functools.reduce(lambda _, step: step(), globals().pop("launch")(), None)
except BaseException as error:
    code = 1 if isinstance(error, AssertionError) else 3 if isinstance(error, SystemExit) else 2
    if code == 3:
        sys.stderr.write(f"the program called sys.exit({error.code!r}) before it finished\n")
    else:
        traceback.print_exc()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)
os._exit(2)
'''


class SandboxError(PktError):
    """Model-written code cannot be run safely here (no usable interpreter, bad limits, ...)."""


@dataclass(frozen=True)
class SandboxLimits:
    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_bytes: int = 1 << 30  # per process (address space) and, with a cgroup, for the whole run
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
    mount_namespace: bool = False  # private tmpfs folders and an empty /proc are attempted
    no_new_privs: bool = False

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
    isolation: dict = field(default_factory=dict)  # what this run reached: namespaces, user, memory limit, ...

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
    setpriv = shutil.which("setpriv")
    no_new_privs = (setpriv, "--no-new-privs") if setpriv else ()
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
        Isolation((*prefix, *no_new_privs), python, ids[0] if ids else None, ids[1] if ids else None,
                  bool(prefix), bool(prefix), bool(prefix), bool(setpriv))
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
    """Run ``source`` as a Python program in the sandbox and say how it ended (never raises for the program)."""
    return _execute(source, limits or SandboxLimits(), isolation or detect_isolation())


def run_programs(
    sources: Sequence[str], limits: SandboxLimits | None = None, workers: int = 1
) -> list[ExecutionResult]:
    """Several programs, ``workers`` at a time (each in its own sandbox); results in order.

    A program that breaks the sandbox's own machinery is one ``error`` result; the others still run.
    """
    if workers < 1:
        raise SandboxError(f"workers must be at least 1, not {workers}")
    isolation = detect_isolation()
    limits = limits or SandboxLimits()
    if workers == 1:
        return [_execute(source, limits, isolation) for source in sources]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda source: _execute(source, limits, isolation), sources))


# --- one run ------------------------------------------------------------------------------------


def _execute(source: str, limits: SandboxLimits, isolation: Isolation) -> ExecutionResult:
    """One program from start to clean-up. Never raises: a failure of the sandbox is an ``error`` result."""
    started = time.monotonic()
    base: Path | None = None
    group: _MemoryGroup | None = None
    try:
        base = Path(tempfile.mkdtemp(prefix="pkt-sandbox-"))  # mode 0700: the code's user cannot enter it
        group = _MemoryGroup.create(limits.memory_bytes)
        result = _run(base, source, limits, isolation, group)
    except Exception as error:  # noqa: BLE001 - one program must never stop an evaluation
        result = ExecutionResult("error", f"the sandbox failed on this program: {type(error).__name__}: {error}",
                                 "", "", None, round(time.monotonic() - started, 3), _isolation_record(isolation))
    problems = _release(base, group)
    if problems:
        detail = f"the sandbox could not clean up after this program: {'; '.join(problems)}"[:OUTPUT_KEPT_CHARS]
        result = replace(result, outcome="error", detail=detail)
    return result


def _release(base: Path | None, group: _MemoryGroup | None) -> list[str]:
    """Kill what is left, remove the cgroup and the folder; what could not be done, never an exception."""
    problems: list[str] = []
    for step in (group.kill_all if group else None, group.remove if group else None,
                 (lambda: _remove_tree(base)) if base else None):
        if step is None:
            continue
        try:
            problems.extend(step() or [])
        except Exception as error:  # noqa: BLE001 - clean-up reports, it does not raise
            problems.append(f"{type(error).__name__}: {error}")
    return problems


def _run(base: Path, source: str, limits: SandboxLimits, isolation: Isolation,
         group: _MemoryGroup | None) -> ExecutionResult:
    work = base / "work"
    work.mkdir()
    program = base / "program.py"
    program.write_text(source, encoding="utf-8")
    if isolation.user_id is not None:
        os.chown(work, isolation.user_id, isolation.group_id)
        os.chmod(work, 0o700)
    read_end, write_end = os.pipe()
    try:
        config = _launcher_config(program, work, limits, isolation, group, write_end)
        command = [*isolation.command_prefix, isolation.python, "-I", "-B", "-c", LAUNCHER, json.dumps(config)]
        stdout_path, stderr_path = base / "stdout", base / "stderr"
        with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
            started = time.monotonic()
            process = subprocess.Popen(
                command, cwd=work, env=clean_environment(work), stdin=subprocess.DEVNULL, stdout=stdout,
                stderr=stderr, start_new_session=True, close_fds=True, pass_fds=(write_end,),
            )
            os.close(write_end)
            write_end = -1
            timed_out = not _wait_unreaped(process.pid, started + limits.wall_seconds)
            _kill_process_group(process.pid)
            if group:
                group.kill_all()  # processes that left the group or the namespaces' reach
            exit_code = process.wait()
            elapsed = time.monotonic() - started
        report = _read_report(read_end)
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    out = stdout_path.read_bytes().decode("utf-8", errors="replace")
    err = stderr_path.read_bytes().decode("utf-8", errors="replace")
    oom_kills = group.oom_kills() if group else 0
    outcome, detail, program_code = _classify(report, exit_code, timed_out, err, limits, oom_kills)
    reached = report.get("reached", {}) if report else {}
    return ExecutionResult(outcome, detail, out[:OUTPUT_KEPT_CHARS], err[-OUTPUT_KEPT_CHARS:], program_code,
                           round(elapsed, 3), _isolation_record(isolation, reached, group))


def _launcher_config(program: Path, work: Path, limits: SandboxLimits, isolation: Isolation,
                     group: _MemoryGroup | None, report_fd: int) -> dict:
    runs_as = isolation.user_id if isolation.user_id is not None else os.getuid()
    return {
        "program": str(program),
        "work": str(work),
        "uid": isolation.user_id,
        "gid": isolation.group_id,
        "cpu_seconds": limits.cpu_seconds,
        "memory_bytes": limits.memory_bytes,
        "file_bytes": limits.file_bytes,
        "open_files": limits.open_files,
        # The kernel counts every process of the user, so allow what it already runs plus ours.
        "max_processes": _processes_of_user(runs_as) + limits.max_processes + 2,
        "report_fd": report_fd,
        # Unique, not secret: the launcher trusts only the kernel's word on who connected.
        "verdict_address": f"pkt-sandbox-verdict-{secrets.token_hex(8)}",
        "private_mounts": isolation.mount_namespace,
        "shared_folders": list(SHARED_FOLDERS),
        "scratch_bytes": limits.file_bytes,
        "work_bytes": WORK_FOLDER_FILES * limits.file_bytes,
        "inodes": SCRATCH_INODES,
        "cgroup_procs": str(group.procs_file) if group else None,
    }


def _read_report(read_end: int) -> dict | None:
    """The launcher's one JSON report, or None when it died first (killed at the timeout, ...)."""
    chunks = []
    deadline = time.monotonic() + REPORT_WAIT_SECONDS
    while time.monotonic() < deadline:
        ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(read_end, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    try:
        report = json.loads(b"".join(chunks))
    except ValueError:
        return None
    return report if isinstance(report, dict) else None


def _isolation_record(isolation: Isolation, reached: dict | None = None, group: _MemoryGroup | None = None) -> dict:
    """What one run actually reached, next to the mode that was chosen."""
    reached = reached or {}
    namespaces = [name for name, flag in (("user", "--user" in isolation.command_prefix),
                                          ("network", isolation.network_disabled),
                                          ("pid", isolation.pid_namespace),
                                          ("mount", isolation.mount_namespace)) if flag]
    memory = f"cgroup v{group.version}, whole run" if group and reached.get("memory_group") \
        else "per process (RLIMIT_AS)"
    return {
        "namespaces": namespaces,
        "user": SANDBOX_USER if isolation.user_id is not None else None,
        "memory_limit": memory,
        "private_folders": reached.get("private_folders", []),
        "work_folder": reached.get("work_folder", "on disk"),
        "proc_hidden": bool(reached.get("proc_hidden", False)),
        "no_new_privs": isolation.no_new_privs,
        "verdict": "a message from the program's own pid after its last line",
    }


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


def _classify(report: dict | None, exit_code: int, timed_out: bool, stderr: str, limits: SandboxLimits,
              oom_kills: int) -> tuple[str, str, int | None]:
    """(outcome, detail, the program's exit code: 128 + signal when a signal ended it)."""
    last_line = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    memory = f"the memory limit of {limits.memory_bytes >> 20} MiB for the whole run (all its processes) was reached"
    if timed_out:
        return "timeout", f"wall-clock limit of {limits.wall_seconds} s reached", exit_code
    if report is None:
        if exit_code < 0:
            return "killed", memory if oom_kills else f"the sandbox ended by signal {_signal_name(-exit_code)}", \
                exit_code
        return "error", f"the sandbox stopped without a report (exit code {exit_code}): {last_line}", exit_code
    if report.get("launcher_failed") or "status" not in report:
        return "error", f"the sandbox could not start the program: {last_line}", None
    status = int(report["status"])
    if os.WIFSIGNALED(status):
        return (*_classify_signal(os.WTERMSIG(status), limits, memory, oom_kills),
                SIGNAL_EXIT_BASE + os.WTERMSIG(status))
    code = os.WEXITSTATUS(status)
    if code == EXIT_PASSED:
        if report.get("finished") is True:
            return "passed", "", code
        return "error", "the program exited before it finished (os._exit or similar)", code
    if code == EXIT_ASSERTION:
        return "failed", last_line or "an assertion failed", code
    if code in (EXIT_EXCEPTION, EXIT_SYSTEM_EXIT):
        return "error", last_line or "the program raised an exception", code
    if code == EXIT_LAUNCHER_FAILED:
        return "error", f"the sandbox could not start the program: {last_line}", code
    return "error", f"exit code {code}: {last_line}", code


def _classify_signal(number: int, limits: SandboxLimits, memory: str, oom_kills: int) -> tuple[str, str]:
    if number == signal.SIGXCPU:
        return "timeout", f"CPU-time limit of {limits.cpu_seconds} s reached"
    if number == signal.SIGXFSZ:
        return "killed", f"file-size limit of {limits.file_bytes} bytes reached"
    if number == signal.SIGKILL and oom_kills:
        return "killed", memory
    return "killed", f"the program ended by signal {_signal_name(number)}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


# --- one memory limit for the whole run ---------------------------------------------------------


def _mount_points() -> list[tuple[str, str, str, set[str]]]:
    """(mount point, root inside its filesystem, type, super options) for every mount of this process."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) >= 5 and len(tail) >= 3:
            mounts.append((fields[4], fields[3], tail[0], set(tail[2].split(","))))
    return mounts


def _own_cgroup(mount_point: str, mount_root: str, path: str) -> Path | None:
    relative = os.path.relpath(path, mount_root)
    if relative.startswith(".."):
        return None  # our cgroup is outside what this mount shows
    return Path(mount_point) / relative


@lru_cache(maxsize=1)
def _memory_cgroup_parent() -> tuple[int, Path] | None:
    """(version, folder) of this process's memory cgroup where children with a limit can be made."""
    try:
        lines = [line.split(":", 2) for line in Path("/proc/self/cgroup").read_text().splitlines()]
        mounts = _mount_points()
    except OSError:
        return None
    for _, controllers, path in lines:
        if controllers == "":  # v2: the memory controller must be enabled for our children already
            for point, root, kind, _ in mounts:
                folder = _own_cgroup(point, root, path) if kind == "cgroup2" else None
                if folder and "memory" in _read_words(folder / "cgroup.subtree_control") and os.access(folder, os.W_OK):
                    return 2, folder
        elif "memory" in controllers.split(","):
            for point, root, kind, options in mounts:
                folder = _own_cgroup(point, root, path) if kind == "cgroup" and "memory" in options else None
                if folder and (folder / "memory.limit_in_bytes").exists() and os.access(folder, os.W_OK):
                    return 1, folder
    return None


def _read_words(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


@dataclass
class _MemoryGroup:
    """A child cgroup for one run: its memory limit covers the launcher, the program and all it forks."""

    version: int
    path: Path

    @property
    def procs_file(self) -> Path:
        return self.path / "cgroup.procs"

    @classmethod
    def create(cls, limit_bytes: int) -> _MemoryGroup | None:
        parent = _memory_cgroup_parent()
        if parent is None:
            return None
        group = cls(parent[0], parent[1] / f"pkt-sandbox-{secrets.token_hex(6)}")
        try:
            group.path.mkdir()
        except OSError:
            return None
        try:
            group._set_limit(limit_bytes)
        except OSError:
            group.remove()
            return None
        return group

    def _set_limit(self, limit_bytes: int) -> None:
        if self.version == 2:
            (self.path / "memory.max").write_text(str(limit_bytes))
            swap = self.path / "memory.swap.max"
            if swap.exists():
                swap.write_text("0")
            return
        (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
        swap = self.path / "memory.memsw.limit_in_bytes"  # memory + swap: the same, so no swap
        if swap.exists():
            swap.write_text(str(limit_bytes))

    def oom_kills(self) -> int:
        events = self.path / ("memory.events" if self.version == 2 else "memory.oom_control")
        for line in _read_lines(events):
            name, _, value = line.partition(" ")
            if name == "oom_kill" and value.strip().isdigit():
                return int(value)
        return 0

    def kill_all(self) -> list[str]:
        """SIGKILL every process still in the group, through pidfds, so no recycled pid is hit."""
        kill_switch = self.path / "cgroup.kill"
        if kill_switch.exists():
            kill_switch.write_text("1")
            return []
        for _ in range(CGROUP_SETTLE_ROUNDS):
            pids = [int(word) for word in _read_words(self.procs_file) if word.isdigit()]
            if not pids:
                return []
            for pid in pids:
                _kill_if_member(pid, self.path.name)
            time.sleep(POLL_SECONDS)
        return [f"processes still in {self.path} after SIGKILL"]

    def remove(self) -> list[str]:
        last: OSError | None = None
        for _ in range(CGROUP_SETTLE_ROUNDS):  # killed processes take a moment to leave
            try:
                self.path.rmdir()
                return []
            except FileNotFoundError:
                return []
            except OSError as error:
                last = error
                time.sleep(POLL_SECONDS)
        return [f"{self.path}: {last}"]


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except OSError:
        return []


def _kill_if_member(pid: int, group_name: str) -> None:
    try:
        handle = os.pidfd_open(pid)
    except OSError:
        return  # already gone
    try:
        # Checked after the pidfd pins the process: a recycled pid would not be in our group.
        if any(line.rsplit("/", 1)[-1] == group_name for line in _read_lines(Path(f"/proc/{pid}/cgroup"))):
            signal.pidfd_send_signal(handle, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(handle)


# --- clean-up that cannot fail on what the program made ----------------------------------------

_FS_IOC_GETFLAGS, _FS_IOC_SETFLAGS = 0x80086601, 0x40086602
_FS_LOCKING_FLAGS = 0x10 | 0x20  # FS_IMMUTABLE_FL | FS_APPEND_FL
_FLATTENED = ".pkt-flattened-"


def _remove_tree(folder: Path) -> list[str]:
    """Remove ``folder`` and whatever the program made in it; what could not be removed (never raises).

    No recursion and no long paths: every sub-folder is first moved up into ``folder``
    itself, so a 3,000-deep chain comes apart one level at a time with two folders open.
    Links are removed, never followed; special files are unlinked, never opened; folders
    without permissions are opened up, and immutable or append-only bits cleared, before a retry.
    """
    try:
        root = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return []
    except OSError as error:
        return [f"{folder}: {error}"]
    try:
        problems = _empty_folder(root)
        _unlock(root)
    finally:
        os.close(root)
    try:
        os.rmdir(folder)
    except OSError as error:
        problems.append(f"{folder}: {error}")
    return problems


def _empty_folder(root: int) -> list[str]:
    """Rounds over ``root``'s entries until it is empty or a round changes nothing (then: why)."""
    fresh_names = (f"{_FLATTENED}{n}" for n in itertools.count())
    before: list[str] = []
    problems: list[str] = []
    while True:
        try:
            entries = sorted(os.listdir(root))
        except OSError as error:
            return [f"cannot list the sandbox folder: {error}"]
        if not entries:
            return []
        if entries == before:
            return problems
        problems = []
        for name in entries:
            try:
                _take_apart(root, name, fresh_names)
            except OSError as error:
                problems.append(f"{name}: {error}")
        before = entries


def _take_apart(root: int, name: str, fresh_names: Iterator[str]) -> None:
    """Remove ``root/name``; for a folder, move its sub-folders up into ``root`` first."""
    if not stat.S_ISDIR(os.lstat(name, dir_fd=root).st_mode):
        _with_retry(root, name, os.unlink, name, dir_fd=root)
        return
    folder = _open_folder(root, name)
    try:
        for child in os.listdir(folder):
            if stat.S_ISDIR(os.lstat(child, dir_fd=folder).st_mode):
                target = _unused_name(root, fresh_names)
                _with_retry(folder, child, os.rename, child, target, src_dir_fd=folder, dst_dir_fd=root)
            else:
                _with_retry(folder, child, os.unlink, child, dir_fd=folder)
    finally:
        os.close(folder)
    _with_retry(root, name, os.rmdir, name, dir_fd=root)


def _unused_name(root: int, fresh_names: Iterator[str]) -> str:
    for name in fresh_names:
        try:
            os.lstat(name, dir_fd=root)
        except FileNotFoundError:
            return name
    raise AssertionError("unreachable: the name generator is infinite")


def _open_folder(parent: int, name: str) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        return os.open(name, flags, dir_fd=parent)
    except PermissionError:  # not root, and the program took the permissions away
        os.chmod(name, 0o700, dir_fd=parent)
        return os.open(name, flags, dir_fd=parent)


def _with_retry(folder: int, name: str, operation: Callable[..., object], *args: object, **kwargs: object) -> None:
    """``operation(*args, **kwargs)`` on ``folder/name``, once more after unlocking both if refused."""
    try:
        operation(*args, **kwargs)
    except PermissionError:  # a write-protected folder, or an immutable / append-only bit
        _unlock(folder)
        _unlock_entry(folder, name)
        operation(*args, **kwargs)


def _unlock_entry(folder: int, name: str) -> None:
    """Clear the locking bits of a regular file or folder (special files are never opened)."""
    try:
        mode = os.lstat(name, dir_fd=folder).st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return
    try:
        handle = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
    except OSError:
        return
    try:
        _unlock(handle)
    finally:
        os.close(handle)


def _unlock(handle: int) -> None:
    """Best effort: no immutable or append-only bit (first: they forbid chmod too), owner permissions."""
    flags = array.array("i", [0])
    try:
        fcntl.ioctl(handle, _FS_IOC_GETFLAGS, flags, True)
        if flags[0] & _FS_LOCKING_FLAGS:
            flags[0] &= ~_FS_LOCKING_FLAGS
            fcntl.ioctl(handle, _FS_IOC_SETFLAGS, flags)
    except OSError:  # a filesystem without such flags, or not root
        pass
    try:
        if stat.S_ISDIR(os.fstat(handle).st_mode):
            os.fchmod(handle, 0o700)
    except OSError:
        pass
