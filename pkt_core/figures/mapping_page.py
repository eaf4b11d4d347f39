"""The Layer mapping page's figures: the bipartite layer map, attribution, fidelity and stage losses."""

from __future__ import annotations

import pandas as pd

from pkt_core.figures.spec import FigureError, FigureSpec

# -- layer mapping ----------------------------------------------------------------------------


def mapping_bipartite(run, maps: list[str], trained: bool = True) -> FigureSpec:
    """Source and target layers as two columns; each layer map's edges (weight = line width)."""
    record = run.mappings
    available = record.get("mappings", {})
    unknown = [m for m in maps if m not in available]
    if unknown:
        raise FigureError(f"run {run.run_id} has no layer map {', '.join(unknown)}; it has {', '.join(available)}")
    n_source = int(run.manifest.get("source", {}).get("num_layers") or next(iter(available.values()))["source_layers"])
    n_target = int(run.manifest.get("target", {}).get("num_layers") or next(iter(available.values()))["target_layers"])
    rows = []
    for name in maps:
        for entry in available[name]["table"]:
            for layer, weight in zip(entry["source_layers"], entry["weights"]):
                rows.append({"map": name + (" (chosen)" if name == record.get("chosen") else ""),
                             "source_layer": int(layer), "target_layer": int(entry["target_layer"]),
                             "weight": float(weight)})
    if trained:
        chosen = record.get("chosen")
        stages = (run.manifest.get("config") or {}).get("stages")
        trained_layers = set(stages) if stages is not None else set(range(n_target))
        for entry in available[chosen]["table"]:
            if entry["target_layer"] in trained_layers:
                for layer, weight in zip(entry["source_layers"], entry["weights"]):
                    rows.append({"map": "trained pairs", "source_layer": int(layer),
                                 "target_layer": int(entry["target_layer"]), "weight": float(weight)})
    data = pd.DataFrame(rows, columns=["map", "source_layer", "target_layer", "weight"])
    notes = [f"{name}: {available[name]['paper_version']}" + (f" ({'; '.join(available[name]['notes'])})"
                                                               if available[name].get("notes") else "")
             for name in maps]
    caption = {"run_id": run.run_id, "maps": maps, "chosen": record.get("chosen"), "trained_pairs": trained}
    return FigureSpec("layer-maps", "bipartite", "source -> target layer maps", data, caption,
                      {"n_source": n_source, "n_target": n_target}, notes)


def attribution_bars(run, aggregation: str = "abs") -> FigureSpec:
    if aggregation not in ("abs", "signed"):
        raise FigureError("aggregation must be 'abs' or 'signed'")
    table = pd.DataFrame(run.table("attribution.parquet"))
    data = table[["source_layer", aggregation]].rename(columns={aggregation: "attribution"})
    data["aggregation"] = aggregation
    caption = {"run_id": run.run_id, "measure": "gradient x activation attribution", "aggregation": aggregation,
               "critical_fraction": (run.manifest.get("config") or {}).get("critical_fraction")}
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
    data = pd.DataFrame(rows).sort_values(["series", "layer"], kind="stable").reset_index(drop=True)
    first = table.iloc[0] if len(table) else {}
    caption = {"run_id": run.run_id, "measure": "decomposition fidelity (mean cosine, band = +-1 sd)",
               "coefficients": first.get("coefficients") if len(table) else None,
               "final_norm": bool(first.get("final_norm")) if len(table) else None}
    return FigureSpec("fidelity", "lines", "decomposition fidelity per layer", data, caption,
                      {"x": "layer", "y": "mean_cosine", "series": "series", "low": "low", "high": "high",
                       "x_label": "layer", "y_label": "cos(recomposed, original)"}, notes)


def stage_loss_lines(run, term: str = "loss") -> FigureSpec:
    table = pd.DataFrame(run.table("stage_losses.parquet"))
    if term not in table:
        raise FigureError(f"run {run.run_id} has no loss column {term!r}; it has "
                          f"{', '.join(c for c in table.columns if c.startswith('loss'))}")
    data = table[["stage_layer", "step", term]].rename(columns={term: "value"})
    data["series"] = "stage " + data["stage_layer"].astype(str)
    caption = {"run_id": run.run_id, "measure": term, "losses": run.manifest.get("losses")}
    return FigureSpec(f"stage-losses-{term}", "lines", f"{term} per step, per frontier stage", data, caption,
                      {"x": "step", "y": "value", "series": "series", "x_label": "step in stage", "y_label": term})


