"""The Layer alignment page's figures: layer-similarity heatmaps and profiles of a run, with its layer map."""

from __future__ import annotations


import numpy as np
import pandas as pd

from pkt_core.figures.spec import FigureError, FigureSpec
from pkt_core.runs.reader import Run, SimilarityEntry
from pkt_core.runs.schema import MapEntry

# -- layer similarity -------------------------------------------------------------------------

SIMILARITY_VIEWS = {
    "target_source_before": ("target layer", "source layer", "target x source, before transfer"),
    "target_source_after": ("target layer", "source layer", "target x source, after transfer"),
    "target_before_after": ("target layer (before)", "target layer (after)", "target before x target after"),
}
DIFFERENCE_VIEW = "target_source_difference"
VIEW_TITLES = {**{view: title for view, (_, _, title) in SIMILARITY_VIEWS.items()},
               DIFFERENCE_VIEW: "target x source, after - before"}


def measures_in_run(run: Run) -> dict[str, dict[str, SimilarityEntry]]:
    """metric -> view -> matrix, for the similarity matrices the run holds."""
    measures: dict[str, dict[str, SimilarityEntry]] = {}
    for entry in run.similarity_entries():
        measures.setdefault(entry.metric, {})[entry.view] = entry
    return measures


def missing_measures(run: Run) -> list[str]:
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


def views_for(measures: dict[str, dict[str, SimilarityEntry]], metric: str) -> list[str]:
    views = [v for v in SIMILARITY_VIEWS if v in measures.get(metric, {})]
    if "target_source_before" in views and "target_source_after" in views:
        views.append(DIFFERENCE_VIEW)
    return views


def similarity_matrix(run: Run, metric: str, view: str) -> np.ndarray:
    measures = measures_in_run(run)
    if metric not in measures:
        raise FigureError(f"run {run.run_id} holds no {metric} matrices; it has: {', '.join(measures) or 'none'}")
    if view == DIFFERENCE_VIEW:
        return similarity_matrix(run, metric, "target_source_after") - similarity_matrix(run, metric, "target_source_before")
    if view not in measures[metric]:
        raise FigureError(f"run {run.run_id} holds no {metric} matrix for {view}")
    return measures[metric][view].values


def layer_map_names(run: Run) -> list[str]:
    """The layer maps a run can draw over its matrices: SemAlign's maps, or the peer's own pairing."""
    if run.layer_maps is not None:
        return list(run.layer_maps.mappings)
    return [PEER_PAIRING] if peer_pairing(run) else []


def mapping_table(run: Run, name: str | None = None) -> tuple[str, list[MapEntry]] | None:
    """The layer map ``name`` (default: the one the run trained with) as rows target -> sources,
    weights; for a peer run its own pairing (Seeking's chosen layers, LaTen's paired sublayers);
    None for a run that pairs no layers (logit distillation, fine-tuning)."""
    maps = run.layer_maps
    if maps is None:
        pairing = peer_pairing(run)
        if pairing is None:
            return None
        if name not in (None, PEER_PAIRING):
            raise FigureError(f"run {run.run_id} has no layer map {name!r}; it has {PEER_PAIRING}")
        return PEER_PAIRING, pairing
    chosen = name or maps.chosen
    if chosen not in maps.mappings:
        raise FigureError(f"run {run.run_id} has no layer map {chosen!r}; it has {', '.join(maps.mappings)}")
    return chosen, maps.mappings[chosen].table


PEER_PAIRING = "the method's own pairing"


def peer_pairing(run: Run) -> list[MapEntry] | None:
    """target layer -> source layers as a peer method paired them, read from its own tables:
    Seeking's selected (source, target) layers, LaTen's paired sublayers. None for methods that
    pair no layers."""
    pairs: list[tuple[int, int]] = []
    if run.has("seeking_layers.parquet"):
        table = run.table_frame("seeking_layers.parquet")
        pairs = [(int(r.target_layer), int(r.source_layer)) for r in table.itertuples()
                 if bool(r.selected) and r.target_layer == r.target_layer]
    elif run.has("laten_neurons.parquet"):
        table = run.table_frame("laten_neurons.parquet")
        pairs = sorted({(int(r.target_layer), int(r.source_layer)) for r in table.itertuples()})
    if not pairs:
        return None
    by_target: dict[int, list[int]] = {}
    for target_layer, source_layer in pairs:
        by_target.setdefault(target_layer, []).append(source_layer)
    return [MapEntry(target_layer=t, source_layers=s, weights=[1.0 / len(s)] * len(s)) for t, s in sorted(by_target.items())]


def _mapping_weights(table: list[MapEntry], rows: int, cols: int) -> np.ndarray:
    weights = np.zeros((rows, cols))
    for entry in table:
        for layer, weight in zip(entry.source_layers, entry.weights):
            if entry.target_layer < rows and layer < cols:
                weights[entry.target_layer, layer] += weight
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
    found = mapping_table(run, None if mapping == "chosen" else mapping) if mapping and view != "target_before_after" else None
    if found is not None:
        mapping_name, table = found
        data["mapping_weight"] = _mapping_weights(table, *values.shape).ravel()
        encoding.update(overlay="mapping_weight", overlay_label=f"layer map: {mapping_name}")
    files = measures_in_run(run)[metric]
    used = [files[v] for v in (("target_source_before", "target_source_after") if view == DIFFERENCE_VIEW else (view,))]
    notes = [f"{f.file}: {f.record.n_rows} rows ({f.record.rows or 'rows not described'})" for f in used]
    notes += [note for f in used for note in f.record.notes]
    caption = {"run_id": run.run_id, "measure": metric, "view": view, "mapping": mapping_name,
               "files": [f.file for f in used], "outlier_handling": outlier_note(run)}
    return FigureSpec(f"{metric}-{view}", "heatmap", f"{metric}: {VIEW_TITLES[view]}", data, caption, encoding, notes)


def alignment_profiles(run, metric: str, mapping: str | None = "chosen") -> FigureSpec:
    """Per target layer: similarity at the mapped source layer(s) and the best source layer,
    before and after transfer, and the target's before x after diagonal."""
    measures = measures_in_run(run)
    if metric not in measures:
        raise FigureError(f"run {run.run_id} holds no {metric} matrices")
    found = mapping_table(run, None if mapping in (None, "chosen") else mapping)
    mapping_name, table = found if found is not None else (None, [])
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


def outlier_note(run: Run) -> str:
    """How the similarity rows were chosen, from the run's own records (what the matrices used)."""
    manifest = run.manifest
    parts = []
    described = {entry.record.rows for entry in run.similarity_entries() if entry.record.rows}
    if described:
        parts.append("rows: " + "; ".join(sorted(described)))
    if "drop_first_position" in manifest.config:
        parts.append("position 0 (massive activations) " + ("dropped" if manifest.config["drop_first_position"]
                                                            else "kept") + " in the layer losses")
    if manifest.data.cka_rows is not None:
        unit = "probe sequences" if manifest.across_tokenizers else "probe tokens"
        parts.append(f"{manifest.data.cka_rows} {unit} (a seeded subset when there are more than the cap)")
    parts.append("no norm-based outlier filter beyond that")
    return "; ".join(parts)


# -- layer-wise linear probe ------------------------------------------------------------------

LINEAR_PROBE_CHANCE = "chance (majority label)"
PROBE_ROLES = ("source", "target_before", "target_after")


def linear_probe_status(run: Run) -> str | None:
    """None when the run holds its linear probe; else the sentence that says why it has none."""
    record = run.manifest.linear_probe
    if record is None:
        shipped = run.manifest.shipped
        how = f": `{shipped.reproduce}`" if shipped is not None else " with the command that made it"
        return (f"Run {run.run_id} has no linear probe: it is computed by runs made after this change (issue 14). "
                f"Recompute the run to get it{how}.")
    if record.status == "skipped":
        return f"Run {run.run_id} has no linear probe: {record.reason}."
    if run.linear_probe() is None:
        return (f"Run {run.run_id} computed a linear probe but holds no linear_probe.parquet (left out when it was "
                "shipped or copied); recompute the run to see it.")
    return None


def _probe_table(run: Run) -> pd.DataFrame:
    why_not = linear_probe_status(run)
    if why_not is not None:
        raise FigureError(why_not)
    table = run.linear_probe()
    order = {role: index for index, role in enumerate(PROBE_ROLES)}
    return table.assign(_order=table["model"].map(order)).sort_values(["_order", "layer"]).drop(columns="_order")


def linear_probe_lines(run: Run) -> FigureSpec:
    """Per layer: cross-validated accuracy of the linear probe with its Wilson interval, one line per
    model (source, target before, target after), over relative depth, with the chance level."""
    table = _probe_table(run)
    record = run.manifest.linear_probe
    data = table[["model", "layer", "n_layers", "relative_depth", "accuracy", "ci_low", "ci_high", "chance",
                  "accuracy_fold_mean", "accuracy_fold_std", "n_items", "folds"]].reset_index(drop=True)
    chance = float(table["chance"].max())
    level = pd.DataFrame({"model": LINEAR_PROBE_CHANCE, "relative_depth": [0.0, 1.0], "accuracy": chance,
                          "ci_low": chance, "ci_high": chance, "chance": chance})
    data = pd.concat([data, level], ignore_index=True)
    items, folds = int(table["n_items"].max()), int(table["folds"].max())
    notes = [(f"x: relative depth, layer / (layers - 1) of each model (0 = first block, 1 = last), so the source's "
              f"{run.manifest.source.num_layers} and the target's {run.manifest.target.num_layers} layers share one "
              "axis; the table of every layer and the CSV give each point's own layer."),
             (f"y: pooled out-of-fold accuracy of a logistic regression on the layer's state ({record.state}), "
              f"{folds}-fold stratified cross-validation on {items} items ({record.item_rule}); bars: Wilson "
              f"{table['confidence'].max():.0%} interval over the {items} out-of-fold predictions."),
             f"Dashed: chance, the majority label's share ({chance:.3f}); the label is the {record.label}."]
    if not table["converged"].all():
        notes.append(f"{int((~table['converged']).sum())} layer fits reached the iteration limit.")
    caption = {"run_id": run.run_id, "items": items, "item_rule": record.item_rule, "state": record.state,
               "prompt": record.prompt, "classifier": record.classifier, "x_axis": "relative depth"}
    encoding = {"x": "relative_depth", "y": "accuracy", "series": "model", "low": "ci_low", "high": "ci_high",
                "reference": [LINEAR_PROBE_CHANCE], "x_label": "relative depth (layer / (layers - 1))",
                "y_label": "cross-validated accuracy"}
    return FigureSpec("linear-probe", "lines", "Linear probe: gold answer from each layer's state", data, caption,
                      encoding, notes)


def linear_probe_summary(run: Run) -> pd.DataFrame:
    """One row per model: the best layer with its accuracy and interval, the last layer, the mean over
    layers, chance, and what the model's probe cost."""
    table = _probe_table(run)
    roles = run.manifest.linear_probe.roles
    rows = []
    for role in PROBE_ROLES:
        part = table[table["model"] == role]
        if part.empty:
            continue
        best, last = part.loc[part["accuracy"].idxmax()], part.loc[part["layer"].idxmax()]
        cost = roles.get(role)
        rows.append({"model": role, "layers": len(part), "best layer": int(best["layer"]),
                     "best accuracy": round(float(best["accuracy"]), 3),
                     "best 95% interval": f"{best['ci_low']:.3f}-{best['ci_high']:.3f}",
                     "last layer accuracy": round(float(last["accuracy"]), 3),
                     "mean over layers": round(float(part["accuracy"].mean()), 3),
                     "chance": round(float(part["chance"].max()), 3),
                     "states": {"hit": "from the cache", "miss": "captured (now cached)",
                                "off": "captured (run-specific)"}.get(cost.cache, cost.cache) if cost else None,
                     "capture s": cost.capture_seconds if cost else None,
                     "fit s": round(float(part["seconds"].sum()), 2)})
    return pd.DataFrame(rows)
