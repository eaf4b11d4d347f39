"""The four attacks of issue #17, run as HumanEval/MBPP scoring runs programs (``run_programs``).

Each program below ends with tests that fail, so anything but a non-pass outcome is a forged
pass; after each run the evaluator is intact and nothing of the program is left behind.
"""

from __future__ import annotations

import array
import fcntl
import os
import secrets
import socket
import tempfile
from pathlib import Path

import pytest

from pkt_core.evaluation import sandbox
from pkt_core.evaluation.sandbox import (
    SHARED_FOLDERS,
    Isolation,
    SandboxLimits,
    detect_isolation,
    run_program,
    run_programs,
)

LIMITS = SandboxLimits(wall_seconds=20, cpu_seconds=10, memory_bytes=512 << 20, file_bytes=1 << 20)
# Failing tests, then one more statement: a pass needs the program to get past them to its end.
FAILING_TESTS = "\nassert len('x') == 2, 'the tests fail'\nfinished = True\n"
ISOLATION_KEYS = {"namespaces", "user", "memory_limit", "private_folders", "work_folder", "proc_hidden", "verdict"}


@pytest.fixture(scope="module")
def isolation() -> Isolation:
    return detect_isolation()


def leftover_sandbox_folders() -> set[str]:
    return {entry.name for entry in Path(tempfile.gettempdir()).iterdir()
            if entry.name.startswith("pkt-sandbox-")}


@pytest.fixture
def nothing_left_behind():
    before = leftover_sandbox_folders()
    yield
    assert leftover_sandbox_folders() <= before


# --- 1. forged passes ---------------------------------------------------------------------------

FORGERIES = {
    # The attack, generalised: print every string any frame can see, then exit 0.
    "frame_marker": r'''
import os, string, sys
frame, seen, tokens = sys._getframe(0), 0, []
while frame is not None:
    for scope in (frame.f_locals, frame.f_globals):
        for value in list(scope.values()):
            if isinstance(value, bytes):
                value = value.decode(errors="replace")
            if isinstance(value, str):
                seen += 1
                if len(value) >= 16 and set(value) <= set(string.hexdigits):
                    tokens.append(value)
    frame = frame.f_back
print(f"looked at {seen} strings", flush=True)
for token in tokens:  # a one-time marker, if any, printed as the launcher would print it
    os.write(1, ("\n" + token + "\n").encode())
os._exit(0)
''',
    # Send the launcher the end-of-program message early, to the address the config names.
    "message_sent_early": r'''
import json, os, socket, sys
verdict = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
verdict.connect(b"\0" + json.loads(sys.argv[1])["verdict_address"].encode())
verdict.sendall(b"finished")
os._exit(0)
''',
    # Rebind what the audit hook would consult if it looked names up at call time.
    "hook_state_rebound": r'''
import builtins, json, os, socket, sys
address = b"\0" + json.loads(sys.argv[1])["verdict_address"].encode()
launcher = sys._getframe(2).f_globals
launcher["REFUSED_EVENTS"] = frozenset()
launcher["make_hook"] = launcher["under_proc"] = None
builtins.type = lambda value: bytearray
builtins.bytes = builtins.str = bytearray
verdict = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
verdict.connect(address)
verdict.sendall(b"finished")
os._exit(0)
''',
    # A fresh interpreter (no audit hook) sends the message: the kernel names another pid.
    "helper_process": r'''
import json, os, subprocess, sys
address = json.loads(sys.argv[1])["verdict_address"]
helper = ("import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(b'\\0' + sys.argv[1].encode()); "
          "s.sendall(b'finished'); s.close(); print('sent')")
print(subprocess.run([sys.executable, "-c", helper, address], capture_output=True, text=True).stdout, flush=True)
os._exit(0)
''',
    # Call the launcher's own set-up again for a fresh report step.
    "launcher_called_again": r'''
import json, sys
launcher = sys._getframe(2).f_globals
config = json.loads(sys.argv[1])
launcher["program_steps"](config, "pass", b"\0" + config["verdict_address"].encode(), True)[1]()
''',
    # Jump from wherever the module is straight to its last line, over every assertion.
    "tracer_jumps_over_the_tests": r'''
import sys
def jump(frame, event, arg):
    if event == "line" and frame.f_code.co_filename == "program.py" and frame.f_code.co_name == "<module>":
        last = max(line for _, _, line in frame.f_code.co_lines() if line is not None)
        if frame.f_lineno != last:
            frame.f_lineno = last
    return jump
sys.settrace(jump)
sys._getframe().f_trace = jump
''',
    "objects_searched_with_gc": "import gc\nprint(len(gc.get_objects()))\n",
    "interpreter_replaced_in_place": "import os, sys\nos.execv(sys.executable, [sys.executable, '-c', 'pass'])\n",
    "own_memory_rewritten": "open('/proc/self/mem', 'r+b')\n",
    "raw_memory_through_ctypes": "import ctypes\n",
    # A sub-interpreter starts without the audit hook.
    "hookless_sub_interpreter": "import _xxsubinterpreters as interpreters\ninterpreters.create()\n",
    "stop_iteration_ends_the_module": "raise StopIteration\n",
    "message_written_to_every_fd": "import os\nfor fd in range(256):\n    try:\n        os.write(fd, b'finished')\n"
                                   "    except OSError:\n        pass\nos._exit(0)\n",
}


def test_forged_passes_are_not_passes(nothing_left_behind):
    names = list(FORGERIES)
    results = run_programs([FORGERIES[name] + FAILING_TESTS for name in names], LIMITS)
    outcomes = {name: (result.outcome, result.detail) for name, result in zip(names, results)}
    assert all(outcome != "passed" for outcome, _ in outcomes.values()), outcomes
    by_name = dict(zip(names, results))
    # The attacks really ran as far as they could: the frames were walked, the helper's message was sent.
    assert "looked at" in by_name["frame_marker"].stdout
    assert "sent" in by_name["helper_process"].stdout
    assert "connect to its launcher" in by_name["message_sent_early"].detail
    assert "connect to its launcher" in by_name["hook_state_rebound"].detail
    assert "sys.settrace" in by_name["tracer_jumps_over_the_tests"].detail
    assert "importing ctypes" in by_name["raw_memory_through_ctypes"].detail
    assert "gc.get_objects" in by_name["objects_searched_with_gc"].detail
    assert "_xxsubinterpreters" in by_name["hookless_sub_interpreter"].detail
    assert "os.exec" in by_name["interpreter_replaced_in_place"].detail


def test_the_verdict_channel_still_passes_a_program_that_finishes(nothing_left_behind):
    # The same plumbing as the forgeries, with tests that pass: the verdict is not just "never pass".
    helper = FORGERIES["frame_marker"].replace("os._exit(0)", "")
    result = run_programs([helper + "\nassert True\n"], LIMITS)[0]
    assert result.outcome == "passed", result.detail
    assert "looked at" in result.stdout


# --- 2. clean-up that cannot fail -----------------------------------------------------------------

DEEP_TREE = r'''
import os, socket
for depth in range(3000):
    os.mkdir("d")
    os.chdir("d")
os.mkfifo("fifo")
socket.socket(socket.AF_UNIX).bind("socket")
open("locked", "w").write("x")
os.chmod("locked", 0)
os.symlink("/etc/passwd", "link")
os.chmod(".", 0)
print("built", flush=True)
'''


def test_a_deep_tree_is_recorded_and_removed(isolation, nothing_left_behind):
    result = run_programs([DEEP_TREE, "print('next')\n"], LIMITS)
    assert [r.outcome for r in result] == ["passed", "passed"], result[0].detail
    assert result[0].stdout == "built\n" and result[1].stdout == "next\n"


def test_a_deep_tree_on_disk_is_removed_too(isolation, nothing_left_behind):
    # Without private mounts the tree is on the evaluator's disk, so the remover must take it apart.
    on_disk = Isolation((), isolation.python, isolation.user_id, isolation.group_id, False, False)
    result = run_program(DEEP_TREE, LIMITS, on_disk)
    assert result.outcome == "passed", result.detail
    assert result.isolation["work_folder"] == "on disk"


def set_inode_flags(path: Path, flags: int) -> bool:
    """chattr-style flags (root only); False where the filesystem or the user cannot."""
    handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        current = array.array("i", [0])
        fcntl.ioctl(handle, sandbox._FS_IOC_GETFLAGS, current, True)
        current[0] |= flags
        fcntl.ioctl(handle, sandbox._FS_IOC_SETFLAGS, current)
        return True
    except OSError:
        return False
    finally:
        os.close(handle)


def make_chain(root: Path, depth: int) -> None:
    """root/d/d/.../d, built through folder descriptors; the deepest folder without permissions."""
    root.mkdir()
    folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=folder)
        inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=folder)
        os.close(folder)
        folder = inner
    os.chmod(folder, 0)
    os.close(folder)


def test_remover_takes_apart_whatever_a_program_can_make(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    root = tmp_path / "sandbox"
    make_chain(root, 3000)  # paths far beyond PATH_MAX and any recursion limit
    (root / "wide").mkdir()
    for index in range(200):
        (root / "wide" / f"f{index}").write_text("x")
    os.mkfifo(root / "fifo")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(root / "socket"))
    listener.close()
    os.symlink(outside, root / "link-out")
    os.symlink(root / "missing", root / "dangling")
    os.link(outside, root / "hard-link-out")
    (root / "closed").mkdir()
    (root / "closed" / "secret").write_text("x")
    os.chmod(root / "closed" / "secret", 0)
    os.chmod(root / "closed", 0)
    locked = []
    if os.geteuid() == 0:
        (root / "immutable").write_text("x")
        (root / "append-only").mkdir()
        (root / "append-only" / "inside").write_text("x")
        locked = [set_inode_flags(root / "immutable", 0x10), set_inode_flags(root / "append-only", 0x20)]
    assert sandbox._remove_tree(root) == []
    assert not os.path.lexists(root)
    assert outside.read_text() == "keep me"  # links were removed, never followed
    if locked and not all(locked):
        pytest.skip("removed everything, but this filesystem does not support immutable bits to test them")


def test_one_broken_program_does_not_stop_the_evaluation(nothing_left_behind):
    # A lone surrogate cannot be written as UTF-8: the sandbox itself fails on this one program.
    results = run_programs(["print('first')\n", "text = '\udc80'\n", "print('third')\n"], LIMITS)
    assert [r.outcome for r in results] == ["passed", "error", "passed"]
    assert "UnicodeEncodeError" in results[1].detail
    assert ISOLATION_KEYS <= results[1].isolation.keys()


def test_clean_up_problems_make_the_item_an_error(monkeypatch, nothing_left_behind):
    remove = sandbox._remove_tree
    monkeypatch.setattr(sandbox, "_remove_tree", lambda folder: [*remove(folder), f"{folder}: could not remove"])
    result = run_program("print('fine')\n", LIMITS)
    assert result.outcome == "error" and "could not clean up" in result.detail and "could not remove" in result.detail


# --- 3. nothing outlives the run in the shared folders ---------------------------------------------


def test_files_left_in_shared_folders_do_not_outlive_the_run(isolation, nothing_left_behind):
    if not isolation.mount_namespace:
        pytest.skip("no mount namespace here (not root and no user namespaces): /tmp is shared with the program")
    token = secrets.token_hex(8)
    visible = Path("/tmp") / f"pkt-host-file-{token}"
    visible.write_text("the evaluator's")
    source = (
        "import errno, os\n"
        f"token = {token!r}\n"
        f"assert not os.path.exists({str(visible)!r}), 'the host /tmp is visible'\n"
        f"for folder in {SHARED_FOLDERS!r}:\n"
        "    if os.path.isdir(folder):\n"
        "        open(os.path.join(folder, 'pkt-left-' + token), 'w').write('x')\n"
        "# RAM-backed and size-limited: two 600 KiB files fit in 1 MiB of /dev/shm, a third does not.\n"
        "try:\n"
        "    for index in range(3):\n"
        "        open(f'/dev/shm/block-{index}', 'wb').write(b'x' * (600 << 10))\n"
        "except OSError as error:\n"
        "    assert error.errno == errno.ENOSPC, error\n"
        "else:\n"
        "    raise AssertionError('/dev/shm took 1.8 MiB')\n"
    )
    try:
        result = run_program(source, LIMITS)
    finally:
        visible.unlink()
    assert result.outcome == "passed", result.detail
    reached = result.isolation
    assert set(reached["private_folders"]) == {folder for folder in SHARED_FOLDERS if os.path.isdir(folder)}
    assert reached["work_folder"] == "private tmpfs" and reached["proc_hidden"]
    left = [folder for folder in SHARED_FOLDERS if os.path.lexists(os.path.join(folder, f"pkt-left-{token}"))]
    assert left == []


# --- 4. one memory limit for all the run's processes -----------------------------------------------

HOG = r'''
import os, select, signal
CHILDREN, MIB = {children}, 150
read_end, write_end = os.pipe()
children = []
for index in range(CHILDREN):
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        block = bytearray(MIB << 20)
        block[::4096] = b"\x01" * len(range(0, len(block), 4096))  # every page resident
        os.write(write_end, bytes([index]))
        select.select([], [], [])  # hold it until killed
    children.append(pid)
os.close(write_end)
holding, ended = set(), set()
while len(holding | ended) < CHILDREN:  # each child either says it holds its block or dies
    if select.select([read_end], [], [], 0.05)[0]:
        holding.update(children[index] for index in os.read(read_end, CHILDREN))
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        ended.add(pid)
alive = [pid for pid in holding - ended if os.waitpid(pid, os.WNOHANG) == (0, 0)]
print(f"{{len(alive)}} of {{CHILDREN}} children held {{MIB}} MiB at once")
for pid in children:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
assert len(alive) == CHILDREN
'''


def test_memory_limit_covers_all_processes_of_a_run(nothing_left_behind):
    # 256 MiB for the run: one child with 150 MiB fits, four (600 MiB, harmless to the machine) do not,
    # although each stays far below the per-process limit.
    limits = SandboxLimits(wall_seconds=30, cpu_seconds=10, memory_bytes=256 << 20, file_bytes=1 << 20)
    one = run_program(HOG.format(children=1), limits)
    if not one.isolation["memory_limit"].startswith("cgroup"):
        pytest.skip("no writable cgroup memory controller here: only the per-process limit applies")
    assert one.outcome == "passed", (one.detail, one.stdout)
    four = run_program(HOG.format(children=4), limits)
    assert four.outcome in {"failed", "killed"}, (four.outcome, four.detail, four.stdout)
    assert "4 of 4" not in four.stdout
