"""The optimisation loop of the whole-model peer methods (Seeking Neural Nuggets, LaTen).

Unlike SemAlign's frontier stages (each step a full pass over the alignment samples), these
methods train as their papers do: epochs over the samples in a seeded shuffled order, one
optimizer step per minibatch. Every step becomes one row of ``stage_losses.parquet`` with
``stage_layer = -1`` (the whole model).

Precision: the trained tensors (LoRA factors, hypernetworks) are float32 master weights; the
model computes under its policy's autocast; fp16 gets a gradient scaler, and a step with a NaN
or infinite loss or gradient stops the run (:class:`pkt_core.models.precision.NonFiniteStepError`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from pkt_core.models.loading import LoadedModel
from pkt_core.models.precision import PrecisionPolicy, check_finite_step, grad_scaler, resolve_precision
from pkt_core.transfer.alignment_data import TokenisedSamples
from pkt_core.transfer.forward import answer_loss, forward_to_frontier
from pkt_core.transfer.stages import TransferCancelled

WHOLE_MODEL_STAGE = -1
LossTerms = Callable[[TokenisedSamples], dict[str, torch.Tensor]]
StepCallback = Callable[[str, int, float], None]


def answer_ce(loaded: LoadedModel, batch: TokenisedSamples) -> torch.Tensor:
    """Cross-entropy of the answer tokens through the whole model (LM head on answer rows only)."""
    outputs = forward_to_frontier(loaded, batch, loaded.adapter.num_layers - 1, need_logits=True)
    return answer_loss(outputs.answer_logits, batch)


def minibatch_order(count: int, batch_size: int, epochs: int, seed: int) -> list[list[int]]:
    """Sample indices of every optimizer step: each epoch a fresh seeded permutation, cut in batches."""
    generator = torch.Generator().manual_seed(seed)
    steps = []
    for _ in range(epochs):
        order = torch.randperm(count, generator=generator).tolist()
        steps.extend(order[start : start + batch_size] for start in range(0, count, batch_size))
    return steps


def train_minibatches(
    samples: TokenisedSamples,
    parameters: Sequence[torch.nn.Parameter],
    loss_terms: LossTerms,
    weights: dict[str, float],
    learning_rate: float,
    batch_size: int,
    epochs: int,
    seed: int,
    label: str,
    on_step: StepCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
    precision: PrecisionPolicy | None = None,
) -> list[dict]:
    """AdamW (no weight decay) on ``parameters``; returns one loss record per optimizer step.

    ``precision``: the policy of the model being trained (None: fp32), for the fp16 scaler."""
    parameters = list(parameters)
    low = [p for p in parameters if p.dtype != torch.float32]
    if low:
        raise ValueError(f"{len(low)} trained tensors are {low[0].dtype}, not float32: trained tensors must be "
                         "float32 master weights (a low-precision AdamW step drops most small updates)")
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)
    device_type = parameters[0].device.type if parameters else "cpu"
    scaler = grad_scaler(precision or resolve_precision("fp32"), device_type)
    records: list[dict] = []
    for step, indices in enumerate(minibatch_order(len(samples), batch_size, epochs, seed)):
        if should_cancel is not None and should_cancel():
            raise TransferCancelled(f"cancelled during {label}, step {step}")
        started = time.monotonic()
        optimizer.zero_grad(set_to_none=True)
        terms = loss_terms(samples.select(indices))
        first = next(iter(terms.values()))
        total = sum(weights[name] * value.to(first.device, torch.float32) for name, value in terms.items())
        scaler.scale(total).backward()
        check_finite_step(total, parameters, label, step, scaler)
        scaler.step(optimizer)
        scaler.update()
        loss = float(total.detach())
        records.append({"stage_layer": WHOLE_MODEL_STAGE, "step": step, "loss": loss,
                        **{f"loss_{name}": float(value.detach()) for name, value in terms.items()},
                        "seconds": round(time.monotonic() - started, 3)})
        if on_step is not None:
            on_step(label, step, loss)
    return records
