"""2-D projections (PCA, UMAP) of a run's pooled probe activations.

A run stores, per probe prompt and layer, the mean hidden state of the source, the target
before and the target after transfer (``probe_activations.safetensors``). This module reads
them and embeds one layer pair in two dimensions:

- ``space="joint"``: source states are carried into the target's space by the run's own
  cross-model map ``M = S_tgt S_src^T`` (``cross_map.safetensors``: decompose in the source
  vocabulary basis, recompose in the target's), then all three models are embedded together.
  Every row is L2-normalised first, so the embedding reflects directions (cosine geometry), not
  the very different norms of two models' residual streams.
- ``space="target"``: only target before and after (one space, no map needed).

PCA is exact (SVD of the centred rows). UMAP uses ``umap-learn`` (an optional dependency of
the app): without it :func:`project` raises and says how to install it. Nothing here imports
Streamlit; the app caches results per parameter set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pkt_core.errors import PktError
from pkt_core.runs.schema import CROSS_MAP_FILE, PROBE_ACTIVATIONS_FILE
from pkt_core.figures.spec import ROLES, FigureSpec

PROBE_FILE = PROBE_ACTIVATIONS_FILE
METHODS = ("pca", "umap")
SPACES = ("joint", "target")


class ProjectionError(PktError):
    """A projection cannot be made from what the run holds, or with the parameters given."""


@dataclass(frozen=True)
class PooledActivations:
    """role -> layer -> (n_probe x width) float32, with the probe ids and labels of the run."""

    layers: dict[str, dict[int, np.ndarray]]
    probe_ids: list[str]
    probe_labels: list[str]

    def num_layers(self, role: str) -> int:
        return len(self.layers.get(role, {}))


def load_pooled(run) -> PooledActivations:
    tensors = run.tensors(PROBE_FILE)
    layers: dict[str, dict[int, np.ndarray]] = {}
    for key, value in tensors.items():
        role, _, layer = key.partition(".layer.")
        if role not in ROLES or not layer.isdigit():
            raise ProjectionError(f"run {run.run_id}: unexpected tensor {key!r} in {PROBE_FILE}")
        layers.setdefault(role, {})[int(layer)] = value.float().numpy()
    data = run.manifest.data
    count = next(iter(next(iter(layers.values())).values())).shape[0] if layers else 0
    ids = list(data.probe_ids or [str(i) for i in range(count)])
    labels = [label or "" for label in (data.probe_labels or [""] * count)]
    if len(ids) != count:
        raise ProjectionError(f"run {run.run_id}: {count} pooled probe rows but {len(ids)} probe ids in the manifest")
    return PooledActivations(layers, ids, labels)


def cross_map(run) -> np.ndarray | None:
    if not run.has(CROSS_MAP_FILE):
        return None
    return run.tensors(CROSS_MAP_FILE)["cross_map"].double().numpy()


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, np.finfo(np.float64).tiny)


def pca_2d(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First two principal components (scores) and their explained-variance ratios.

    Signs are fixed so the largest-magnitude loading of each component is positive, which
    makes the picture deterministic across platforms."""
    centred = matrix - matrix.mean(axis=0, keepdims=True)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    components = min(2, vt.shape[0])
    for k in range(components):
        if vt[k, np.argmax(np.abs(vt[k]))] < 0:
            u[:, k], vt[k] = -u[:, k], -vt[k]
    scores = u[:, :components] * s[:components]
    if components < 2:
        scores = np.hstack([scores, np.zeros((scores.shape[0], 2 - components))])
    total = float((s ** 2).sum())
    ratios = (s[:2] ** 2) / total if total > 0 else np.zeros(2)
    return scores, np.pad(ratios, (0, 2 - len(ratios)))


def umap_2d(matrix: np.ndarray, neighbours: int, min_dist: float, seed: int) -> np.ndarray:
    try:
        import umap  # umap-learn
    except ImportError as error:
        raise ProjectionError(
            "UMAP needs the umap-learn package (`pip install umap-learn`, included in `pip install -e .[app]`); "
            "PCA works without it"
        ) from error
    count = matrix.shape[0]
    if count < 4:
        raise ProjectionError(f"UMAP needs at least 4 points, this layer pair has {count}")
    neighbours = max(2, min(int(neighbours), count - 1))
    reducer = umap.UMAP(n_neighbors=neighbours, min_dist=float(min_dist), n_components=2, random_state=int(seed),
                        metric="euclidean", init="spectral" if count > neighbours + 1 else "random", n_jobs=1)
    import warnings

    with warnings.catch_warnings():
        # A seed makes UMAP single-threaded, as wanted here (reproducible pictures); it warns about it.
        warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
        return np.asarray(reducer.fit_transform(matrix), dtype=np.float64)


@dataclass
class Projection:
    points: pd.DataFrame  # x, y, model, probe_id, label, correct (where known)
    method: str
    params: dict
    notes: list[str] = field(default_factory=list)


def probe_correctness(run, task: str | None = None) -> dict[str, dict[str, str]]:
    """role -> probe id -> outcome, where the run's evaluations scored the probe prompts."""
    probe_ids = set(map(str, run.manifest.data.probe_ids))
    outcomes: dict[str, dict[str, str]] = {}
    evaluated = run.evaluated_tasks()
    tasks = [task] if task else list(evaluated)
    for name in tasks:
        for role in evaluated.get(name, []):
            if not run.has(f"evaluation/{name}/{role}/items.parquet"):
                continue
            items = run.evaluation_items(name, role)
            for item_id, score in zip(items["item_id"].astype(str), items["score"]):
                if item_id in probe_ids:  # an item scored twice (two formulations): the first evaluation's
                    outcomes.setdefault(role, {}).setdefault(item_id, "correct" if float(score) >= 1.0 else "incorrect")
    return outcomes


def project(
    run,
    target_layer: int,
    source_layer: int | None = None,
    method: str = "pca",
    space: str = "joint",
    neighbours: int = 15,
    min_dist: float = 0.1,
    seed: int = 0,
    pooled: PooledActivations | None = None,
) -> Projection:
    """Embed the probe states of one layer pair in 2-D (see the module docstring)."""
    if method not in METHODS:
        raise ProjectionError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if space not in SPACES:
        raise ProjectionError(f"space must be one of {', '.join(SPACES)}, not {space!r}")
    pooled = pooled or load_pooled(run)
    n_target = pooled.num_layers("target_before")
    if not 0 <= target_layer < n_target:
        raise ProjectionError(f"target layer {target_layer} is not in 0..{n_target - 1}")
    blocks, roles = [], []
    for role in ("target_before", "target_after"):
        if target_layer in pooled.layers.get(role, {}):
            blocks.append(_unit_rows(pooled.layers[role][target_layer].astype(np.float64)))
            roles.append(role)
    notes = ["rows are L2-normalised (cosine geometry)"]
    if space == "joint":
        n_source = pooled.num_layers("source")
        if source_layer is None or not 0 <= source_layer < n_source:
            raise ProjectionError(f"source layer {source_layer} is not in 0..{n_source - 1}")
        mapping = cross_map(run)
        states = pooled.layers["source"][source_layer].astype(np.float64)
        if mapping is None or mapping.shape[1] != states.shape[1]:
            raise ProjectionError(f"run {run.run_id} has no usable cross-model map ({CROSS_MAP_FILE}); use space='target'")
        blocks.insert(0, _unit_rows(_unit_rows(states) @ mapping.T))
        roles.insert(0, "source")
        notes.append("source states carried into the target space by the run's map M = S_tgt S_src^T")
    matrix = np.vstack(blocks)
    if method == "pca":
        coordinates, ratios = pca_2d(matrix)
        notes.append(f"explained variance: PC1 {ratios[0]:.1%}, PC2 {ratios[1]:.1%}")
        params = {}
    else:
        coordinates = umap_2d(matrix, neighbours, min_dist, seed)
        params = {"neighbours": max(2, min(int(neighbours), matrix.shape[0] - 1)), "min_dist": float(min_dist),
                  "seed": int(seed)}
        if params["neighbours"] != neighbours:
            notes.append(f"neighbours capped at {params['neighbours']} (points - 1)")
    correctness = probe_correctness(run)
    rows = []
    count = len(pooled.probe_ids)
    for index, role in enumerate(roles):
        for probe in range(count):
            coordinate = coordinates[index * count + probe]
            probe_id = str(pooled.probe_ids[probe])
            rows.append({"x": float(coordinate[0]), "y": float(coordinate[1]), "model": role, "probe_id": probe_id,
                         "label": pooled.probe_labels[probe] if probe < len(pooled.probe_labels) else "",
                         "correct": correctness.get(role, {}).get(probe_id, "not evaluated")})
    params = {"method": method, "space": space, "target_layer": int(target_layer),
              "source_layer": None if space == "target" else int(source_layer), **params}
    return Projection(pd.DataFrame(rows), method, params, notes)


def projection_figure(run, projection: Projection, colour_by: str = "model") -> FigureSpec:
    """A scatter of ``projection`` coloured by model, task label or correctness."""
    columns = {"model": "model", "label": "label", "correctness": "correct"}
    if colour_by not in columns:
        raise ProjectionError(f"colour by one of {', '.join(columns)}, not {colour_by!r}")
    data = projection.points.copy()
    axis = "PC" if projection.method == "pca" else "UMAP "
    layers = f"target layer {projection.params['target_layer']}"
    if projection.params.get("source_layer") is not None:
        layers = f"source layer {projection.params['source_layer']} / " + layers
    caption = {"run_id": run.run_id, "measure": f"{projection.method.upper()} of pooled probe states",
               "options": {**projection.params, "colour_by": colour_by}}
    return FigureSpec(
        f"{projection.method}-{projection.params['space']}-t{projection.params['target_layer']}",
        "scatter", f"{projection.method.upper()}: {layers}", data, caption,
        {"x": "x", "y": "y", "colour": columns[colour_by], "symbol": "model" if colour_by != "model" else None,
         "hover": ["model", "probe_id", "label", "correct"], "x_label": f"{axis}1", "y_label": f"{axis}2"},
        list(projection.notes),
    )


def umap_available() -> bool:
    """Whether umap-learn is installed (looked up without importing it: numba is slow to import)."""
    import importlib.util

    return importlib.util.find_spec("umap") is not None


def selected_points(projection: Projection, chosen: list[tuple[float, float]]) -> pd.DataFrame:
    """The projection's rows at the chosen (x, y) positions (what a box or lasso selection returns)."""
    if not chosen:
        return projection.points.iloc[0:0]
    keys = {(round(float(x), 9), round(float(y), 9)) for x, y in chosen}
    mask = [(round(float(x), 9), round(float(y), 9)) in keys
            for x, y in zip(projection.points["x"], projection.points["y"])]
    return projection.points[mask]


def selected_items(run, probe_ids: list[str]) -> pd.DataFrame:
    """One row per selected probe: its label, the gold answer and each model's answer and outcome,
    where the run's evaluations scored that probe item."""
    wanted = list(dict.fromkeys(str(i) for i in probe_ids))
    table = pd.DataFrame({"probe_id": wanted})
    labels = dict(zip(map(str, run.manifest.data.probe_ids), run.manifest.data.probe_labels))
    table["label"] = [labels.get(i) for i in wanted]
    for task, roles in run.evaluated_tasks().items():
        for role in roles:
            if not run.has(f"evaluation/{task}/{role}/items.parquet"):
                continue
            items = run.evaluation_items(task, role).set_index("item_id")
            hit = [i for i in wanted if i in items.index]
            if not hit:
                continue
            # Each cell from the first evaluation that scored the item: another task's evaluation holds
            # other items, another formulation of the same task must not overwrite the first one's answers.
            for column, name in (("gold", "target"), (f"{role} answer", "prediction"), (f"{role} outcome", "outcome")):
                held = list(table[column]) if column in table else [None] * len(wanted)
                table[column] = [items.at[i, name] if pd.isna(value) and i in items.index else value
                                 for value, i in zip(held, wanted)]
    return table
