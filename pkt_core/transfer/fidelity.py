"""A run's decomposition-fidelity table (SemAlign's Figure 2): per model, layer and side of the bases,
how faithfully the probe states survive decomposition onto the bases and recomposition.

By default (``fidelity_scope="sample"``) the table is computed on a sample: :data:`SAMPLE_ROWS`
probe tokens per model, drawn with the run's seed from the rows CKA uses, at :data:`SAMPLE_LAYERS`
layers evenly spaced over depth (first and last included: a per-layer profile keeps its ends and
its shape). ``fidelity_scope="full"`` computes every CKA row at every layer. Either way a row's
value is exactly what the full computation gives on the same token rows of that layer; the
manifest records the scope, the rule and what it kept.

What depends only on a model is read from the per-model cache (:mod:`pkt_core.transfer.model_cache`):
the D x D recomposition operators of both sides (four m-term GEMMs on a 150k vocabulary) and the
head-embedding difference; a second run on the same models computes only the per-layer cosines.
"""

from __future__ import annotations

import torch

from pkt_core.models.loading import LoadedModel
from pkt_core.transfer import semantic_bases
from pkt_core.transfer.config import TransferConfig
from pkt_core.transfer.model_cache import cached_tensors, weights_identity
from pkt_core.transfer.supervision import _final_norm_cpu

SAMPLE_ROWS = 256
SAMPLE_LAYERS = 8
SAMPLE_RULE = (f"{SAMPLE_ROWS} probe tokens per model, drawn with the run's seed from the CKA rows, at "
               f"{SAMPLE_LAYERS} layers evenly spaced over depth (first and last included); "
               "--fidelity-scope full computes every CKA row at every layer")


def sampled_layers(num_layers: int, count: int = SAMPLE_LAYERS) -> list[int]:
    """``count`` layers evenly spaced over ``0 .. num_layers - 1``, both ends included (all when fewer)."""
    if num_layers <= count:
        return list(range(num_layers))
    span = count - 1
    return sorted({(index * (num_layers - 1) + span // 2) // span for index in range(count)})


def sampled_rows(count: int, seed: int, limit: int = SAMPLE_ROWS) -> torch.Tensor:
    """A seeded subset of ``limit`` of ``count`` row indices, in order (all when fewer)."""
    if count <= limit:
        return torch.arange(count)
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:limit].sort().values


def head_embedding_difference(loaded: LoadedModel) -> tuple[bool, float, str]:
    """Whether the model's LM head and input embeddings are tied, their relative difference, and the cache
    status (the difference depends on the stored weights only)."""
    head, embedding = loaded.adapter.lm_head().weight, loaded.adapter.input_embeddings().weight

    def compute() -> dict[str, torch.Tensor]:
        tied, relative = semantic_bases.heads_are_tied(head, embedding)
        return {"tied": torch.tensor([tied]), "relative": torch.tensor([relative], dtype=torch.float64)}

    tensors, status = cached_tensors("head_embedding_difference", weights_identity(loaded), compute)
    return bool(tensors["tied"].item()), float(tensors["relative"].item()), status


def fidelity_rows(
    config: TransferConfig,
    models: dict[str, LoadedModel],
    tokens: dict[str, dict[int, torch.Tensor]],
) -> tuple[list[dict], dict, dict[str, str]]:
    """The fidelity table of ``models`` (role -> model) on their probe token rows (role -> layer -> rows x D).

    Returns the table's rows, the manifest's record of the scope (rule, layers and rows kept per model)
    and the cache status of each per-model piece."""
    full = config.fidelity_scope == "full"
    rows: list[dict] = []
    cache: dict[str, str] = {}
    record: dict = {"scope": config.fidelity_scope, "rule": "every CKA row at every layer" if full else SAMPLE_RULE,
                    "seed": config.seed, "layers": {}, "rows": {}}
    for role, loaded in models.items():
        layer_states = tokens[role]
        layers = sorted(layer_states) if full else [sorted(layer_states)[i] for i in sampled_layers(len(layer_states))]
        available = int(next(iter(layer_states.values())).shape[0])
        kept = torch.arange(available) if full else sampled_rows(available, config.seed)
        record["layers"][role], record["rows"][role] = layers, int(kept.numel())
        tied, relative, cache[f"{role} head-embedding difference"] = head_embedding_difference(loaded)
        norm = _final_norm_cpu(loaded) if config.apply_final_norm else (lambda x: x)
        operators = {}
        for side in semantic_bases.SIDES:
            operators[side], cache[f"{role} {side} operator"] = semantic_bases.model_recomposition_operator(
                loaded, side, config.coefficients)
        for layer in layers:
            normed = norm(layer_states[layer][kept])
            for side, operator in operators.items():
                result = semantic_bases.decomposition_fidelity(normed, operator)
                rows.append({"model": role, "layer": layer, "bases": side, "coefficients": config.coefficients,
                             "final_norm": config.apply_final_norm, "mean_cosine": result.mean_cosine,
                             "std_cosine": result.std_cosine, "rows": result.rows, "scope": config.fidelity_scope,
                             "head_and_embedding_tied": tied, "head_embedding_relative_difference": relative})
    return rows, record, cache
