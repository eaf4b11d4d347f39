"""The precision policy: one place that says in which dtype a model stores, computes and trains.

``--dtype`` names a policy:

- ``fp32``: weights and every computation in float32 (the reference).
- ``bf16`` / ``fp16``: weights stay float32 (the master weights that training updates); the
  model's forward runs under autocast, so matmuls and attention run in the low dtype while
  norms, softmaxes and the residual stream stay float32. The LM head always runs in float32
  (its outputs feed softmaxes and log-probabilities over the whole vocabulary).
- ``bf16-weights`` / ``fp16-weights``: the user's explicit choice to *store* the weights in the
  low dtype (half the memory). Tensors that train are still held in float32 while they train,
  and their deltas are kept in float32 and merged by one rounding (:func:`merge_delta`).
- ``auto``: ``bf16`` where the device multiplies natively in bf16 (a CUDA GPU with bf16, a CPU
  with AVX-512 BF16 or AMX), ``fp32`` elsewhere; the policy records what it picked and why.

fp16 trains with a gradient scaler; every training step checks that its loss and gradients are
finite and stops the run with :class:`NonFiniteStepError` (naming stage and step) if not.

Autocast is attached to the model itself (:func:`install_precision`: a pre-hook enters it, an
always-called post-hook leaves it, even when the forward raises), so capture, supervision,
training and evaluation all run under the policy without each caller knowing about it, and
loss arithmetic written outside the model's forward stays float32.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from pkt_core.errors import PktError

POLICY_NAMES = ("fp32", "bf16", "fp16", "bf16-weights", "fp16-weights", "auto")
_LOW = {"bf16": torch.bfloat16, "fp16": torch.float16}
_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
_HANDLES_ATTRIBUTE = "_pkt_precision_handles"


class PrecisionError(PktError):
    """An unknown or unsupported precision was asked for."""


class SlowPrecisionWarning(UserWarning):
    """A low precision was asked for on a CPU that only emulates its matmuls."""


class NonFiniteStepError(PktError):
    """A training step produced a NaN or infinite loss or gradient; the run stops, resumable."""


@dataclass(frozen=True)
class PrecisionPolicy:
    """What a model stores its weights in, what its forward computes in, and how it trains."""

    name: str  # the resolved policy: fp32, bf16, fp16, bf16-weights or fp16-weights
    requested: str  # what the user asked for (``auto`` included)
    reason: str = ""  # why ``auto`` chose this

    @property
    def compute_dtype(self) -> torch.dtype:
        return _LOW.get(self.name.split("-")[0], torch.float32)

    @property
    def weight_dtype(self) -> torch.dtype:
        return self.compute_dtype if self.name.endswith("-weights") else torch.float32

    @property
    def uses_autocast(self) -> bool:
        return self.compute_dtype != torch.float32

    @property
    def needs_grad_scaler(self) -> bool:
        # fp16 has 5 exponent bits: small gradients underflow to zero without loss scaling.
        return self.compute_dtype == torch.float16

    @property
    def is_reference(self) -> bool:
        return self.name == "fp32"

    def fingerprint_suffix(self) -> str:
        """Appended to a model's fingerprint, so that result caches never mix precisions (the plain
        fp32 policy adds nothing: existing fp32 caches stay valid)."""
        return "" if self.is_reference else f"~{self.name}"

    def record(self) -> dict:
        """The manifest's ``precision`` entry (see :func:`precision_record`)."""
        return {
            "policy": self.name,
            "requested": self.requested,
            "reason": self.reason,
            "weights": _NAMES[self.weight_dtype],
            "compute": _NAMES[self.compute_dtype],
            "autocast": self.uses_autocast,
            "lm_head": "fp32",
            "master_weights": "fp32",
            "losses_and_vocabulary_reductions": "fp32",
            "grad_scaler": self.needs_grad_scaler,
            "non_finite_check": "every training step (loss and gradients)",
        }


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX tiles), where autocast pays."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def cuda_has_bf16(device: str) -> bool:
    if not torch.cuda.is_available():
        return False
    index = int(device.split(":")[1]) if device.startswith("cuda:") else None
    if index is not None:
        major, _ = torch.cuda.get_device_capability(index)
        return major >= 8  # Ampere and later
    return bool(torch.cuda.is_bf16_supported())


def resolve_precision(name: str | torch.dtype, device: str = "cpu") -> PrecisionPolicy:
    """The policy for ``name`` on ``device`` (cpu, cuda, cuda:N or auto).

    A ``torch.dtype`` keeps the old meaning of ``load_model(dtype=...)``: weights stored in it.
    """
    asked_by_name = not isinstance(name, torch.dtype)  # a dtype describes a model in memory: no warning
    if isinstance(name, torch.dtype):
        if name not in _NAMES:
            raise PrecisionError(f"unsupported dtype {name}; use fp32, bf16 or fp16")
        name = "fp32" if name == torch.float32 else f"{_NAMES[name]}-weights"
    aliases = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
    text = aliases.get(str(name).lower(), str(name).lower())
    if text not in POLICY_NAMES:
        raise PrecisionError(f"unknown dtype {name!r}; choose one of {', '.join(POLICY_NAMES)}")
    if text != "auto":
        policy = PrecisionPolicy(text, text)
        on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
        if asked_by_name and on_cpu and policy.compute_dtype != torch.float32 and not cpu_has_native_bf16():
            # Measured on an AVX2-only EPYC: bf16 matmuls at about 1/14 of the fp32 rate, fp16 1/9.
            warnings.warn(f"--dtype {text}: this CPU has no native bf16/fp16 matmul (no AVX-512 BF16 or AMX), "
                          f"so {_NAMES[policy.compute_dtype]} matmuls are emulated, about ten times slower than "
                          "fp32 here; use --dtype auto (which picks fp32 on this CPU) or fp32",
                          SlowPrecisionWarning, stacklevel=2)
        return policy
    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if on_gpu:
        if cuda_has_bf16(device):
            return PrecisionPolicy("bf16", "auto", "CUDA device with bf16: bf16 autocast, fp32 master weights")
        return PrecisionPolicy("fp32", "auto", "CUDA device without bf16 (fp16 needs loss scaling): fp32")
    if cpu_has_native_bf16():
        return PrecisionPolicy("bf16", "auto", "CPU with native bf16 matmul (AVX-512 BF16 / AMX): bf16 autocast, "
                                               "fp32 master weights")
    return PrecisionPolicy("fp32", "auto", "CPU without native bf16 matmul: fp32")


def policy_for_weights(dtype: torch.dtype) -> PrecisionPolicy:
    """The policy a model already in memory implies by its weight dtype."""
    return resolve_precision(dtype)


def model_device_type(model: nn.Module) -> str:
    parameter = next(model.parameters(), None)
    return "cpu" if parameter is None or parameter.device.type == "meta" else parameter.device.type


def install_precision(model: nn.Module, lm_head: nn.Module | None, policy: PrecisionPolicy) -> None:
    """Attach the policy to ``model``: autocast around its forward, an fp32 LM head.

    Idempotent (a second call replaces the first). The fp32 policy installs nothing.
    """
    remove_precision(model)
    if not policy.uses_autocast:
        return
    handles = []
    contexts: list[torch.autocast] = []

    def enter(context: torch.autocast) -> None:
        context.__enter__()
        contexts.append(context)

    def leave(*_args) -> None:
        if contexts:
            contexts.pop().__exit__(None, None, None)

    def model_pre_hook(module, args):
        enter(torch.autocast(model_device_type(module), dtype=policy.compute_dtype))

    handles.append(model.register_forward_pre_hook(model_pre_hook))
    handles.append(model.register_forward_hook(lambda module, args, output: leave(), always_call=True))
    if lm_head is not None:
        def head_pre_hook(module, args):
            # The head feeds softmaxes over the whole vocabulary: compute it in the weight's own
            # dtype with autocast off, and hand float32 logits on.
            enter(torch.autocast(module.weight.device.type, enabled=False))
            return (args[0].to(module.weight.dtype), *args[1:])

        def head_post_hook(module, args, output):
            leave()
            return output.float() if isinstance(output, torch.Tensor) else output

        handles.append(lm_head.register_forward_pre_hook(head_pre_hook))
        handles.append(lm_head.register_forward_hook(head_post_hook, always_call=True))
    setattr(model, _HANDLES_ATTRIBUTE, handles)


@contextmanager
def frozen_linears_in_compute_dtype(modules: Iterable[nn.Module], policy: PrecisionPolicy) -> Iterator[int]:
    """While active, hold the frozen ``nn.Linear`` weights and biases inside ``modules`` in the
    policy's compute dtype; yields how many tensors were cast.

    Autocast casts a float32 weight to bf16 at every call and caches the cast only for tensors
    that require grad, so the frozen blocks a frontier stage runs through, forward and backward at
    every minibatch of every step, are cast again each time (7-8% of a real-pair stage's samples
    under py-spy). Autocast's own cast is a plain rounding to the compute dtype, the one done here
    once, so the matmuls see the same operands and give the same results. The float32 tensors are
    put back on exit, whatever happens inside. Nothing is cast without autocast (fp32), for
    tensors already in the compute dtype, or for tensors that train. Pass the decoder blocks, never
    the LM head: it runs in float32 with autocast off.
    """
    held: list[tuple[torch.Tensor, torch.Tensor]] = []
    if policy.uses_autocast:
        for module in modules:
            for linear in (m for m in module.modules() if isinstance(m, nn.Linear)):
                for tensor in (linear.weight, linear.bias):
                    if (tensor is None or tensor.requires_grad or tensor.dtype != torch.float32
                            or not tensor.is_floating_point()):
                        continue
                    held.append((tensor, tensor.data))
                    tensor.data = tensor.data.to(policy.compute_dtype)
    try:
        yield len(held)
    finally:
        for tensor, original in held:
            tensor.data = original


def remove_precision(model: nn.Module) -> None:
    for handle in getattr(model, _HANDLES_ATTRIBUTE, []):
        handle.remove()
    if hasattr(model, _HANDLES_ATTRIBUTE):
        delattr(model, _HANDLES_ATTRIBUTE)


def grad_scaler(policy: PrecisionPolicy, device_type: str) -> torch.amp.GradScaler:
    """A scaler that is a no-op unless the policy computes in fp16."""
    return torch.amp.GradScaler(device_type, enabled=policy.needs_grad_scaler)


def check_finite_step(loss: torch.Tensor | float, parameters: Iterable[torch.nn.Parameter], where: str, step: int,
                      scaler: torch.amp.GradScaler | None = None) -> None:
    """Stop with a clear message when a step's loss (or, without a scaler, a gradient) is not finite.

    With an active fp16 scaler, infinite gradients are the scaler's business (it skips the step
    and lowers the scale); a non-finite loss is not.
    """
    value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
    bad = "loss" if value != value or value in (float("inf"), float("-inf")) else None
    if bad is None and not (scaler is not None and scaler.is_enabled()):
        grads = [p.grad for p in parameters if p.grad is not None]
        if grads and not bool(torch.stack([torch.isfinite(g).all().to("cpu") for g in grads]).all()):
            bad = "gradient"
    if bad is not None:
        raise NonFiniteStepError(
            f"non-finite {bad} ({value}) in {where}, step {step}: the run stops here; its finished stages are "
            "kept and `--resume` continues from this stage. Likely causes: fp16 overflow (use --dtype bf16 or fp32), "
            "a learning rate too high, or broken inputs.")


def merge_delta(weight: torch.Tensor, update: torch.Tensor) -> None:
    """``weight <- weight + update`` with the sum formed in float32 and rounded once to the weight's
    dtype: a bf16 weight gets the nearest bf16 of the exact sum, not a sum of two roundings (which
    loses every update below half a bf16 step)."""
    total = weight.to(torch.float32) + update.to(weight.device, torch.float32)
    weight.copy_(total.to(weight.dtype))


DELTA_STORAGE = ("float32 tensors (trained as float32 master weights); merged by adding in float32 and "
                 "rounding once to the weight's dtype (pkt_core.models.precision.merge_delta)")


def precision_record(requested: str, source: PrecisionPolicy, target: PrecisionPolicy) -> dict:
    """The manifest's ``precision`` entry: what was asked, what each model resolved, how deltas are kept."""
    return {"requested": str(requested), "source": source.record(), "target": target.record(),
            "weights_delta": {"dtype": "fp32", "merge": DELTA_STORAGE}}
