"""Layer-wise linear probes: how well one layer's states predict a label (the gold answer), per layer.

Per layer, a multinomial logistic regression (scikit-learn: :class:`~sklearn.preprocessing.StandardScaler`
fitted on the training folds, then :class:`~sklearn.linear_model.LogisticRegression`, L2, ``C`` =
:data:`INVERSE_REGULARISATION` fixed a priori, never tuned on the probe items, lbfgs) is
cross-validated with stratified, seeded k-fold (k = :data:`FOLDS`; fewer when the rarest label has
fewer items than that). The folds depend only on the labels and the seed, so every layer of every
model is scored on the same folds and the per-layer numbers are paired.

Per layer it reports the pooled out-of-fold accuracy (correct / n) with a Wilson 95% interval over
the n out-of-fold predictions, the mean and sample standard deviation of the fold accuracies, the
out-of-fold log loss (nats), and two chance levels: the majority label's share (the accuracy of
always giving the commonest label) and the labels' entropy (the log loss of giving the label
frequencies).

Width is not reduced. Measured on the 2-core CPU (load about 9 from other jobs) with 300 items, four
labels and float32 states scaled like a residual stream (a few dimensions 200x the rest): 0.46 s
per 1536-wide layer and 0.22 s per 896-wide layer for the five folds, so the 28 + 24 + 24 layers of
the default pair take about 24 s per run; lbfgs converged within 16 iterations. A PCA to 64
dimensions inside each fold cost about the same (0.33 s against 0.40 s for a 1536-wide layer) and
discards directions the probe might use, so it is not done. BLAS runs one thread per fit: two
threads beside another job on two cores ran the same fits 3-10x slower (oversubscription).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from pkt_core.errors import PktError

FOLDS = 5
# The inverse L2 strength of scikit-learn's objective 1/2 ||w||^2 + C sum(log loss), on standardised
# features. Chosen before any probe was run: with a few hundred items and 10^3 dimensions the
# classes are linearly separable in every layer, so the penalty decides the fit; 0.1 keeps the
# weights from chasing that separability without swamping the data term.
INVERSE_REGULARISATION = 0.1
MAX_ITERATIONS = 1000
CONFIDENCE = 0.95


class LinearProbeError(PktError):
    """States or labels a linear probe cannot be fitted on (the message says which and why)."""


@dataclass(frozen=True)
class ProbeSettings:
    """How every layer is probed; recorded verbatim with the results."""

    folds: int = FOLDS
    inverse_regularisation: float = INVERSE_REGULARISATION
    max_iterations: int = MAX_ITERATIONS
    seed: int = 0
    confidence: float = CONFIDENCE

    def record(self) -> dict:
        return {**asdict(self), "classifier": "StandardScaler + LogisticRegression (multinomial, L2, lbfgs)",
                "cross_validation": "StratifiedKFold(shuffle=True, random_state=seed), the same folds for every layer",
                "interval": "Wilson score interval over the n pooled out-of-fold predictions",
                "chance": "majority label's share; log loss: entropy of the labels (nats)",
                "width": "full width, no reduction"}


@dataclass(frozen=True)
class LayerProbe:
    """One layer's cross-validated probe."""

    layer: int
    accuracy: float  # pooled out-of-fold: correct / n
    ci_low: float
    ci_high: float
    fold_accuracies: tuple[float, ...]
    log_loss: float  # mean out-of-fold cross-entropy of the gold label, nats
    chance: float  # majority label's share
    chance_log_loss: float  # entropy of the labels, nats
    n_items: int
    n_classes: int
    folds: int
    iterations: int  # the most lbfgs iterations any fold took
    converged: bool
    seconds: float

    @property
    def fold_mean(self) -> float:
        return float(np.mean(self.fold_accuracies))

    @property
    def fold_std(self) -> float:
        return float(np.std(self.fold_accuracies, ddof=1)) if len(self.fold_accuracies) > 1 else 0.0


def wilson_interval(correct: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion ``correct / n``."""
    if n < 1 or not 0 <= correct <= n:
        raise LinearProbeError(f"a proportion needs 0 <= correct <= n and n >= 1, not {correct} of {n}")
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + confidence / 2))
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def majority_share(labels: np.ndarray) -> float:
    """The accuracy of always answering the commonest label."""
    _, counts = np.unique(labels, return_counts=True)
    return float(counts.max() / counts.sum())


def label_entropy(labels: np.ndarray) -> float:
    """The log loss (nats) of answering the label frequencies for every item."""
    _, counts = np.unique(labels, return_counts=True)
    shares = counts / counts.sum()
    return float(-(shares * np.log(shares)).sum())


def check_labels(labels) -> np.ndarray:
    """Integer labels with at least two classes of at least two items each."""
    array = np.asarray(labels)
    if array.ndim != 1 or array.size == 0:
        raise LinearProbeError(f"labels must be a non-empty 1-D array, not shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise LinearProbeError(f"labels must be integers (the gold option's index), not {array.dtype}")
    classes, counts = np.unique(array, return_counts=True)
    if len(classes) < 2:
        raise LinearProbeError(f"every one of the {array.size} items has label {classes[0]}: a probe needs two or "
                               "more labels; give more items")
    if counts.min() < 2:
        rare = [int(c) for c, n in zip(classes, counts) if n < 2]
        raise LinearProbeError(f"labels {rare} have a single item among {array.size}: cross-validation needs two or "
                               "more items per label; give more items")
    return array.astype(np.int64)


def fold_count(labels: np.ndarray, folds: int = FOLDS) -> int:
    """k: ``folds``, or fewer when the rarest label has fewer items (each test fold must hold one)."""
    _, counts = np.unique(labels, return_counts=True)
    return int(min(folds, counts.min()))


def stratified_folds(labels: np.ndarray, folds: int = FOLDS, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs of seeded, stratified k-fold over ``labels``."""
    from sklearn.model_selection import StratifiedKFold

    labels = check_labels(labels)
    splitter = StratifiedKFold(n_splits=fold_count(labels, folds), shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros((len(labels), 1)), labels))


def _check_states(states, n_items: int, layer: int) -> np.ndarray:
    array = np.asarray(states, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != n_items:
        raise LinearProbeError(f"layer {layer}: states must be (items x width) with {n_items} rows, "
                               f"not shape {array.shape}")
    if not np.isfinite(array).all():
        raise LinearProbeError(f"layer {layer}: the states hold NaN or inf; capture them again")
    return array


def probe_layer(states, labels, settings: ProbeSettings = ProbeSettings(), layer: int = 0,
                folds: list[tuple[np.ndarray, np.ndarray]] | None = None) -> LayerProbe:
    """Cross-validate the probe on one layer's ``states`` (items x width) against integer ``labels``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    labels = check_labels(labels)
    features = _check_states(states, len(labels), layer)
    folds = folds if folds is not None else stratified_folds(labels, settings.folds, settings.seed)
    classes = np.unique(labels)
    started = time.perf_counter()
    predicted = np.empty_like(labels)
    gold_log_prob = np.empty(len(labels))
    fold_accuracies, iterations = [], 0
    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # read off n_iter_ instead, and recorded
        for train, test in folds:
            scaler = StandardScaler().fit(features[train])
            model = LogisticRegression(C=settings.inverse_regularisation, max_iter=settings.max_iterations)
            model.fit(scaler.transform(features[train]), labels[train])
            held_out = scaler.transform(features[test])
            predicted[test] = model.predict(held_out)
            probabilities = model.predict_proba(held_out)
            columns = np.searchsorted(model.classes_, labels[test])
            gold_log_prob[test] = np.log(np.clip(probabilities[np.arange(len(test)), columns], 1e-300, None))
            fold_accuracies.append(float((predicted[test] == labels[test]).mean()))
            iterations = max(iterations, int(np.max(model.n_iter_)))
    correct = int((predicted == labels).sum())
    low, high = wilson_interval(correct, len(labels), settings.confidence)
    return LayerProbe(layer=layer, accuracy=correct / len(labels), ci_low=low, ci_high=high,
                      fold_accuracies=tuple(fold_accuracies), log_loss=float(-gold_log_prob.mean()),
                      chance=majority_share(labels), chance_log_loss=label_entropy(labels), n_items=len(labels),
                      n_classes=len(classes), folds=len(folds), iterations=iterations,
                      converged=iterations < settings.max_iterations, seconds=time.perf_counter() - started)


def probe_layers(states: Mapping[int, np.ndarray], labels, settings: ProbeSettings = ProbeSettings()) -> list[LayerProbe]:
    """Every layer of one model, on the same folds, in layer order."""
    labels = check_labels(labels)
    folds = stratified_folds(labels, settings.folds, settings.seed)
    return [probe_layer(states[layer], labels, settings, layer, folds) for layer in sorted(states)]


def probe_table_rows(role: str, results: list[LayerProbe], num_layers: int, state: str,
                     settings: ProbeSettings = ProbeSettings()) -> list[dict]:
    """The run table's rows (``linear_probe.parquet``) of one model: one per layer.

    ``relative_depth`` is layer / (layers - 1): 0 the first block, 1 the last, so models of
    different depth share one axis."""
    return [{
        "model": role, "layer": r.layer, "n_layers": num_layers,
        "relative_depth": r.layer / (num_layers - 1) if num_layers > 1 else 0.0,
        "accuracy": r.accuracy, "ci_low": r.ci_low, "ci_high": r.ci_high, "confidence": settings.confidence,
        "accuracy_fold_mean": r.fold_mean, "accuracy_fold_std": r.fold_std,
        "accuracy_fold_min": min(r.fold_accuracies), "accuracy_fold_max": max(r.fold_accuracies),
        "log_loss": r.log_loss, "chance": r.chance, "chance_log_loss": r.chance_log_loss,
        "n_items": r.n_items, "n_classes": r.n_classes, "folds": r.folds, "state": state,
        "inverse_regularisation": settings.inverse_regularisation, "iterations": r.iterations,
        "converged": r.converged, "seconds": r.seconds,
    } for r in results]
