"""Device choice under torchrun and tensor moves between devices, with CPU-side fakes for GPUs."""

import torch

from pkt_core.models import placement
from pkt_core.models.placement import distributed_local_device, module_device, on_device_of


def test_each_torchrun_rank_takes_its_own_gpu(monkeypatch):
    chosen = []
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert distributed_local_device("auto") == "cuda:2" and chosen == [2]
    assert distributed_local_device("cuda") == "cuda:2"
    assert distributed_local_device("cpu") == "cpu"  # an explicit choice stands
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed_local_device("auto") == "auto"  # one process: auto may shard over all GPUs


def test_moves_happen_only_between_different_devices():
    cpu = torch.ones(2)
    assert on_device_of(cpu, torch.zeros(1)) is cpu  # same device: no copy
    moved = on_device_of(cpu, torch.empty(1, device="meta"))
    assert moved.device.type == "meta"
    layer = torch.nn.Linear(2, 2, device="meta")
    assert module_device(layer).type == "meta" and on_device_of(cpu, layer).device.type == "meta"
    assert module_device(torch.nn.ReLU()) == torch.device("cpu")


def test_resource_monitor_opens_no_cuda_context_on_a_cpu_run(monkeypatch):
    from pkt_core.jobs import resource_monitor

    def forbidden(*args, **kwargs):
        raise AssertionError("a CPU run touched CUDA")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", forbidden)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", forbidden)
    with resource_monitor.PeakMemoryMonitor() as monitor:
        pass
    assert monitor.cost.peak_gpu_bytes is None


def test_resource_monitor_reports_each_gpu_in_use(monkeypatch):
    from pkt_core.jobs import resource_monitor

    peaks = {0: 3 * 2**20, 1: 5 * 2**20, 2: 0}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda index: peaks[index])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda index: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda index: peaks[index])
    with resource_monitor.PeakMemoryMonitor() as monitor:
        pass
    assert monitor.cost.peak_gpu_bytes_per_device == {"cuda:0": 3 * 2**20, "cuda:1": 5 * 2**20}
    assert monitor.cost.peak_gpu_bytes == 8 * 2**20
    assert placement.module_device(torch.nn.Linear(1, 1)).type == "cpu"
