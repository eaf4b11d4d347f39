"""Where tensors and models go when a run spans several devices.

Under ``--device auto`` a model may be sharded over several GPUs (an accelerate device map):
the embeddings sit on the first, the final norm and LM head on the last. Any two tensors that
meet must first be brought to one device; the helpers here are the one way the code does it.
Under ``torchrun`` every rank takes its own GPU instead of sharding over all of them.
"""

from __future__ import annotations

import itertools
import os

import torch

from pkt_core.errors import PktError


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); CPU for a module with neither."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        return tensor.device
    return torch.device("cpu")


def on_device_of(tensor: torch.Tensor, reference: torch.Tensor | torch.nn.Module) -> torch.Tensor:
    """``tensor`` moved (when needed) to the device of ``reference`` (a tensor or a module)."""
    device = reference.device if isinstance(reference, torch.Tensor) else module_device(reference)
    return tensor if tensor.device == device else tensor.to(device)


def distributed_local_device(device: str) -> str:
    """Under torchrun, ``auto`` / ``cuda`` mean this rank's own GPU (``cuda:LOCAL_RANK``), which
    becomes the current device; elsewhere ``device`` is returned unchanged."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or device not in {"auto", "cuda"}:
        return device
    if not torch.cuda.is_available():
        return "cpu" if device == "auto" else device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if local_rank >= torch.cuda.device_count():
        raise PktError(f"LOCAL_RANK {local_rank} but this machine has {torch.cuda.device_count()} GPU(s)")
    torch.cuda.set_device(local_rank)
    return f"cuda:{local_rank}"
