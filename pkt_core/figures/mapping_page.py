"""The Layer mapping page's figures: the bipartite layer map, attribution, fidelity and stage losses."""

from __future__ import annotations

import pandas as pd

from pkt_core.figures.spec import FigureError, FigureSpec
from pkt_core.runs.reader import Run

# -- layer mapping ----------------------------------------------------------------------------


def mapping_bipartite(run: Run, maps: list[str], trained: bool = True) -> FigureSpec:
    """Source and target layers as two columns; each layer map's edges (weight = line width)."""
    record = run.layer_maps
    if record is None:
        raise FigureError(f"run {run.run_id} ({run.manifest.method}) computed no layer maps: only SemAlign does")
    available = record.mappings
    unknown = [m for m in maps if m not in available]
    if unknown:
        raise FigureError(f"run {run.run_id} has no layer map {', '.join(unknown)}; it has {', '.join(available)}")
    n_source, n_target = run.manifest.source.num_layers, run.manifest.target.num_layers
    rows = []
    for name in maps:
        for entry in available[name].table:
            for layer, weight in zip(entry.source_layers, entry.weights):
                rows.append({"map": name + (" (chosen)" if name == record.chosen else ""),
                             "source_layer": int(layer), "target_layer": int(entry.target_layer),
                             "weight": float(weight)})
    if trained:
        stages = run.manifest.config.get("stages")
        trained_layers = set(stages) if stages is not None else set(range(n_target))
        for entry in available[record.chosen].table:
            if entry.target_layer in trained_layers:
                for layer, weight in zip(entry.source_layers, entry.weights):
                    rows.append({"map": "trained pairs", "source_layer": int(layer),
                                 "target_layer": int(entry.target_layer), "weight": float(weight)})
    data = pd.DataFrame(rows, columns=["map", "source_layer", "target_layer", "weight"])
    notes = [f"{name}: {available[name].paper_version}" + (f" ({'; '.join(available[name].notes)})"
                                                            if available[name].notes else "")
             for name in maps]
    caption = {"run_id": run.run_id, "maps": maps, "chosen": record.chosen, "trained_pairs": trained}
    return FigureSpec("layer-maps", "bipartite", "source -> target layer maps", data, caption,
                      {"n_source": n_source, "n_target": n_target}, notes)


def attribution_bars(run, aggregation: str = "abs") -> FigureSpec:
    if aggregation not in ("abs", "signed"):
        raise FigureError("aggregation must be 'abs' or 'signed'")
    table = pd.DataFrame(run.table("attribution.parquet"))
    data = table[["source_layer", aggregation]].rename(columns={aggregation: "attribution"})
    data["aggregation"] = aggregation
    caption = {"run_id": run.run_id, "measure": "gradient x activation attribution", "aggregation": aggregation,
               "critical_fraction": run.manifest.config.get("critical_fraction")}
    return FigureSpec(f"attribution-{aggregation}", "bars", f"source attribution ({aggregation})", data, caption,
                      {"x": "source_layer", "y": "attribution", "x_label": "source layer",
                       "y_label": f"gradient x activation ({aggregation})"})


def fidelity_lines(run) -> FigureSpec:
    """Decomposition fidelity per layer, output-side vs input-side bases, per model.

    Where a model's LM head and input embeddings are tied, the two bases are the same matrix
    and the contrast cannot appear: that model gets one line, and a note that says so.
    """
    table = pd.DataFrame(run.table("fidelity.parquet"))
    rows, notes = [], []
    for model, group in table.groupby("model", sort=False):
        tied = bool(group["head_and_embedding_tied"].any())
        if tied:
            difference = float(group["head_embedding_relative_difference"].iloc[0])
            notes.append(f"{model}: LM head and input embeddings are tied (relative difference {difference:.3g}), so "
                         "output-side and input-side bases coincide: the output-vs-input contrast cannot appear for "
                         "this model; one line is drawn.")
            part = group[group["bases"] == "output"]
            for row in part.itertuples():
                rows.append({"layer": row.layer, "series": f"{model}: output = input bases (tied)",
                             "mean_cosine": row.mean_cosine, "low": row.mean_cosine - row.std_cosine,
                             "high": row.mean_cosine + row.std_cosine, "model": model, "bases": "tied"})
        else:
            for row in group.itertuples():
                rows.append({"layer": row.layer, "series": f"{model}: {row.bases} bases", "mean_cosine": row.mean_cosine,
                             "low": row.mean_cosine - row.std_cosine, "high": row.mean_cosine + row.std_cosine,
                             "model": model, "bases": row.bases})
    scope = run.manifest.fidelity
    if scope is not None and scope.get("scope") == "sample":
        kept = ", ".join(f"{role}: {count} tokens at layers {', '.join(map(str, scope['layers'][role]))}"
                         for role, count in scope["rows"].items())
        notes.append(f"Computed on a sample ({kept}): {scope['rule']}.")
    data = pd.DataFrame(rows).sort_values(["series", "layer"], kind="stable").reset_index(drop=True)
    first = table.iloc[0] if len(table) else {}
    caption = {"run_id": run.run_id, "measure": "decomposition fidelity (mean cosine, band = +-1 sd)",
               "coefficients": first.get("coefficients") if len(table) else None,
               "final_norm": bool(first.get("final_norm")) if len(table) else None}
    return FigureSpec("fidelity", "lines", "decomposition fidelity per layer", data, caption,
                      {"x": "layer", "y": "mean_cosine", "series": "series", "low": "low", "high": "high",
                       "x_label": "layer", "y_label": "cos(recomposed, original)"}, notes)


def stage_loss_lines(run: Run) -> FigureSpec:
    """Training losses. Frontier methods: x = the stage (its target layer), one line per loss term;
    with several steps per stage the first and the last step of each stage are drawn, so the fall
    within a stage shows. Peers (one training phase): x = optimizer step, one line per term."""
    table = run.table_frame("stage_losses.parquet")
    if table.empty:
        raise FigureError(f"run {run.run_id} recorded no training steps")
    terms = [c for c in table.columns if c.startswith("loss_")] or ["loss"]
    if len(terms) > 1 and "loss" in table:
        terms = ["loss"] + terms
    label = {term: ("total" if term == "loss" else term[len("loss_"):]) for term in terms}
    frontier = bool((table["stage_layer"] >= 0).all())
    rows = []
    if frontier:
        steps_per_stage = int(table.groupby("stage_layer")["step"].nunique().max())
        for layer, group in table.sort_values(["stage_layer", "step"]).groupby("stage_layer"):
            picks = [("", group.iloc[-1])] if steps_per_stage == 1 else \
                [(", first step", group.iloc[0]), (", last step", group.iloc[-1])]
            for suffix, row in picks:
                for term in terms:
                    rows.append({"x": int(layer), "series": label[term] + suffix, "value": float(row[term]),
                                 "term": label[term], "step": int(row["step"])})
        x_label = "frontier stage (target layer)"
        title = "training loss per frontier stage" + ("" if steps_per_stage == 1 else " (first and last step)")
    else:
        for index, row in enumerate(table.itertuples(index=False)):
            for term in terms:
                rows.append({"x": index, "series": label[term], "value": float(getattr(row, term)),
                             "term": label[term], "step": index})
        x_label, title, steps_per_stage = "optimizer step", "training loss per step", None
    data = pd.DataFrame(rows)
    caption = {"run_id": run.run_id, "measure": "training losses", "terms": [label[t] for t in terms],
               "losses": {name: weight.weight for name, weight in run.manifest.losses.items()},
               "steps_per_stage": steps_per_stage}
    return FigureSpec("stage-losses", "lines", title, data, caption,
                      {"x": "x", "y": "value", "series": "series", "x_label": x_label, "y_label": "loss",
                       })


# -- the peers' own location results ----------------------------------------------------------


def peer_pairing_bipartite(run: Run) -> FigureSpec:
    """A peer's own pairing of source and target layers (Seeking's selected layers, LaTen's
    paired sublayers) as a bipartite picture, one edge per pair."""
    from pkt_core.figures.alignment_page import PEER_PAIRING, peer_pairing

    pairing = peer_pairing(run)
    if pairing is None:
        raise FigureError(f"run {run.run_id} ({run.manifest.method}) pairs no layers")
    rows = [{"map": PEER_PAIRING, "source_layer": layer, "target_layer": entry.target_layer, "weight": weight}
            for entry in pairing for layer, weight in zip(entry.source_layers, entry.weights)]
    caption = {"run_id": run.run_id, "method": run.manifest.method, "maps": [PEER_PAIRING]}
    return FigureSpec("peer-pairing", "bipartite", f"{run.manifest.method}: paired source -> target layers",
                      pd.DataFrame(rows), caption,
                      {"n_source": run.manifest.source.num_layers, "n_target": run.manifest.target.num_layers})


def seeking_sensitivity_bars(run: Run) -> FigureSpec:
    """Seeking Neural Nuggets: the source's parametric sensitivity per layer, the chosen layers marked."""
    table = run.table_frame("seeking_layers.parquet")
    data = pd.DataFrame({"source_layer": table["source_layer"].astype(int), "sensitivity": table["sensitivity"],
                         "series": ["selected" if s else "not selected" for s in table["selected"]]})
    caption = {"run_id": run.run_id, "measure": "parametric sensitivity (Seeking Neural Nuggets)",
               "selected": [int(x) for x in table.loc[table["selected"], "source_layer"]]}
    return FigureSpec("seeking-sensitivity", "bars", "source-layer sensitivity (selected layers are extracted)", data,
                      caption, {"x": "source_layer", "y": "sensitivity", "series": "series",
                                "x_label": "source layer", "y_label": "sensitivity"})


def laten_location_bars(run: Run) -> FigureSpec:
    """LaTen: the logit-lens gain of every sublayer of both models, one line per model and module
    over the layers; the located sublayers (the ones LaTen pairs) are listed under the figure."""
    table = run.table_frame("laten_locations.parquet").sort_values(["model", "module", "layer"])
    data = pd.DataFrame({"layer": table["layer"].astype(int), "lens_gain": table["lens_gain"].astype(float),
                         "series": [f"{m}: {mod}" for m, mod in zip(table["model"], table["module"])],
                         "located": table["selected"].astype(bool)})
    notes = []
    for (model, module), group in table[table["selected"]].groupby(["model", "module"]):
        notes.append(f"located {model} {module} layers: {', '.join(str(int(l)) for l in sorted(group['layer']))}")
    caption = {"run_id": run.run_id, "measure": "logit-lens gain per sublayer (LaTen)",
               "located": int(table["selected"].sum())}
    return FigureSpec("laten-locations", "lines", "logit-lens gain per sublayer", data, caption,
                      {"x": "layer", "y": "lens_gain", "series": "series", "x_label": "layer",
                       "y_label": "log p(answer) gain"}, notes)
