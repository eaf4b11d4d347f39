"""Which source layer(s) supervise each target layer.

Layer indices here are 0-based decoder-layer indices, as in captures; the paper's formulas are
1-based and are converted at the door. A mapping is a table: target layer -> (source layers,
weights), weights summing to 1.

- ``depth_map`` (v1): ``l(k) = max(1, floor(L_src / L_tgt * k))`` for k = 1..L_tgt.
- ``relocate_critical_layers`` (v1): a critical source layer the depth map skips is moved to the
  first target layer whose mapped source layer is at least as deep.
- ``interpolated_map`` (v1): ``u = L_src k / L_tgt``, supervision ``(1 - lam) h[a] + lam h[b]``.
- ``attribution_monotone_map`` and ``cka_monotone_map`` (v2, reconstructed: the paper's rule
  is not public): one source layer per target layer, monotone in depth, chosen by dynamic
  programming to maximise attribution (with a pull toward the depth map) or CKA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class LayerMapping:
    name: str
    paper_version: str
    source_layers: int
    target_layers: int
    pairs: tuple[tuple[tuple[int, ...], tuple[float, ...]], ...]  # per target layer
    notes: tuple[str, ...] = field(default_factory=tuple)

    def sources_of(self, target_layer: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
        return self.pairs[target_layer]

    def primary_source(self, target_layer: int) -> int:
        layers, weights = self.pairs[target_layer]
        return layers[int(np.argmax(weights))]

    def table(self) -> list[dict]:
        return [
            {"target_layer": k, "source_layers": list(layers), "weights": list(weights)}
            for k, (layers, weights) in enumerate(self.pairs)
        ]

    def to_record(self) -> dict:
        return {"name": self.name, "paper_version": self.paper_version, "source_layers": self.source_layers,
                "target_layers": self.target_layers, "table": self.table(), "notes": list(self.notes)}

    @classmethod
    def from_record(cls, record: dict) -> "LayerMapping":
        pairs = tuple((tuple(row["source_layers"]), tuple(row["weights"])) for row in record["table"])
        return cls(record["name"], record["paper_version"], record["source_layers"], record["target_layers"],
                   pairs, tuple(record.get("notes", ())))

    def source_layers_used(self) -> list[int]:
        return sorted({layer for layers, _ in self.pairs for layer in layers})


def _single(layers: list[int]) -> tuple[tuple[tuple[int, ...], tuple[float, ...]], ...]:
    return tuple(((layer,), (1.0,)) for layer in layers)


def depth_map_one_based(source_layers: int, target_layers: int) -> list[int]:
    """The v1 formula as printed, 1-based in and out: l(k) for k = 1..L_tgt."""
    return [max(1, math.floor(source_layers / target_layers * k)) for k in range(1, target_layers + 1)]


def depth_map(source_layers: int, target_layers: int) -> LayerMapping:
    layers = [l - 1 for l in depth_map_one_based(source_layers, target_layers)]
    return LayerMapping("depth", "v1", source_layers, target_layers, _single(layers))


def relocate_critical_layers(mapping: LayerMapping, critical_source_layers: list[int]) -> LayerMapping:
    """v1: every critical source layer the map skips is paired with the first target layer
    ``k' = min{k : l(k) >= l*}`` (the last target layer if none), replacing that pair."""
    layers = [mapping.primary_source(k) for k in range(mapping.target_layers)]
    notes = list(mapping.notes)
    for critical in sorted(critical_source_layers):
        if critical in layers:
            continue
        candidates = [k for k, layer in enumerate(layers) if layer >= critical]
        k_new = candidates[0] if candidates else mapping.target_layers - 1
        notes.append(f"critical source layer {critical} relocated to target layer {k_new} (was {layers[k_new]})")
        layers[k_new] = critical
    return LayerMapping("depth+critical", "v1", mapping.source_layers, mapping.target_layers, _single(layers), tuple(notes))


def interpolated_map(source_layers: int, target_layers: int) -> LayerMapping:
    """v1 interpolation, computed 1-based as printed, stored 0-based."""
    pairs = []
    for k in range(1, target_layers + 1):
        u = source_layers * k / target_layers
        a = min(max(math.floor(u), 1), source_layers - 1)
        lam = min(max(u - a, 0.0), 1.0)
        b = a + 1
        if lam == 0.0:
            pairs.append(((a - 1,), (1.0,)))
        elif lam == 1.0:
            pairs.append(((b - 1,), (1.0,)))
        else:
            pairs.append(((a - 1, b - 1), (1.0 - lam, lam)))
    return LayerMapping("interpolated", "v1", source_layers, target_layers, tuple(pairs))


def critical_layers_from_attribution(scores: np.ndarray, top_fraction: float = 0.2) -> list[int]:
    """The source layers with the highest attribution (the top ``top_fraction``, at least one)."""
    count = max(1, int(round(top_fraction * len(scores))))
    return sorted(int(i) for i in np.argsort(-np.asarray(scores))[:count])


def _monotone_assignment(gain: np.ndarray, strictly_increasing: bool) -> list[int]:
    """Maximise sum_k gain[k, l_k] over monotone l_1 <= l_2 <= ... (strict if asked), by DP."""
    target_layers, source_layers = gain.shape
    if strictly_increasing and source_layers < target_layers:
        strictly_increasing = False  # impossible: fall back to non-decreasing
    best = np.full((target_layers, source_layers), -np.inf)
    back = np.zeros((target_layers, source_layers), dtype=np.int64)
    best[0] = gain[0]
    for k in range(1, target_layers):
        previous = best[k - 1]
        # running maximum over allowed predecessors
        prefix_best = np.maximum.accumulate(previous)
        prefix_arg = np.zeros(source_layers, dtype=np.int64)
        current = 0
        for l in range(source_layers):
            if previous[l] >= previous[current]:
                current = l
            prefix_arg[l] = current
        for l in range(source_layers):
            limit = l - 1 if strictly_increasing else l
            if limit < 0:
                continue
            best[k, l] = prefix_best[limit] + gain[k, l]
            back[k, l] = prefix_arg[limit]
    layers = [int(np.argmax(best[-1]))]
    for k in range(target_layers - 1, 0, -1):
        layers.append(int(back[k, layers[-1]]))
    return layers[::-1]


def attribution_monotone_map(scores: np.ndarray, target_layers: int, depth_prior: float = 1.0) -> LayerMapping:
    """v2 (reconstructed): one source layer per target layer, strictly increasing, maximising the
    normalised attribution of the chosen layers minus ``depth_prior`` x the relative-depth gap."""
    scores = np.abs(np.asarray(scores, dtype=np.float64))
    source_layers = len(scores)
    normalised = scores / scores.max() if scores.max() > 0 else scores
    depth_gap = np.abs(
        (np.arange(1, source_layers + 1)[None, :] / source_layers) - (np.arange(1, target_layers + 1)[:, None] / target_layers)
    )
    gain = normalised[None, :] - depth_prior * depth_gap * source_layers / 4
    layers = _monotone_assignment(gain, strictly_increasing=True)
    return LayerMapping("attribution-monotone", "v2-reconstructed", source_layers, target_layers, _single(layers),
                        (f"depth_prior={depth_prior}",))


def cka_monotone_map(cka_target_by_source: np.ndarray) -> LayerMapping:
    """v2 (reconstructed): maximise the summed CKA of the pairs under a non-decreasing map."""
    matrix = np.asarray(cka_target_by_source, dtype=np.float64)
    layers = _monotone_assignment(np.nan_to_num(matrix, nan=-1.0), strictly_increasing=False)
    return LayerMapping("cka-monotone", "v2-reconstructed", matrix.shape[1], matrix.shape[0], _single(layers))
