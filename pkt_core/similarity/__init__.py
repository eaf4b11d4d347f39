"""Representation similarity: how similar is every layer of model A to every layer of model B?

Measures (samples are rows; ``n x d1`` against ``n x d2``): linear and RBF CKA with the
biased or unbiased HSIC estimator, mean CCA, SVCCA, PWCCA, orthogonal Procrustes, and
mutual k-NN overlap. Each is registered in :data:`MEASURES` with its declared invariances
and whether it is a score or a distance. :func:`layer_similarity_matrix` compares all
layer pairs at once; :class:`MinibatchCKA` accumulates CKA over batches and processes.
"""

from pkt_core.similarity.cca import mean_cca, pwcca, svcca
from pkt_core.similarity.cka import (
    linear_cka,
    linear_cka_matrix,
    rbf_cka,
    rbf_cka_matrix,
)
from pkt_core.similarity.errors import (
    DegenerateRepresentationError,
    SimilarityWarning,
    UnknownMeasureError,
)
from pkt_core.similarity.layer_matrix import layer_similarity_matrix, similarity
from pkt_core.similarity.measures import (
    MEASURES,
    Invariance,
    Kind,
    Measure,
    get_measure,
    measure_names,
)
from pkt_core.similarity.minibatch import MinibatchCKA
from pkt_core.similarity.neighbours import mutual_knn_overlap
from pkt_core.similarity.procrustes import procrustes_distance, procrustes_similarity
from pkt_core.similarity.result import LayerMatrix

__all__ = [
    "MEASURES",
    "DegenerateRepresentationError",
    "Invariance",
    "Kind",
    "LayerMatrix",
    "Measure",
    "MinibatchCKA",
    "SimilarityWarning",
    "UnknownMeasureError",
    "get_measure",
    "layer_similarity_matrix",
    "linear_cka",
    "linear_cka_matrix",
    "mean_cca",
    "measure_names",
    "mutual_knn_overlap",
    "procrustes_distance",
    "procrustes_similarity",
    "pwcca",
    "rbf_cka",
    "rbf_cka_matrix",
    "similarity",
    "svcca",
]
