"""Where a result came from: the code revision, the command line and the hardware.

The revision is the git commit of the checkout the library runs from, with whether its tree had
uncommitted changes (a dirty tree means the commit alone does not reproduce the result); outside
a checkout (an installed package) it is the package version. Found once per process.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from pkt_core import __version__

PACKAGE_ROOT = Path(__file__).resolve().parent


@lru_cache(maxsize=1)
def code_revision() -> dict:
    """``{package_version, git_commit, git_dirty, source}`` for the code of this process."""
    checkout = PACKAGE_ROOT.parent
    record = {"package_version": __version__, "git_commit": None, "git_dirty": None, "source": "installed package"}
    if not (checkout / ".git").exists():
        return record
    try:
        commit = _git(checkout, "rev-parse", "HEAD")
        # Only the library's own files count: run folders or caches beside it do not make it dirty.
        status = _git(checkout, "status", "--porcelain", "--untracked-files=no", "--", "pkt_core", "pyproject.toml")
    except (OSError, subprocess.SubprocessError):
        return {**record, "source": "git checkout, but git could not be run"}
    return {**record, "git_commit": commit, "git_dirty": bool(status), "source": "git checkout"}


def _git(folder: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10, check=True)
    return done.stdout.strip()


def command_line() -> str | None:
    """The command that started this process, when it is the ``pkt`` command line (else None:
    a run started from Python or the app is described by its config alone)."""
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    if program in ("pkt", "__main__.py") or program.endswith("cli"):
        return " ".join(["pkt", *sys.argv[1:]]) if program == "pkt" else " ".join(sys.argv)
    return None


def hardware_record() -> dict:
    """CPU model and count, memory, GPUs (only when CUDA is already initialised or available)."""
    import torch

    gpus = []
    if torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"cpu": _cpu_model(), "cpu_count": os.cpu_count(), "memory_gib": _memory_gib(), "gpus": gpus,
            "torch_threads": torch.get_num_threads()}


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


def provenance_record() -> dict:
    return {"code": code_revision(), "command": command_line(), "hardware": hardware_record()}
