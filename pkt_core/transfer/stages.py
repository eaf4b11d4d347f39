"""Which target layers a run trains (the frontier schedule's stages), and the cancellation every
stage checks between steps."""

from __future__ import annotations

from pkt_core.errors import PktError
from pkt_core.models.loading import LoadedModel
from pkt_core.transfer.config import TransferConfig


class TransferCancelled(PktError):
    """The user cancelled the run; the partial run stays resumable and is marked cancelled."""


def frontier_layers(target: LoadedModel, config: TransferConfig) -> list[int]:
    """The target layers the frontier schedule trains (``config.stages``, default all)."""
    count = target.adapter.num_layers
    layers = list(config.stages) if config.stages is not None else list(range(count))
    bad = [k for k in layers if not 0 <= k < count]
    if bad:
        raise PktError(f"stages {bad} are not target layers (0..{count - 1})")
    return layers
