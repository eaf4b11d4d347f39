"""The Layer alignment page's figures: layer-similarity heatmaps and profiles of a run, with its layer map."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pkt_core.figures.spec import FigureError, FigureSpec

# -- layer similarity -------------------------------------------------------------------------

SIMILARITY_VIEWS = {
    "target_source_before": ("target layer", "source layer", "target x source, before transfer"),
    "target_source_after": ("target layer", "source layer", "target x source, after transfer"),
    "target_before_after": ("target layer (before)", "target layer (after)", "target before x target after"),
}
DIFFERENCE_VIEW = "target_source_difference"
VIEW_TITLES = {**{view: title for view, (_, _, title) in SIMILARITY_VIEWS.items()},
               DIFFERENCE_VIEW: "target x source, after - before"}


@dataclass(frozen=True)
class SimilarityFile:
    file: str
    metric: str
    view: str
    shape: tuple[int, int]
    n_rows: int | None
    notes: tuple[str, ...]
    rows: str | None


def similarity_files(run) -> tuple[list[SimilarityFile], list[str]]:
    """The layer-similarity matrices a run holds (``cka_*.json``, ``similarity_*.json``) and the
    problems of files that could not be read."""
    found, problems = [], []
    for path in sorted(list(run.folder.glob("cka_*.json")) + list(run.folder.glob("similarity_*.json"))):
        stem = path.stem
        view = next((v for v in SIMILARITY_VIEWS if stem.endswith(v)), None)
        if view is None:
            problems.append(f"{path.name}: no known view in its name ({', '.join(SIMILARITY_VIEWS)})")
            continue
        try:
            payload = json.loads(path.read_text())
            values = np.asarray(payload["values"], dtype=np.float64)
            if values.ndim != 2:
                raise ValueError(f"values have {values.ndim} dimensions, not 2")
        except (OSError, ValueError, KeyError, TypeError) as error:
            problems.append(f"{path.name}: unreadable ({type(error).__name__}: {error})")
            continue
        prefix = stem[: -len(view)].rstrip("_")
        metric = payload.get("metric") or (prefix.split("_", 1)[1] if "_" in prefix else "linear_cka")
        found.append(SimilarityFile(path.name, metric, view, tuple(values.shape), payload.get("n_rows"),
                                    tuple(payload.get("notes") or ()), payload.get("rows")))
    return found, problems


def measures_in_run(run) -> dict[str, dict[str, SimilarityFile]]:
    """metric -> view -> file, for the matrices the run holds."""
    measures: dict[str, dict[str, SimilarityFile]] = {}
    for item in similarity_files(run)[0]:
        measures.setdefault(item.metric, {})[item.view] = item
    return measures


def missing_measures(run) -> list[str]:
    """Registered similarity measures this run holds no matrix for."""
    from pkt_core.similarity.measures import measure_names

    present = set(measures_in_run(run))
    return [name for name in measure_names() if name not in present]


def measure_description(metric: str) -> str:
    from pkt_core.similarity.measures import MEASURES

    measure = MEASURES.get(metric)
    return measure.description if measure else metric


def _measure_kind(metric: str) -> str:
    from pkt_core.similarity.measures import MEASURES

    measure = MEASURES.get(metric)
    return measure.kind.value if measure else "score"


def views_for(measures: dict[str, dict[str, SimilarityFile]], metric: str) -> list[str]:
    views = [v for v in SIMILARITY_VIEWS if v in measures.get(metric, {})]
    if "target_source_before" in views and "target_source_after" in views:
        views.append(DIFFERENCE_VIEW)
    return views


def similarity_matrix(run, metric: str, view: str) -> np.ndarray:
    measures = measures_in_run(run)
    if metric not in measures:
        raise FigureError(f"run {run.run_id} holds no {metric} matrices; it has: {', '.join(measures) or 'none'}")
    if view == DIFFERENCE_VIEW:
        return similarity_matrix(run, metric, "target_source_after") - similarity_matrix(run, metric, "target_source_before")
    if view not in measures[metric]:
        raise FigureError(f"run {run.run_id} holds no {metric} matrix for {view}")
    return run.matrix(measures[metric][view].file)


def mapping_table(run, name: str | None = None) -> tuple[str, list[dict]]:
    """The layer map ``name`` (default: the one the run trained with) as rows target -> sources, weights."""
    mappings = run.mappings
    chosen = name or mappings.get("chosen")
    if chosen not in mappings.get("mappings", {}):
        raise FigureError(f"run {run.run_id} has no layer map {chosen!r}; it has {', '.join(mappings.get('mappings', {}))}")
    return chosen, mappings["mappings"][chosen]["table"]


def _mapping_weights(table: list[dict], rows: int, cols: int) -> np.ndarray:
    weights = np.zeros((rows, cols))
    for entry in table:
        for layer, weight in zip(entry["source_layers"], entry["weights"]):
            if entry["target_layer"] < rows and layer < cols:
                weights[entry["target_layer"], layer] += weight
    return weights


def alignment_heatmap(run, metric: str, view: str, mapping: str | None = "chosen") -> FigureSpec:
    """Target x source (or target before x after) layer matrix of ``metric``, with a layer map drawn over it."""
    values = similarity_matrix(run, metric, view)
    row_label, col_label, _ = SIMILARITY_VIEWS.get(view, SIMILARITY_VIEWS["target_source_before"])
    rows, cols = np.indices(values.shape)
    data = pd.DataFrame({"row_layer": rows.ravel(), "col_layer": cols.ravel(), "value": values.ravel()})
    encoding = {"row": "row_layer", "col": "col_layer", "value": "value", "row_label": row_label,
                "col_label": col_label, "value_label": metric + (" (after - before)" if view == DIFFERENCE_VIEW else ""),
                "diverging": view == DIFFERENCE_VIEW}
    if view != DIFFERENCE_VIEW:
        low, high = (-1.0, 1.0) if metric.endswith("unbiased") else (0.0, 1.0)
        if _measure_kind(metric) == "score" and np.nanmin(values) >= low - 1e-9 and np.nanmax(values) <= high + 1e-9:
            encoding.update(zmin=low, zmax=high)
    mapping_name = None
    if mapping and view != "target_before_after":
        mapping_name, table = mapping_table(run, None if mapping == "chosen" else mapping)
        data["mapping_weight"] = _mapping_weights(table, *values.shape).ravel()
        encoding.update(overlay="mapping_weight", overlay_label=f"layer map: {mapping_name}")
    files = measures_in_run(run)[metric]
    used = [files[v] for v in (("target_source_before", "target_source_after") if view == DIFFERENCE_VIEW else (view,))]
    notes = [f"{f.file}: {f.n_rows} rows ({f.rows or 'rows not described'})" for f in used]
    notes += [note for f in used for note in f.notes]
    caption = {"run_id": run.run_id, "measure": metric, "view": view, "mapping": mapping_name,
               "files": [f.file for f in used], "outlier_handling": outlier_note(run)}
    return FigureSpec(f"{metric}-{view}", "heatmap", f"{metric}: {VIEW_TITLES[view]}", data, caption, encoding, notes)


def alignment_profiles(run, metric: str, mapping: str | None = "chosen") -> FigureSpec:
    """Per target layer: similarity at the mapped source layer(s) and the best source layer,
    before and after transfer, and the target's before x after diagonal."""
    measures = measures_in_run(run)
    if metric not in measures:
        raise FigureError(f"run {run.run_id} holds no {metric} matrices")
    mapping_name, table = mapping_table(run, None if mapping in (None, "chosen") else mapping)
    rows = []
    for view in ("target_source_before", "target_source_after"):
        if view not in measures[metric]:
            continue
        values = similarity_matrix(run, metric, view)
        weights = _mapping_weights(table, *values.shape)
        when = view.rsplit("_", 1)[1]
        for layer in range(values.shape[0]):
            total = weights[layer].sum()
            if total > 0:
                rows.append({"target_layer": layer, "series": f"{when}: at mapped source layer",
                             "value": float((weights[layer] * values[layer]).sum() / total)})
            best = int(np.nanargmax(values[layer])) if _measure_kind(metric) == "score" else int(np.nanargmin(values[layer]))
            rows.append({"target_layer": layer, "series": f"{when}: best source layer",
                         "value": float(values[layer, best]), "best_source_layer": best})
    if "target_before_after" in measures[metric]:
        values = similarity_matrix(run, metric, "target_before_after")
        for layer in range(min(values.shape)):
            rows.append({"target_layer": layer, "series": "target before x after (same layer)",
                         "value": float(values[layer, layer])})
    data = pd.DataFrame(rows)
    if "best_source_layer" not in data:
        data["best_source_layer"] = np.nan
    caption = {"run_id": run.run_id, "measure": metric, "mapping": mapping_name, "outlier_handling": outlier_note(run)}
    return FigureSpec(f"{metric}-profiles", "lines", f"{metric} per target layer", data, caption,
                      {"x": "target_layer", "y": "value", "series": "series", "x_label": "target layer",
                       "y_label": metric})


def outlier_note(run) -> str:
    """How the similarity rows were chosen, from the run's own records (what the matrices used)."""
    manifest = run.manifest
    config = manifest.get("config") or {}
    data = manifest.get("data") or {}
    parts = []
    files, _ = similarity_files(run)
    described = {f.rows for f in files if f.rows}
    if described:
        parts.append("rows: " + "; ".join(sorted(described)))
    if "drop_first_position" in config:
        parts.append("position 0 (massive activations) " + ("dropped" if config["drop_first_position"] else "kept")
                     + " in the layer losses")
    if data.get("cka_rows") is not None:
        parts.append(f"{data['cka_rows']} probe tokens (a seeded subset when there are more than the cap)")
    capture = manifest.get("capture") or {}
    if capture.get("outlier_norm_factor"):
        parts.append(f"tokens above {capture['outlier_norm_factor']} x the median norm dropped")
    else:
        parts.append("no norm-based outlier filter beyond that")
    return "; ".join(parts)


