"""Models kept loaded between jobs: each one at most once, dropped when a job changed it, unloaded on request.

The job worker holds one :class:`ModelPool` for its lifetime, so a second run on the same pair
does not reload a 1.5B source (the slow part on a CPU), and nothing is ever loaded twice. A
transfer trains its target in place, so after every job :meth:`ModelPool.after_job` compares
each held model's parameters and buffers with what they were when loaded and evicts any that
changed: a pooled model is always the untouched model on disk. The source of a transfer never
changes (no gradient reaches its weights), so it stays.

The comparison is exact and cheap: every in-place write to a tensor (optimizer steps,
``copy_``, ``add_`` under ``no_grad``) bumps the tensor's version counter, and swapping a
module or parameter changes the set of tensor identities; a model with the same identities and
versions holds the same values. (Writes through ``tensor.data`` would bypass the counter;
``pkt_core`` makes none.)

Never imports Streamlit.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from pkt_core.models.loading import LoadedModel, load_model, resolve_model_reference

Loader = Callable[..., LoadedModel]


@dataclass(frozen=True)
class PoolKey:
    """What makes two requests the same model: where it lives, its dtype and its device."""

    location: str
    dtype: str
    device: str


def pool_key(reference: str, dtype: str, device: str) -> PoolKey:
    """The key of a request (a registered name and the path it resolves to are the same model)."""
    location = resolve_model_reference(reference)
    device = "cuda:0" if device == "cuda" else device
    return PoolKey(f"{location.kind}:{location.path_or_id}", str(dtype), str(device))


def weights_state(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """(identity, version) of every parameter and buffer: equal states mean unchanged values."""
    return {name: (id(tensor), tensor._version) for name, tensor in model.state_dict(keep_vars=True).items()}


@dataclass
class PooledModel:
    key: PoolKey
    reference: str
    loaded: LoadedModel
    state: dict[str, tuple[int, int]]
    loaded_at: float = field(default_factory=time.time)
    uses: int = 0

    def record(self) -> dict:
        """What the app shows about a held model."""
        parameters = {id(p): p for p in self.loaded.model.parameters()}.values()
        weight_bytes = sum(p.numel() * p.element_size() for p in parameters)
        return {"name": self.loaded.name, "reference": self.reference, "dtype": self.key.dtype,
                "device": self.key.device, "parameters": self.loaded.parameters,
                "weight_mib": round(weight_bytes / 2**20, 1), "uses": self.uses,
                "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.loaded_at))}


class ModelPool:
    """Loaded models by :class:`PoolKey`; ``loader`` is :func:`~pkt_core.models.loading.load_model` (tests count calls)."""

    def __init__(self, loader: Loader = load_model) -> None:
        self.loader = loader
        self._held: dict[PoolKey, PooledModel] = {}
        self.loads = 0

    def __contains__(self, key: PoolKey) -> bool:
        return key in self._held

    def __len__(self) -> int:
        return len(self._held)

    def get(self, reference: str, dtype: str = "fp32", device: str = "cpu",
            keep: set[PoolKey] | None = None) -> LoadedModel:
        """The model, loaded now only if not held already.

        Before loading, every held model outside ``keep`` (and not this one) is unloaded, so the
        pool never holds more than the current job needs plus what it asked to keep."""
        key = pool_key(reference, dtype, device)
        held = self._held.get(key)
        if held is None:
            self._unload(lambda other: other != key and other not in (keep or set()))
            loaded = self.loader(reference, dtype=dtype, device=device)
            self.loads += 1
            held = PooledModel(key, reference, loaded, weights_state(loaded.model))
            self._held[key] = held
        held.uses += 1
        return held.loaded

    def get_pair(self, source: tuple[str, str, str], target: tuple[str, str, str]) -> tuple[LoadedModel, LoadedModel]:
        """Source and target of one job; the same model on both sides gets a private target copy,
        because the target is trained in place and the source must stay as it is."""
        source_key, target_key = pool_key(*source), pool_key(*target)
        source_model = self.get(*source, keep={target_key})
        if target_key == source_key:
            self.loads += 1
            return source_model, self.loader(target[0], dtype=target[1], device=target[2])
        return source_model, self.get(*target, keep={source_key})

    def after_job(self) -> list[str]:
        """Evict every held model whose weights changed since it was loaded; returns their names."""
        changed = [key for key, held in self._held.items() if weights_state(held.loaded.model) != held.state]
        names = [self._held[key].loaded.name for key in changed]
        self._unload(lambda key: key in changed)
        return names

    def unload(self) -> list[str]:
        """Unload everything (the app's "Unload models"); returns the names unloaded."""
        names = [held.loaded.name for held in self._held.values()]
        self._unload(lambda key: True)
        return names

    def held(self) -> list[dict]:
        return [held.record() for held in self._held.values()]

    def _unload(self, which: Callable[[PoolKey], bool]) -> None:
        doomed = [key for key in self._held if which(key)]
        if not doomed:
            return
        for key in doomed:
            del self._held[key]
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
