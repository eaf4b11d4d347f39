"""Set-up results that depend only on a model and its inputs, kept on disk between runs.

Much of a run's set-up does not depend on the run: the operators built from a model's semantic
bases (its LM head and embeddings alone), the cross-model map of a pair, the untouched models'
states on a probe set, the source's attribution on a set of alignment samples. Each is stored
once under ``$PKT_HOME/model_cache/<kind>/<key>.safetensors`` and read back by every later run
with the same model and inputs, so that a second run on the same pair pays for training only.

The key of an entry is a digest of everything its value depends on: the model's fingerprint,
which carries its precision policy (``~bf16`` for bf16 autocast, ``~bf16-weights`` for bf16
storage: a result of a forward pass never crosses precisions), the digest of its input tensors
(token ids, masks, row subsets) and the settings that shape the computation (batch size, side,
coefficients). What is computed from the weights alone, with no forward pass, keys on
:func:`weights_identity` instead, which is the same for fp32 and bf16 autocast (both hold the
same float32 weights). A cached value is the stored float32/float64 tensor itself, so a hit gives
bit for bit what the computation gave.

A model changed in place after it was loaded keeps its fingerprint; caches (these, the semantic
bases, the evaluation cache) then describe the model as loaded. Changed models must be wrapped
again (:func:`pkt_core.models.loading.wrap_loaded_model` digests every weight).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pkt_core.models.loading import LoadedModel
from pkt_core.paths import pkt_home

CACHE_FOLDER = "model_cache"
HIT = "cache"
COMPUTED = "computed"


def weights_identity(loaded: LoadedModel) -> str:
    """The fingerprint of a model's stored weights: its fingerprint without the compute-policy
    suffix when the weights are float32 (fp32 and bf16 autocast share one set of weights), with it
    when the weights are stored in a low dtype (``~bf16-weights``: other numbers)."""
    policy = loaded.precision
    if policy is not None and policy.weight_dtype == torch.float32:
        return loaded.fingerprint.removesuffix(policy.fingerprint_suffix())
    return loaded.fingerprint


def inputs_digest(*parts: torch.Tensor | str | float | bool | None) -> str:
    """A digest of tensors (shape, dtype and bytes) and plain settings, in order."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            tensor = part.detach().to("cpu").contiguous()
            digest.update(f"tensor:{tuple(tensor.shape)}:{tensor.dtype}:".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        else:
            digest.update(f"{type(part).__name__}:{part!r};".encode())
    return digest.hexdigest()[:24]


def cache_path(kind: str, key: str) -> Path:
    return pkt_home() / CACHE_FOLDER / kind / f"{key}.safetensors"


def cached_tensors(kind: str, key: str, compute: Callable[[], dict[str, torch.Tensor]]
                   ) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors stored under (kind, key), or ``compute()``'s, stored atomically for next time.

    Returns the tensors and :data:`HIT` or :data:`COMPUTED` (what the manifest records)."""
    path = cache_path(kind, key)
    if path.is_file():
        try:
            return load_file(str(path)), HIT
        except (SafetensorError, OSError):  # a damaged entry is recomputed, never trusted
            path.unlink(missing_ok=True)
    tensors = {name: value.detach().to("cpu").contiguous() for name, value in compute().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(temporary))
    os.replace(temporary, path)
    return tensors, COMPUTED
