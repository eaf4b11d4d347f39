"""The CKA and CCA families on a run's probe rows: every measure, for one view (target x source
before, target x source after, target before x after), as the run format's similarity records.

CCA-family measures (SVCCA, PWCCA, mean CCA) find up to ``d`` canonical directions; with as
many dimensions as rows, or more, every canonical correlation is 1 by construction. So they run
on each layer's principal subspace: the top ``k`` principal directions with ``k`` at most
:data:`MAX_SUBSPACE` and at most one per :data:`MIN_ROWS_PER_DIM` rows, and every record states
``k`` and the share of variance kept per layer. CKA, Procrustes and mutual k-NN use the full
width. Rows are those of the run's linear CKA (a seeded subset of at most 1024 probe tokens, or
the probe sequences' means across tokenizers).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from pkt_core.runs.schema import SimilarityMatrixFile
from pkt_core.similarity import layer_similarity_matrix
from pkt_core.errors import SimilarityInputError
from pkt_core.similarity.measures import get_measure
from pkt_core.similarity.neighbours import DEFAULT_K
from pkt_core.transfer.config import DEFAULT_SIMILARITY_MEASURES

PROBE_MEASURES = DEFAULT_SIMILARITY_MEASURES
CCA_FAMILY = frozenset({"svcca", "pwcca", "mean_cca"})
MAX_SUBSPACE = 64
MIN_ROWS_PER_DIM = 10


def subspace_size(rows: int, widths: Sequence[int]) -> int:
    """k for the CCA family: at most MAX_SUBSPACE, one dimension per MIN_ROWS_PER_DIM rows, the width."""
    return max(1, min(MAX_SUBSPACE, rows // MIN_ROWS_PER_DIM, min(widths)))


def principal_subspace(layer: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """The centred rows in the basis of their top ``k`` principal directions, and the share of
    variance those directions keep."""
    import scipy.linalg

    centred = layer - layer.mean(axis=0, keepdims=True)
    n, d = centred.shape
    k = min(k, n, d)
    total = float(np.einsum("ij,ij->", centred, centred))
    if total == 0:
        return np.zeros((n, k)), 0.0
    # Only the top k eigenpairs of the smaller Gram matrix (the scores of a full SVD, up to the signs of
    # the directions, which no CCA measure sees): a partial symmetric eigensolver costs a fraction of
    # the full SVD that this took before (169 s of a run's 700 s similarity view on 52 layers of the
    # real pair, loaded). The top k are far above the rounding of the Gram matrix (they keep more than
    # half the variance), so squaring loses nothing here.
    gram = centred.T @ centred if d <= n else centred @ centred.T
    values, vectors = scipy.linalg.eigh(gram, subset_by_index=[gram.shape[0] - k, gram.shape[0] - 1], driver="evr")
    values, vectors = values[::-1].clip(min=0.0), vectors[:, ::-1]
    scores = centred @ vectors if d <= n else vectors * np.sqrt(values)
    return scores, float(values.sum() / total)


def probe_similarity_records(
    rows_a: dict[int, torch.Tensor],
    rows_b: dict[int, torch.Tensor],
    view: str,
    rows: str,
    measures: Sequence[str] = PROBE_MEASURES,
) -> tuple[list[SimilarityMatrixFile], dict[str, str]]:
    """One record per measure: rows are the layers of ``rows_a`` (the target), columns those of
    ``rows_b``; the layers share their rows (samples). A measure the rows cannot support (too few
    for it) is left out, and returned with the reason, never filled in."""
    layers_a = [rows_a[layer].double().numpy() for layer in sorted(rows_a)]
    layers_b = [rows_b[layer].double().numpy() for layer in sorted(rows_b)]
    n_rows = layers_a[0].shape[0]
    widths = [layer.shape[1] for layer in layers_a + layers_b]
    records = []
    skipped: dict[str, str] = {}
    subspace = None
    for metric in measures:
        started = time.perf_counter()  # the first CCA measure also pays for the shared projection
        inputs_a, inputs_b, extra_notes, details = layers_a, layers_b, [], {}
        if metric in CCA_FAMILY:
            if subspace is None:
                k = subspace_size(n_rows, widths)
                projected_a = [principal_subspace(layer, k) for layer in layers_a]
                projected_b = [principal_subspace(layer, k) for layer in layers_b]
                subspace = (k, projected_a, projected_b)
            k, projected_a, projected_b = subspace
            inputs_a, inputs_b = [p for p, _ in projected_a], [p for p, _ in projected_b]
            kept_a, kept_b = [v for _, v in projected_a], [v for _, v in projected_b]
            details = {"subspace": {"k": k, "variance_kept_rows": kept_a, "variance_kept_columns": kept_b,
                                    "rule": f"top principal directions, k = min({MAX_SUBSPACE}, rows / "
                                            f"{MIN_ROWS_PER_DIM}, width)"}}
            extra_notes = [f"on each layer's top {k} principal directions ({n_rows} rows: {n_rows / k:.0f} per "
                           f"dimension); variance kept {min(kept_a + kept_b):.1%} to {max(kept_a + kept_b):.1%}"]
        options = {}
        if metric == "mutual_knn":
            # k neighbours out of n rows: at most a quarter of the rows, so the overlap can tell
            # neighbourhoods apart (with k close to n every point is every point's neighbour).
            options["k"] = max(1, min(DEFAULT_K, n_rows // 4))
            if options["k"] < DEFAULT_K:
                extra_notes = [f"k = {options['k']} neighbours (a quarter of the {n_rows} rows; default {DEFAULT_K})"]
        try:
            matrix = layer_similarity_matrix(inputs_a, inputs_b, metric, **options)
        except SimilarityInputError as error:
            skipped[metric] = str(error)
            continue
        measure = get_measure(metric)
        records.append(SimilarityMatrixFile(
            metric=metric, view=view, values=np.asarray(matrix.values, dtype=np.float64).tolist(),
            n_rows=int(matrix.n_rows), notes=extra_notes + list(matrix.notes), rows=rows, kind=measure.kind.value,
            dims_rows=[layer.shape[1] for layer in layers_a], dims_columns=[layer.shape[1] for layer in layers_b],
            options=dict(getattr(matrix, "options", {}) or {}), seconds=round(time.perf_counter() - started, 3),
            **details,
        ))
    return records, skipped
