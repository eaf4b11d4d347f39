"""Wall time and peak memory of a stretch of work, on the CPU (sampled RSS) and on GPUs.

GPU peaks are read per device, and only on devices this process has already put to work: a CPU
run never opens a CUDA context (which alone costs hundreds of MB per GPU and seconds of start-up),
and a torchrun rank reports its own GPU, not its neighbours'.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import torch


def _rss_bytes() -> int:
    try:
        with open(f"/proc/{os.getpid()}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil

        return int(psutil.Process().memory_info().rss)


@dataclass
class StageCost:
    wall_seconds: float = 0.0
    peak_rss_bytes: int = 0
    peak_gpu_bytes: int | None = None
    peak_gpu_bytes_per_device: dict[str, int] | None = None

    def to_record(self) -> dict:
        """The manifest's per-stage record (GPU peak summed over devices; see :meth:`per_device_record`)."""
        return {
            "wall_seconds": round(self.wall_seconds, 3),
            "peak_rss_mib": round(self.peak_rss_bytes / 2**20, 1),
            "peak_gpu_mib": None if self.peak_gpu_bytes is None else round(self.peak_gpu_bytes / 2**20, 1),
        }

    def per_device_record(self) -> dict[str, float]:
        """Peak GPU MiB per device in use (``{}`` on a CPU run)."""
        return {name: round(value / 2**20, 1) for name, value in (self.peak_gpu_bytes_per_device or {}).items()}


def active_cuda_devices() -> list[int]:
    """GPUs this process has a CUDA context on; empty (and no context created) for a CPU run."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return []
    return [index for index in range(torch.cuda.device_count())
            if torch.cuda.memory_reserved(index) > 0 or index == torch.cuda.current_device()]


class PeakMemoryMonitor:
    """Context manager: samples the process RSS every ``interval`` seconds in a thread (CPU
    memory has no allocator counter to reset), and reads CUDA's own peak counters."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.cost = StageCost()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.cost.peak_rss_bytes = max(self.cost.peak_rss_bytes, _rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemoryMonitor":
        self._devices = active_cuda_devices()
        for index in self._devices:
            torch.cuda.reset_peak_memory_stats(index)
        self._started = time.monotonic()
        self.cost.peak_rss_bytes = _rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.cost.peak_rss_bytes = max(self.cost.peak_rss_bytes, _rss_bytes())
        self.cost.wall_seconds = time.monotonic() - self._started
        # Devices first used during the stage count too (their peak is since their first use).
        devices = sorted(set(self._devices) | set(active_cuda_devices()))
        if devices:
            per_device = {f"cuda:{index}": int(torch.cuda.max_memory_allocated(index)) for index in devices}
            self.cost.peak_gpu_bytes_per_device = per_device
            self.cost.peak_gpu_bytes = sum(per_device.values())
