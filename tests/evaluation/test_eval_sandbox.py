"""The sandbox against hostile programs: after each, the parent is alive, nothing leaked, outcome recorded."""

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from pkt_core.evaluation.sandbox import (
    OUTCOMES,
    SandboxError,
    SandboxLimits,
    detect_isolation,
    run_program,
)

LIMITS = SandboxLimits(wall_seconds=6, cpu_seconds=2, memory_bytes=512 << 20, file_bytes=1 << 20)
SANDBOX_MARK = "pkt-sandbox-"  # in every launcher's command line (its program path)


def sandbox_processes() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if SANDBOX_MARK.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def assert_parent_intact(tmp_path: Path) -> None:
    """The evaluator still runs, its files are untouched, and no sandbox process outlived its run."""
    os.kill(os.getpid(), 0)
    assert (tmp_path / "sentinel.txt").read_text() == "mine"
    deadline = time.monotonic() + 10  # SIGKILL lands asynchronously: give stragglers a moment to vanish
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_processes() == []


@pytest.fixture
def parent(tmp_path):
    (tmp_path / "sentinel.txt").write_text("mine")
    yield tmp_path
    assert_parent_intact(tmp_path)


@pytest.fixture(scope="module")
def isolation():
    return detect_isolation()


def test_plain_outcomes(parent):
    passed = run_program("print('hello')\nassert 1 + 1 == 2\n", LIMITS)
    assert (passed.outcome, passed.stdout) == ("passed", "hello\n")
    failed = run_program("def f():\n    return 1\nassert f() == 2, 'f is wrong'\n", LIMITS)
    assert failed.outcome == "failed" and "f is wrong" in failed.detail
    broken = run_program("def f(:\n", LIMITS)
    assert broken.outcome == "error" and "SyntaxError" in broken.detail
    assert {passed.outcome, failed.outcome, broken.outcome} <= set(OUTCOMES)


def test_infinite_loop_hits_the_cpu_limit_and_sleeping_hits_the_wall_clock(parent):
    spinning = run_program("while True:\n    pass\n", LIMITS)
    assert spinning.outcome == "timeout" and "CPU-time" in spinning.detail
    sleeping = run_program("import time\ntime.sleep(600)\n", SandboxLimits(wall_seconds=1.5, cpu_seconds=2))
    assert sleeping.outcome == "timeout" and "wall-clock" in sleeping.detail


def test_fork_bomb_is_contained(parent):
    result = run_program("import os\nwhile True:\n    os.fork()\n", LIMITS)
    assert result.outcome in {"error", "timeout", "killed"}


def test_huge_allocation_fails_inside_the_child(parent):
    result = run_program("block = bytearray(64 << 30)\n", LIMITS)
    assert result.outcome == "error" and "MemoryError" in result.detail


def test_file_size_limit(parent):
    result = run_program("open('big.bin', 'wb').write(b'x' * (8 << 20))\n", LIMITS)
    assert result.outcome in {"error", "killed"}
    assert "File too large" in result.detail or "file-size" in result.detail


def test_sys_exit_inside_a_test_is_not_a_pass(parent):
    exits = {
        "sys.exit(0)": "import sys\ndef check():\n    sys.exit(0)\n    assert False\ncheck()\n",
        "os._exit(0)": "import os\nos._exit(0)\nassert False\n",
        "raise SystemExit": "raise SystemExit\n",
    }
    for label, source in exits.items():
        result = run_program(source, LIMITS)
        assert result.outcome == "error", label


def test_no_secret_of_the_parent_reaches_the_child(parent, monkeypatch, isolation):
    monkeypatch.setenv("PKT_FAKE_API_TOKEN", "s3cret-value")
    source = (
        "import os\n"
        "assert 'PKT_FAKE_API_TOKEN' not in os.environ\n"
        "assert not any('s3cret-value' in value for value in os.environ.values())\n"
        "print(sorted(os.environ))\n"
    )
    if isolation.pid_namespace or isolation.user_id is not None:
        source += (
            "try:\n"
            f"    leaked = 's3cret-value' in open('/proc/{os.getpid()}/environ', errors='replace').read()\n"
            "except OSError:\n"
            "    leaked = False\n"
            "assert not leaked\n"
        )
    result = run_program(source, LIMITS)
    assert result.outcome == "passed", result.detail


def test_writing_outside_the_sandbox_folder_is_blocked(parent, isolation):
    if isolation.user_id is None:
        pytest.skip("the sandbox runs as the evaluator's own user here, so file permissions cannot stop it")
    target = parent / "escaped.txt"
    source = (
        "import os\n"
        "print(os.getcwd())\n"
        "open('inside.txt', 'w').write('fine')\n"
        f"for path in ({str(target)!r}, '../escaped.txt', {str(parent / 'sentinel.txt')!r}):\n"
        "    try:\n"
        "        open(path, 'w').write('escaped')\n"
        "    except OSError as error:\n"
        "        print('blocked', path, type(error).__name__)\n"
        "    else:\n"
        "        raise AssertionError('wrote ' + path)\n"
    )
    result = run_program(source, LIMITS)
    assert result.outcome == "passed", result.detail
    assert result.stdout.count("blocked") == 3
    assert not target.exists()
    assert not Path(result.stdout.splitlines()[0]).exists()  # the sandbox folder is gone


def test_killing_its_parent_does_not_reach_the_evaluator(parent, isolation):
    if not isolation.pid_namespace and isolation.user_id is None:
        pytest.skip("no PID namespace and no separate user here: a same-user program could signal the evaluator")
    source = (
        "import os, signal\n"
        f"for pid in (os.getppid(), {os.getpid()}):\n"
        "    try:\n"
        "        os.kill(pid, signal.SIGKILL)\n"
        "    except OSError as error:\n"
        "        print('refused', pid, type(error).__name__)\n"
        "print('still here')\n"
    )
    result = run_program(source, LIMITS)
    assert result.outcome in OUTCOMES
    os.kill(os.getpid(), 0)  # we are alive to read the outcome
    own_group = run_program("import os, signal\nos.killpg(0, signal.SIGKILL)\n", LIMITS)
    assert own_group.outcome == "killed"


def test_no_network_where_the_os_allows(parent, isolation):
    if not isolation.network_disabled:
        pytest.skip("no network namespace available here (not root and no unprivileged user namespaces)")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        result = run_program(
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')\n", LIMITS)
        assert result.outcome == "error" and "connected" not in result.stdout
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()


def test_isolation_is_recorded_and_limits_are_checked(isolation):
    described = isolation.describe()
    assert {"command_prefix", "python", "user_id", "network_disabled", "pid_namespace", "mount_namespace"} \
        <= described.keys()
    # Every result says what its own run reached, which can be less than the mode promises.
    reached = run_program("pass\n", LIMITS).isolation
    assert {"namespaces", "user", "memory_limit", "private_folders", "work_folder", "proc_hidden"} <= reached.keys()
    assert ("pid" in reached["namespaces"]) == isolation.pid_namespace
    assert (reached["user"] is not None) == (isolation.user_id is not None)
    with pytest.raises(SandboxError, match="too small"):
        SandboxLimits(memory_bytes=1024)


def test_signals_other_than_ours_are_reported_as_killed(parent):
    result = run_program(f"import os\nos.kill(os.getpid(), {int(signal.SIGSEGV)})\n", LIMITS)
    assert result.outcome == "killed" and "SIGSEGV" in result.detail
