"""The registry of similarity measures, each with what it promises.

A measure declares whether it is a *score* (higher = more similar) or a *distance*
(lower = more similar), its range, whether it is symmetric, and the transformations of
one input that leave it unchanged. The tests check every declared invariance on random
data, so the declarations are claims the code keeps, not documentation only.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pkt_core.similarity import cca, cka, neighbours, procrustes
from pkt_core.similarity.errors import UnknownMeasureError
from pkt_core.similarity.result import LayerMatrix
from pkt_core.similarity.validation import MIN_ROWS_UNBIASED


class Invariance(str, Enum):
    """A transformation ``X -> f(X)`` of one representation that a measure ignores."""

    PERMUTATION = "permutation"  # reorder the features (columns)
    ORTHOGONAL = "orthogonal"  # X Q with Q'Q = I (includes permutations)
    ISOTROPIC_SCALING = "isotropic_scaling"  # c X, c > 0
    TRANSLATION = "translation"  # X + 1 b'
    INVERTIBLE_LINEAR = "invertible_linear"  # X A with A invertible (includes all of the above)


class Kind(str, Enum):
    SCORE = "score"  # higher means more similar
    DISTANCE = "distance"  # lower means more similar; 0 for identical inputs


_SIMILARITY_GROUP = frozenset(
    {Invariance.PERMUTATION, Invariance.ORTHOGONAL, Invariance.ISOTROPIC_SCALING, Invariance.TRANSLATION}
)


@dataclass(frozen=True)
class Measure:
    """One registered measure: a pair function, an all-layer-pairs function, and its declarations."""

    name: str
    kind: Kind
    invariances: frozenset[Invariance]
    symmetric: bool
    value_range: tuple[float, float]
    min_rows: int
    description: str
    reference: str
    pair: Callable[..., float]  # (x, y, **options) -> float
    matrix: Callable[..., LayerMatrix]  # (layers_a, layers_b, *, names_a, names_b, **options)
    options: Mapping[str, Any] = field(default_factory=dict)  # option name -> default

    def check_options(self, options: Mapping[str, Any]) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            accepted = ", ".join(sorted(self.options)) or "none"
            raise UnknownMeasureError(f"{self.name} has no option {', '.join(unknown)} (it accepts: {accepted}).")

    def __call__(self, x: Any, y: Any, **options: Any) -> float:
        self.check_options(options)
        return self.pair(x, y, **options)

    def layer_matrix(
        self,
        layers_a: Sequence[Any],
        layers_b: Sequence[Any],
        *,
        names_a: Sequence[str] | None = None,
        names_b: Sequence[str] | None = None,
        **options: Any,
    ) -> LayerMatrix:
        self.check_options(options)
        return self.matrix(layers_a, layers_b, names_a=names_a, names_b=names_b, **options)


def _with_estimator(function: Callable[..., Any], estimator: str) -> Callable[..., Any]:
    def bound(*args: Any, **options: Any) -> Any:
        return function(*args, estimator=estimator, **options)

    return bound


_MEASURES: tuple[Measure, ...] = (
    Measure(
        name="linear_cka",
        kind=Kind.SCORE,
        invariances=_SIMILARITY_GROUP,
        symmetric=True,
        value_range=(0.0, 1.0),
        min_rows=2,
        description="Linear CKA, biased HSIC estimator; inflated above 0 for unrelated data at small n.",
        reference="Kornblith et al. 2019, Similarity of Neural Network Representations Revisited",
        pair=_with_estimator(cka.linear_cka, "biased"),
        matrix=_with_estimator(cka.linear_cka_matrix, "biased"),
        options={"form": "auto", "memory_budget_bytes": cka.DEFAULT_MEMORY_BUDGET_BYTES},
    ),
    Measure(
        name="linear_cka_unbiased",
        kind=Kind.SCORE,
        invariances=_SIMILARITY_GROUP,
        symmetric=True,
        value_range=(-1.0, 1.0),
        min_rows=MIN_ROWS_UNBIASED,
        description="Linear CKA, unbiased HSIC estimator: about 0 for unrelated data, can be slightly negative.",
        reference="Song et al. 2012 (unbiased HSIC); Nguyen et al. 2021 (its use for CKA)",
        pair=_with_estimator(cka.linear_cka, "unbiased"),
        matrix=_with_estimator(cka.linear_cka_matrix, "unbiased"),
        options={"form": "auto", "memory_budget_bytes": cka.DEFAULT_MEMORY_BUDGET_BYTES},
    ),
    Measure(
        name="rbf_cka",
        kind=Kind.SCORE,
        invariances=_SIMILARITY_GROUP,  # the median bandwidth scales with the data
        symmetric=True,
        value_range=(0.0, 1.0),
        min_rows=2,
        description="RBF-kernel CKA, biased estimator; sigma^2 = multiplier^2 x median squared pairwise distance.",
        reference="Kornblith et al. 2019",
        pair=_with_estimator(cka.rbf_cka, "biased"),
        matrix=_with_estimator(cka.rbf_cka_matrix, "biased"),
        options={"bandwidth_multiplier": 1.0, "memory_budget_bytes": cka.DEFAULT_MEMORY_BUDGET_BYTES},
    ),
    Measure(
        name="rbf_cka_unbiased",
        kind=Kind.SCORE,
        invariances=_SIMILARITY_GROUP,
        symmetric=True,
        value_range=(-1.0, 1.0),
        min_rows=MIN_ROWS_UNBIASED,
        description="RBF-kernel CKA, unbiased HSIC estimator.",
        reference="Kornblith et al. 2019; Song et al. 2012",
        pair=_with_estimator(cka.rbf_cka, "unbiased"),
        matrix=_with_estimator(cka.rbf_cka_matrix, "unbiased"),
        options={"bandwidth_multiplier": 1.0, "memory_budget_bytes": cka.DEFAULT_MEMORY_BUDGET_BYTES},
    ),
    Measure(
        name="mean_cca",
        kind=Kind.SCORE,
        # Invertible-linear invariance is exact only with regularization = 0 (the default).
        invariances=_SIMILARITY_GROUP | {Invariance.INVERTIBLE_LINEAR},
        symmetric=True,
        value_range=(0.0, 1.0),
        min_rows=2,
        description="Mean canonical correlation (SVD based; ridge-regularised when regularization > 0). "
        "Trivially 1 when rank(X) + rank(Y) > n - 1 without regularisation (reported).",
        reference="Hotelling 1936; Raghu et al. 2017",
        pair=cca.mean_cca,
        matrix=cca.mean_cca_matrix,
        options={"regularization": 0.0},
    ),
    Measure(
        name="svcca",
        kind=Kind.SCORE,
        invariances=_SIMILARITY_GROUP,
        symmetric=True,
        value_range=(0.0, 1.0),
        min_rows=2,
        description="SVCCA: keep the top singular directions (99% of variance, or dims), then mean CCA.",
        reference="Raghu et al. 2017, SVCCA",
        pair=cca.svcca,
        matrix=cca.svcca_matrix,
        options={"variance_fraction": cca.DEFAULT_VARIANCE_FRACTION, "dims": None},
    ),
    Measure(
        name="pwcca",
        kind=Kind.SCORE,
        # The weights sum |<h_i, x_j>| over A's own neurons, so a rotation of A changes them.
        invariances=frozenset({Invariance.PERMUTATION, Invariance.ISOTROPIC_SCALING, Invariance.TRANSLATION}),
        symmetric=False,
        value_range=(0.0, 1.0),
        min_rows=2,
        description="Projection-weighted CCA: correlations weighted by their share of A's neurons (asymmetric).",
        reference="Morcos et al. 2018, Insights on representational similarity ... with CCA",
        pair=cca.pwcca,
        matrix=cca.pwcca_matrix,
        options={"regularization": 0.0},
    ),
    Measure(
        name="procrustes",
        kind=Kind.SCORE,
        invariances=_SIMILARITY_GROUP,
        symmetric=True,
        value_range=(0.0, 1.0),
        min_rows=2,
        description="Orthogonal Procrustes similarity: nuclear norm of X'Y for centred, unit-norm X and Y.",
        reference="Schönemann 1966; Ding et al. 2021, Grounding representation similarity",
        pair=procrustes.procrustes_similarity,
        matrix=procrustes.procrustes_similarity_matrix,
    ),
    Measure(
        name="procrustes_distance",
        kind=Kind.DISTANCE,
        invariances=_SIMILARITY_GROUP,
        symmetric=True,
        value_range=(0.0, 2.0**0.5),
        min_rows=2,
        description="Orthogonal Procrustes distance sqrt(2 - 2 procrustes); a metric, 0 for identical inputs.",
        reference="Williams et al. 2021, Generalized shape metrics on neural representations",
        pair=procrustes.procrustes_distance,
        matrix=procrustes.procrustes_distance_matrix,
    ),
    Measure(
        name="mutual_knn",
        kind=Kind.SCORE,
        # Rows are centred first, so Euclidean and cosine neighbours both keep these.
        invariances=_SIMILARITY_GROUP,
        symmetric=True,
        value_range=(0.0, 1.0),
        min_rows=neighbours.DEFAULT_K + 1,
        description="Mean fraction of shared k nearest neighbours (rank-based); chance is about k/(n-1).",
        reference="Huh et al. 2024, The Platonic Representation Hypothesis",
        pair=neighbours.mutual_knn_overlap,
        matrix=neighbours.mutual_knn_matrix,
        options={"k": neighbours.DEFAULT_K, "neighbour_metric": "euclidean"},
    ),
)

MEASURES: Mapping[str, Measure] = {measure.name: measure for measure in _MEASURES}


def measure_names() -> list[str]:
    return list(MEASURES)


def get_measure(name: str) -> Measure:
    try:
        return MEASURES[name]
    except KeyError:
        close = difflib.get_close_matches(name, MEASURES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownMeasureError(
            f"unknown similarity measure {name!r}.{hint} Known: {', '.join(MEASURES)}."
        ) from None
