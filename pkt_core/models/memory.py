"""Estimate how much memory a model needs before loading it, and refuse with the numbers."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pkt_core.errors import MemoryBudgetError

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}

# Room for activations, the KV cache of a short batch and allocator slack on top of the weights.
HEADROOM_FRACTION = 0.15
HEADROOM_FIXED_BYTES = 256 * 2**20


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise MemoryBudgetError(f"unknown dtype {name!r}; use one of fp32, bf16, fp16") from None


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int
    dtype: torch.dtype

    @property
    def weight_bytes(self) -> int:
        return self.parameters * torch.finfo(self.dtype).bits // 8

    @property
    def required_bytes(self) -> int:
        return int(self.weight_bytes * (1 + HEADROOM_FRACTION)) + HEADROOM_FIXED_BYTES


def count_parameters_from_config(config) -> int:
    """Exact parameter count of the model a config describes, built on the meta device (no memory)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    # Tied weights are one tensor: count each storage once.
    seen: set[int] = set()
    total = 0
    for parameter in model.parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        total += parameter.numel()
    return total


def available_cpu_bytes() -> int:
    """Memory the OS says a new allocation can get (MemAvailable), falling back to psutil."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return int(psutil.virtual_memory().available)


def available_device_bytes(device: str) -> dict[str, int]:
    """Free bytes per device the placement ``device`` would use ('cpu', 'cuda:i', 'auto')."""
    if device == "cpu":
        return {"cpu": available_cpu_bytes()}
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MemoryBudgetError(
                f"device {device!r} was requested but this machine has no CUDA GPU "
                f"(torch {torch.__version__}); use --device cpu."
            )
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise MemoryBudgetError(
                f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)."
            )
        free, _total = torch.cuda.mem_get_info(index)
        return {f"cuda:{index}": int(free)}
    if device == "auto":
        if not torch.cuda.is_available():
            return {"cpu": available_cpu_bytes()}
        return {f"cuda:{i}": int(torch.cuda.mem_get_info(i)[0]) for i in range(torch.cuda.device_count())}
    raise MemoryBudgetError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto")


def check_fits(label: str, estimate: MemoryEstimate, device: str) -> dict[str, int]:
    """Raise :class:`MemoryBudgetError` with the numbers when the model cannot fit; return free bytes."""
    free = available_device_bytes(device)
    total_free = sum(free.values())
    need = estimate.required_bytes
    # Sharding splits at layer boundaries, so every shard also needs some slack: demand it of the sum.
    if need > total_free:
        smaller = [
            f"{name} needs about {MemoryEstimate(estimate.parameters, dtype).required_bytes / 2**30:.1f} GiB"
            for name, dtype in (("bf16", torch.bfloat16),)
            if estimate.dtype == torch.float32
        ]
        where = ", ".join(f"{name}: {value / 2**30:.1f} GiB free" for name, value in free.items())
        hint = f" Try --dtype bf16 ({smaller[0]})." if smaller else ""
        if device.startswith("cuda:") or device == "cuda":
            hint += " Or --device auto to shard it over all GPUs."
        raise MemoryBudgetError(
            f"{label} does not fit: {estimate.parameters / 1e9:.2f} B parameters in "
            f"{dtype_name(estimate.dtype)} need about {need / 2**30:.1f} GiB "
            f"({estimate.weight_bytes / 2**30:.1f} GiB of weights + headroom); {where}.{hint}"
        )
    return free
