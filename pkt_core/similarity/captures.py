"""Compare two activation captures (``pkt capture`` folders) layer by layer.

Rows are paired by their ``(sequence_id, position)`` key, not by their order: two captures
of the same texts may have dropped different outlier tokens, so only keys present in both
are used, and how many were dropped from each side is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import pkt_core
from pkt_core.capture.activation_store import ActivationSet, open_activations
from pkt_core.errors import ActivationStoreError, SimilarityInputError
from pkt_core.similarity.layer_matrix import layer_similarity_matrix
from pkt_core.similarity.measures import get_measure
from pkt_core.similarity.result import LayerMatrix

FORMAT = "pkt-similarity/1"
MIN_ROWS = 4


@dataclass(frozen=True)
class PairedRows:
    """Which rows of A and of B hold the same (sequence_id, position), in key order."""

    rows_a: np.ndarray  # int64 indices into A's rows
    rows_b: np.ndarray
    keys: np.ndarray  # (n, 2) int64
    n_rows_a: int
    n_rows_b: int

    @property
    def n_used(self) -> int:
        return int(self.rows_a.shape[0])

    def take(self, selected: np.ndarray) -> PairedRows:
        return PairedRows(self.rows_a[selected], self.rows_b[selected], self.keys[selected], self.n_rows_a, self.n_rows_b)


def _encoded_keys(keys: np.ndarray, name: str, position_span: int) -> np.ndarray:
    keys = np.asarray(keys, dtype=np.int64)
    if keys.ndim != 2 or keys.shape[1] != 2:
        raise ActivationStoreError(f"{name}: row keys must be (n x 2) (sequence_id, position); got {keys.shape}.")
    if keys.size and (keys[:, 0].min() < 0 or keys[:, 1].min() < -1):
        raise ActivationStoreError(f"{name}: row keys hold a negative sequence id or a position below -1.")
    # One int64 per row (position -1 marks pooled rows, hence the +1) so NumPy's set routines apply.
    encoded = keys[:, 0] * position_span + (keys[:, 1] + 1)
    if np.unique(encoded).size != encoded.size:
        raise ActivationStoreError(f"{name}: some (sequence_id, position) keys occur twice; rows cannot be paired.")
    return encoded


def pair_rows(keys_a: np.ndarray, keys_b: np.ndarray, name_a: str = "A", name_b: str = "B") -> PairedRows:
    """Pair rows of two captures by identical (sequence_id, position) keys."""
    keys_a, keys_b = np.asarray(keys_a, dtype=np.int64), np.asarray(keys_b, dtype=np.int64)
    largest = max([int(k[:, 1].max()) for k in (keys_a, keys_b) if k.ndim == 2 and k.size] or [0])
    largest_sequence = max([int(k[:, 0].max()) for k in (keys_a, keys_b) if k.ndim == 2 and k.size] or [0])
    span = largest + 2
    if largest_sequence >= np.iinfo(np.int64).max // span:
        raise ActivationStoreError("row keys are too large to pair (sequence ids above 2**63 / positions).")
    encoded_a = _encoded_keys(keys_a, name_a, span)
    encoded_b = _encoded_keys(keys_b, name_b, span)
    _, rows_a, rows_b = np.intersect1d(encoded_a, encoded_b, assume_unique=True, return_indices=True)
    if rows_a.size == 0:
        raise SimilarityInputError(
            f"{name_a} and {name_b} share no (sequence_id, position) rows: they were not captured on the same "
            "texts (or with the same pooling), so their layers cannot be compared."
        )
    return PairedRows(rows_a.astype(np.int64), rows_b.astype(np.int64), keys_a[rows_a], len(keys_a), len(keys_b))


def subsample_rows(paired: PairedRows, max_rows: int | None, seed: int) -> PairedRows:
    """At most ``max_rows`` of the paired rows, drawn without replacement, kept in key order."""
    if max_rows is not None and max_rows < MIN_ROWS:
        raise SimilarityInputError(f"max_rows must be at least {MIN_ROWS}; got {max_rows}.")
    if max_rows is None or paired.n_used <= max_rows:
        return paired
    chosen = np.sort(np.random.default_rng(seed).choice(paired.n_used, size=max_rows, replace=False))
    return paired.take(chosen)


def _model_record(metadata: dict) -> Any:
    model = metadata.get("model")
    return model if model is not None else metadata.get("model_name")


def _check_site(acts: ActivationSet, site: str, name: str) -> None:
    if site not in acts.sites:
        raise SimilarityInputError(f"{name} has no site {site!r}; it captured {acts.sites}.")


def compare_captures(
    folder_a: str | Path,
    folder_b: str | Path,
    *,
    metric: str = "linear_cka",
    site: str = "resid_post",
    max_rows: int | None = None,
    seed: int = 0,
    options: dict[str, Any] | None = None,
) -> tuple[LayerMatrix, dict[str, Any]]:
    """The layer matrix of two captures and the metadata to store next to it."""
    measure = get_measure(metric)
    options = dict(options or {})
    measure.check_options(options)
    acts_a, acts_b = open_activations(folder_a), open_activations(folder_b)
    _check_site(acts_a, site, f"capture A ({folder_a})")
    _check_site(acts_b, site, f"capture B ({folder_b})")
    common = pair_rows(acts_a.row_keys(), acts_b.row_keys())
    # Fewer than 4 rows say nothing about a representation's geometry, whatever the measure.
    min_rows = max(MIN_ROWS, measure.min_rows)
    if common.n_used < min_rows:
        raise SimilarityInputError(
            f"only {common.n_used} rows are common to both captures; {metric} needs at least {min_rows}."
        )
    paired = subsample_rows(common, max_rows, seed)
    token_mismatches = int((acts_a.token_ids()[paired.rows_a] != acts_b.token_ids()[paired.rows_b]).sum())
    layers_a = [acts_a.layer(layer, site)[paired.rows_a] for layer in acts_a.layers]
    layers_b = [acts_b.layer(layer, site)[paired.rows_b] for layer in acts_b.layers]
    result = layer_similarity_matrix(
        layers_a, layers_b, metric,
        names_a=[f"A layer {layer}" for layer in acts_a.layers],
        names_b=[f"B layer {layer}" for layer in acts_b.layers],
        **options,
    )
    notes = list(result.notes)
    if token_mismatches:
        notes.append(
            f"{token_mismatches} of {paired.n_used} paired rows hold different token ids in A and B "
            "(different tokenisers?): those rows compare different tokens."
        )
    metadata = {
        "format": FORMAT,
        "metric": metric,
        "kind": measure.kind.value,
        "symmetric": measure.symmetric,
        "value_range": list(measure.value_range),
        "invariances": sorted(invariance.value for invariance in measure.invariances),
        "rows_are": "layers of A",
        "columns_are": "layers of B",
        "site": site,
        "layers_a": acts_a.layers,
        "layers_b": acts_b.layers,
        "model_a": _model_record(acts_a.metadata),
        "model_b": _model_record(acts_b.metadata),
        "capture_a": str(Path(folder_a).resolve()),
        "capture_b": str(Path(folder_b).resolve()),
        "n_rows": paired.n_used,
        "rows_in_a": common.n_rows_a,
        "rows_in_b": common.n_rows_b,
        "rows_common": common.n_used,
        "rows_dropped_a": common.n_rows_a - common.n_used,
        "rows_dropped_b": common.n_rows_b - common.n_used,
        "max_rows": max_rows,
        "seed": seed,
        "token_mismatches": token_mismatches,
        "options": {**measure.options, **options, **result.options},
        "form": result.form,
        "negative_entries": result.negative_entries,
        "notes": notes,
        "pkt_version": pkt_core.__version__,
    }
    return result, metadata
