"""Record the residual stream around decoder blocks while a model runs.

:func:`record_residuals` is the low-level context manager: it hooks the chosen decoder layers
and keeps, for the last forward pass, each block's input (``resid_pre``) and output
(``resid_post``), always removing its hooks, even when the forward raises.

:func:`capture_batch` runs one padded batch through it and turns the states into rows
according to :class:`CaptureOptions`: which tokens count (every non-pad token, the mean per
sequence, or the last token), whether position 0 is dropped, and whether tokens of outsized
norm ("massive activations") are dropped. Position ids are derived from the attention mask,
so left and right padding give the same per-token states as unpadded sequences.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from pkt_core.capture.activation_store import SITES, CapturedRows
from pkt_core.errors import CaptureError
from pkt_core.models.architecture import adapter_for
from pkt_core.models.memory import parse_dtype

TOKEN_SELECTIONS = ("all", "mean", "last")


@dataclass(frozen=True)
class CaptureOptions:
    """What to record; saved with every capture so a result says how it was made.

    ``outlier_norm_factor`` k drops a token when, at any captured layer, its ``resid_post`` norm
    exceeds k times the median norm of that sequence's candidate tokens at that layer. The rule is
    per sequence, so the result does not depend on how sequences were batched.
    """

    layers: tuple[int, ...] | None = None
    sites: tuple[str, ...] = SITES
    token_selection: str = "all"
    drop_first_position: bool = False
    outlier_norm_factor: float | None = None
    include_logits: bool = False
    storage_dtype: str = "fp32"

    def __post_init__(self) -> None:
        if self.token_selection not in TOKEN_SELECTIONS:
            raise CaptureError(f"token_selection must be one of {TOKEN_SELECTIONS}, not {self.token_selection!r}")
        unknown = set(self.sites) - set(SITES)
        if unknown or not self.sites:
            raise CaptureError(f"sites must be a non-empty subset of {SITES}; got {tuple(self.sites)}")
        if self.outlier_norm_factor is not None and self.outlier_norm_factor <= 1:
            raise CaptureError(f"outlier_norm_factor must be > 1 (a multiple of the median norm); got {self.outlier_norm_factor}")
        parse_dtype(self.storage_dtype)

    def resolved_layers(self, num_layers: int) -> tuple[int, ...]:
        if self.layers is None:
            return tuple(range(num_layers))
        bad = [layer for layer in self.layers if not 0 <= layer < num_layers]
        if bad:
            raise CaptureError(f"layers {bad} do not exist; the model has layers 0..{num_layers - 1}")
        return tuple(sorted(set(self.layers)))

    def to_record(self) -> dict:
        record = asdict(self)
        record["layers"] = list(self.layers) if self.layers is not None else None
        record["sites"] = list(self.sites)
        return record


@dataclass
class ResidualRecorder:
    """Block inputs and outputs of the last forward pass, per hooked layer (batch x tokens x width)."""

    layers: tuple[int, ...]
    resid_pre: dict[int, torch.Tensor] = field(default_factory=dict)
    resid_post: dict[int, torch.Tensor] = field(default_factory=dict)

    def clear(self) -> None:
        self.resid_pre.clear()
        self.resid_post.clear()


def _hidden_states_argument(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    raise CaptureError("could not find the hidden states among a decoder layer's inputs")


@contextmanager
def record_residuals(model: nn.Module, layers: Sequence[int]) -> Iterator[ResidualRecorder]:
    """Hook ``layers`` of ``model``; the hooks are removed on exit, also after an exception."""
    decoder_layers = adapter_for(model).decoder_layers()
    recorder = ResidualRecorder(tuple(layers))
    handles = []

    def pre_hook(index: int):
        def hook(module, args, kwargs):
            recorder.resid_pre[index] = _hidden_states_argument(args, kwargs).detach()

        return hook

    def post_hook(index: int):
        def hook(module, args, kwargs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            recorder.resid_post[index] = hidden.detach()

        return hook

    try:
        for index in recorder.layers:
            block = decoder_layers[index]
            handles.append(block.register_forward_pre_hook(pre_hook(index), with_kwargs=True))
            handles.append(block.register_forward_hook(post_hook(index), with_kwargs=True))
        yield recorder
    finally:
        for handle in handles:
            handle.remove()
        recorder.clear()


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions count real tokens only, so a left-padded sequence starts at position 0."""
    positions = attention_mask.long().cumsum(dim=1) - 1
    return positions.clamp(min=0) * attention_mask.long()  # pad slots get 0; they are masked anyway


def _kept_token_mask(
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
    post_states: dict[int, torch.Tensor],
    options: CaptureOptions,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, outlier) boolean masks (batch x tokens): which real tokens become rows."""
    candidate = attention_mask.bool()
    if options.drop_first_position:
        candidate = candidate & (positions > 0)
    outlier = torch.zeros_like(candidate)
    if options.outlier_norm_factor is not None:
        for states in post_states.values():
            norms = states.float().norm(dim=-1)  # batch x tokens
            for row in range(norms.shape[0]):
                values = norms[row][candidate[row]]
                if values.numel() == 0:
                    continue
                median = values.median()
                outlier[row] |= candidate[row] & (norms[row] > options.outlier_norm_factor * median)
    return candidate & ~outlier, outlier


def capture_batch(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    options: CaptureOptions,
    sequence_ids: Sequence[int] | None = None,
) -> CapturedRows:
    """Run one padded batch and return its rows (see :class:`CaptureOptions`)."""
    num_layers = adapter_for(model).num_layers
    layers = options.resolved_layers(num_layers)
    device = adapter_for(model).input_embeddings().weight.device
    input_ids = input_ids.to(device)
    attention_mask = attention_mask.to(device)
    positions = position_ids_from_mask(attention_mask)
    if sequence_ids is None:
        sequence_ids = range(input_ids.shape[0])
    sequence_tensor = torch.as_tensor(list(sequence_ids), dtype=torch.int64)

    with torch.no_grad(), record_residuals(model, layers) as recorder:
        output = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False)
        named = {("pre", layer): recorder.resid_pre[layer] for layer in layers}
        named.update({("post", layer): recorder.resid_post[layer] for layer in layers})
        if options.include_logits:
            named[("logits", 0)] = output.logits
        host = tensors_to_host_float32(named)
    pre = {layer: host[("pre", layer)] for layer in layers}
    post = {layer: host[("post", layer)] for layer in layers}
    logits = host[("logits", 0)] if options.include_logits else None

    attention_cpu, positions_cpu, ids_cpu = attention_mask.cpu(), positions.cpu(), input_ids.cpu()
    kept, outlier = _kept_token_mask(attention_cpu, positions_cpu, post, options)
    dropped = [
        (int(sequence_tensor[row]), int(positions_cpu[row, column]))
        for row, column in outlier.nonzero().tolist()
    ]
    per_site = {"resid_pre": pre, "resid_post": post}
    storage_dtype = parse_dtype(options.storage_dtype)

    def select(states: torch.Tensor) -> torch.Tensor:
        return _select_rows(states, kept, options.token_selection)

    activations: dict[tuple[int, str], torch.Tensor] = {}
    for layer in layers:
        for site in options.sites:
            states = post[layer] - pre[layer] if site == "contribution" else per_site[site][layer]
            rows = select(states)
            _raise_on_non_finite(rows, layer, site, sequence_tensor)
            activations[(layer, site)] = rows.to(storage_dtype)
    row_sequence, row_position, row_token = _row_keys(kept, positions_cpu, ids_cpu, sequence_tensor, options.token_selection)
    return CapturedRows(
        activations=activations,
        sequence_id=row_sequence,
        position=row_position,
        token_id=row_token,
        logits=select(logits).to(storage_dtype) if logits is not None else None,
        dropped_outliers=dropped,
    )


def tensors_to_host_float32(tensors: dict) -> dict:
    """Every tensor as float32 on the CPU. GPU tensors are cast on the device, then copied
    asynchronously into pinned host memory with one wait per device at the end, instead of one
    blocking copy from pageable memory per layer."""
    host: dict = {}
    waits: set[torch.device] = set()
    for key, tensor in tensors.items():
        if tensor.device.type != "cuda":
            host[key] = tensor.to("cpu", torch.float32)
            continue
        source = tensor.to(torch.float32)
        target = torch.empty(source.shape, dtype=torch.float32, pin_memory=True)
        target.copy_(source, non_blocking=True)
        host[key] = target
        waits.add(tensor.device)
    for device in waits:
        torch.cuda.current_stream(device).synchronize()
    return host


def _select_rows(states: torch.Tensor, kept: torch.Tensor, selection: str) -> torch.Tensor:
    if selection == "all":
        return states[kept]
    has_any = kept.any(dim=1)
    if selection == "mean":
        weights = kept.to(states.dtype).unsqueeze(-1)
        means = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
        return means[has_any]
    last_index = _last_kept_index(kept)
    gathered = states[torch.arange(states.shape[0]), last_index]
    return gathered[has_any]


def _last_kept_index(kept: torch.Tensor) -> torch.Tensor:
    columns = torch.arange(kept.shape[1]).expand_as(kept)
    return torch.where(kept, columns, torch.full_like(columns, -1)).max(dim=1).values.clamp(min=0)


def _row_keys(kept, positions, input_ids, sequence_ids, selection):
    if selection == "all":
        rows, columns = kept.nonzero(as_tuple=True)
        return sequence_ids[rows], positions[rows, columns], input_ids[rows, columns]
    has_any = kept.any(dim=1)
    if selection == "mean":
        count = int(has_any.sum())
        minus_one = torch.full((count,), -1, dtype=torch.int64)
        return sequence_ids[has_any], minus_one, minus_one.clone()
    last_index = _last_kept_index(kept)
    batch = torch.arange(kept.shape[0])
    return (
        sequence_ids[has_any],
        positions[batch, last_index][has_any],
        input_ids[batch, last_index][has_any],
    )


def _raise_on_non_finite(rows: torch.Tensor, layer: int, site: str, sequence_ids: torch.Tensor) -> None:
    if torch.isfinite(rows).all():
        return
    bad = int((~torch.isfinite(rows)).any(dim=-1).sum())
    raise CaptureError(
        f"{bad} rows of layer {layer} ({site}) hold NaN or inf (sequences {sequence_ids.tolist()[:8]}...). "
        f"Nothing was written. Likely causes: fp16 overflow (use --dtype fp32 or bf16) or broken weights."
    )
