"""A minimal LoRA wrapper: SemAlign's frontier layer (v1 appendix: r = 16 on up/down/v/o) and
the peer methods (Seeking Neural Nuggets initialises A and B from an extracted source block)."""

from __future__ import annotations

import math

import torch
from torch import nn

DEFAULT_LORA_TARGETS = ("up_proj", "down_proj", "v_proj", "o_proj")


class LoRALinear(nn.Module):
    """``y = base(x) + scale * B(A(dropout(x)))`` with A random (Kaiming) and B zero: starts as the base.

    Dropout acts on the LoRA path only (as in PEFT), and only while the wrapper is in training mode.
    """

    def __init__(self, base: nn.Linear, rank: int = 16, alpha: float = 16.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        self.rank = rank
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # The factors are float32 whatever the base stores: they are the trained (master) weights,
        # and a bf16 optimizer step would leave most of their small updates unapplied.
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=torch.float32, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=torch.float32, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        base = self.base(inputs)
        # Under autocast the matmuls run in the compute dtype; outside it, the low-rank path runs in
        # float32 and is added in the base output's dtype.
        update = (self.dropout(inputs).to(self.lora_a.dtype) @ self.lora_a.T) @ self.lora_b.T
        return base + self.scale * update.to(base.dtype)

    def initialise_from(self, scaled_b: torch.Tensor, a: torch.Tensor) -> None:
        """Start from a given low-rank update ``scaled_b @ a`` (B is stored divided by ``scale``)."""
        if scaled_b.shape != self.lora_b.shape or a.shape != self.lora_a.shape:
            raise ValueError(f"LoRA factors of shape {tuple(scaled_b.shape)} and {tuple(a.shape)} do not fit "
                             f"B {tuple(self.lora_b.shape)} and A {tuple(self.lora_a.shape)}")
        with torch.no_grad():
            self.lora_b.copy_(scaled_b / self.scale)
            self.lora_a.copy_(a)

    def scaled_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale * B, A)``: the pair a run's weight delta stores (``.lora_b`` / ``.lora_a``)."""
        return (self.scale * self.lora_b).detach().clone(), self.lora_a.detach().clone()

    def merged_weight(self) -> torch.Tensor:
        """The merged weight in the base's dtype: the float32 sum rounded once."""
        total = self.base.weight.float() + self.scale * self.lora_b @ self.lora_a
        return total.to(self.base.weight.dtype)


def attach_lora(block: nn.Module, targets: tuple[str, ...] = DEFAULT_LORA_TARGETS, rank: int = 16, alpha: float = 16.0,
                dropout: float = 0.0) -> list[LoRALinear]:
    """Wrap the named linear layers inside ``block``; returns the wrappers (their A, B train)."""
    wrappers = []
    for parent_name, parent in list(block.named_modules()):
        for child_name, child in list(parent.named_children()):
            if child_name in targets and isinstance(child, nn.Linear):
                wrapper = LoRALinear(child, rank, alpha, dropout)
                setattr(parent, child_name, wrapper)
                wrappers.append(wrapper)
    if not wrappers:
        raise ValueError(f"no linear layer named {targets} in this block; LoRA needs at least one")
    return wrappers


def detach_lora(block: nn.Module) -> None:
    """Put the untouched base layers back without merging (the caller applies the factors itself)."""
    for parent in list(block.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, child_name, child.base)


def merge_lora(block: nn.Module) -> None:
    """Fold every LoRA wrapper in ``block`` back into a plain linear layer with the merged weight."""
    for parent in list(block.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                with torch.no_grad():
                    child.base.weight.copy_(child.merged_weight())
                setattr(parent, child_name, child.base)
