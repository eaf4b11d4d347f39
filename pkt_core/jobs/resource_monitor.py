"""Wall time and peak memory of a stretch of work, on the CPU (sampled RSS) and on GPUs."""

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

    def to_record(self) -> dict:
        return {
            "wall_seconds": round(self.wall_seconds, 3),
            "peak_rss_mib": round(self.peak_rss_bytes / 2**20, 1),
            "peak_gpu_mib": None if self.peak_gpu_bytes is None else round(self.peak_gpu_bytes / 2**20, 1),
        }


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
        if torch.cuda.is_available():
            for index in range(torch.cuda.device_count()):
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
        if torch.cuda.is_available():
            self.cost.peak_gpu_bytes = sum(
                torch.cuda.max_memory_allocated(index) for index in range(torch.cuda.device_count())
            )
