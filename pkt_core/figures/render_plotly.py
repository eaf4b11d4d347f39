"""Draw a :class:`~pkt_core.figures.spec.FigureSpec` on screen with plotly (hover values, zoom)."""

from __future__ import annotations

import pandas as pd

from pkt_core.figures.spec import (
    OUTCOME_COLOURS,
    PAPER,
    ROLE_COLOURS,
    ROLE_NAMES,
    FigureError,
    FigureSpec,
    PaperPreset,
)

# -- rendering: plotly (screen) --------------------------------------------------------------


REFERENCE_COLOUR = "#7f7f7f"  # what models are compared against (e.g. the gold answers)


def _series_colours(values, preset: PaperPreset) -> dict:
    """Roles and outcomes keep their fixed colours; other series take palette colours no role in
    the same figure uses, so no two series share a colour."""
    names = list(dict.fromkeys(values))
    fixed = {name: ROLE_COLOURS.get(name) or OUTCOME_COLOURS.get(name) or
             (REFERENCE_COLOUR if str(name).startswith("gold") else None) for name in names}
    taken = {colour for colour in fixed.values() if colour}
    free = [c for c in preset.palette if c not in taken] or list(preset.palette)
    colours, next_free = {}, 0
    for name in names:
        if fixed[name]:
            colours[name] = fixed[name]
        else:
            colours[name] = free[next_free % len(free)]
            next_free += 1
    return colours


def to_plotly(spec: FigureSpec, preset: PaperPreset = PAPER):
    """An interactive plotly figure of ``spec`` (hover shows the exact values)."""
    import plotly.graph_objects as go

    enc = spec.encoding
    data = spec.data
    figure = go.Figure()
    if spec.kind == "heatmap":
        grid = data.pivot(index=enc["row"], columns=enc["col"], values=enc["value"]).sort_index().sort_index(axis=1)
        colourscale = preset.diverging if enc.get("diverging") else preset.sequential.capitalize()
        figure.add_trace(go.Heatmap(
            z=grid.values, x=list(grid.columns), y=list(grid.index), colorscale=colourscale,
            zmin=enc.get("zmin"), zmax=enc.get("zmax"), zmid=0.0 if enc.get("diverging") else None,
            colorbar={"title": {"text": enc.get("value_label", "")}},
            hovertemplate=f"{enc.get('row_label', 'row')} %{{y}}<br>{enc.get('col_label', 'col')} %{{x}}"
                          f"<br>{enc.get('value_label', 'value')} %{{z:.4f}}<extra></extra>",
        ))
        weight = enc.get("overlay")
        if weight and weight in data and (data[weight] > 0).any():
            marked = data[data[weight] > 0].sort_values([enc["row"], enc["col"]])
            # A map over every target layer reads as a path; a sparse pairing (a peer's) as points only.
            covers_all = marked[enc["row"]].nunique() == len(grid.index)
            figure.add_trace(go.Scatter(
                x=marked[enc["col"]], y=marked[enc["row"]], mode="markers+lines" if covers_all else "markers",
                name=enc.get("overlay_label", "layer map"),
                marker={"symbol": "circle-open", "color": "#000000", "size": 6 + 10 * marked[weight].to_numpy(),
                        "line": {"width": 2}},
                line={"color": "rgba(0,0,0,0.45)", "width": 1, "dash": "dot"},
                customdata=marked[[weight]].to_numpy(),
                hovertemplate="mapped: target %{y} <- source %{x}, weight %{customdata[0]:.2f}<extra></extra>",
            ))
        # Every layer labelled while the labels fit (a half-width chart holds about 16), else every other.
        # The axes span the matrix exactly (map markers on the edge cells would otherwise widen them).
        figure.update_xaxes(title=enc.get("col_label"), dtick=_layer_tick(len(grid.columns)),
                            range=[-0.5, len(grid.columns) - 0.5])
        figure.update_yaxes(title=enc.get("row_label"), dtick=_layer_tick(len(grid.index)),
                            range=[-0.5, len(grid.index) - 0.5])
        figure.update_layout(legend={"orientation": "h", "y": -0.2})
    elif spec.kind in ("lines", "bars"):
        series_column = enc.get("series")
        groups = data.groupby(series_column, sort=False) if series_column else [(spec.title, data)]
        colours = _series_colours([name for name, _ in groups], preset)
        for name, group in groups:
            error = None
            if enc.get("low") and enc.get("high"):
                error = {"type": "data", "symmetric": False,
                         "array": (group[enc["high"]] - group[enc["y"]]).to_numpy(),
                         "arrayminus": (group[enc["y"]] - group[enc["low"]]).to_numpy()}
            label = ROLE_NAMES.get(name, str(name))
            if spec.kind == "lines" and name in enc.get("reference", ()):  # a level to compare with (chance)
                figure.add_trace(go.Scatter(x=group[enc["x"]], y=group[enc["y"]], mode="lines", name=label,
                                            line={"color": REFERENCE_COLOUR, "dash": "dash"}))
            elif spec.kind == "lines":
                figure.add_trace(go.Scatter(x=group[enc["x"]], y=group[enc["y"]], mode="lines+markers", name=label,
                                            line={"color": colours[name]}, error_y=error))
            else:
                figure.add_trace(go.Bar(x=group[enc["x"]].astype(str), y=group[enc["y"]], name=label,
                                        marker_color=colours[name], error_y=error))
        figure.update_xaxes(title=enc.get("x_label"))
        figure.update_yaxes(title=enc.get("y_label"))
        if spec.kind == "bars":
            # Series that share no x (e.g. selected / not selected layers) fill whole slots; shared x are grouped.
            shared = bool(series_column) and data.groupby(enc["x"])[series_column].nunique().max() > 1
            figure.update_layout(barmode="group" if shared else "relative")
            if pd.api.types.is_integer_dtype(data[enc["x"]]):  # layers in their order, not first appearance
                figure.update_xaxes(categoryorder="array",
                                    categoryarray=[str(v) for v in sorted(data[enc["x"]].unique())])
    elif spec.kind == "scatter":
        colour = enc["colour"]
        colours = _series_colours(list(data[colour]), preset)
        hover = [c for c in enc.get("hover", []) if c in data]
        for name, group in data.groupby(colour, sort=False):
            figure.add_trace(go.Scatter(
                x=group[enc["x"]], y=group[enc["y"]], mode="markers", name=ROLE_NAMES.get(name, str(name)),
                marker={"color": colours[name], "size": 8, "symbol": _plotly_symbols(group, enc)},
                customdata=group[hover].astype(str).to_numpy() if hover else None,
                hovertemplate="<br>".join(f"{c}: %{{customdata[{i}]}}" for i, c in enumerate(hover)) + "<extra></extra>"
                if hover else None,
            ))
        figure.update_xaxes(title=enc.get("x_label"))
        figure.update_yaxes(title=enc.get("y_label"))
    elif spec.kind == "bipartite":
        _plotly_bipartite(figure, spec, preset)
    else:
        raise FigureError(f"unknown figure kind {spec.kind!r}")
    figure.update_layout(title={"text": spec.title}, template="plotly_white",
                         font={"family": preset.font_family}, margin={"l": 60, "r": 20, "t": 50, "b": 50})
    return figure


def _plotly_symbols(group: pd.DataFrame, enc: dict):
    symbol = enc.get("symbol")
    if not symbol or symbol not in group:
        return "circle"
    shapes = ["circle", "square", "diamond", "triangle-up", "x", "cross"]
    order = {value: index for index, value in enumerate(sorted(group[symbol].astype(str).unique()))}
    return [shapes[order[str(v)] % len(shapes)] for v in group[symbol]]


def _bipartite_positions(enc: dict) -> tuple[dict[int, float], dict[int, float]]:
    """Depth-normalised heights: layer l of L sits at l / (L - 1), so the depth map is level."""
    def heights(count: int) -> dict[int, float]:
        return {layer: (layer / (count - 1) if count > 1 else 0.5) for layer in range(count)}

    return heights(int(enc["n_source"])), heights(int(enc["n_target"]))


PANEL_STEP = 3.0  # x distance between the panels of a bipartite figure (source at 0, target at 1)


def bipartite_panels(spec: FigureSpec) -> list[str]:
    """The maps of a bipartite figure, one panel each (small multiples): maps drawn over each other
    in one panel hide each other where they agree, which is almost everywhere."""
    return list(dict.fromkeys(spec.data["map"]))


def _plotly_bipartite(figure, spec: FigureSpec, preset: PaperPreset) -> None:
    import plotly.graph_objects as go

    source_y, target_y = _bipartite_positions(spec.encoding)
    edges = spec.data
    maps = bipartite_panels(spec)
    colours = {name: preset.palette[i % len(preset.palette)] for i, name in enumerate(maps)}
    label_every_s, label_every_t = max(1, len(source_y) // 14), max(1, len(target_y) // 14)
    for index, name in enumerate(maps):
        left = index * PANEL_STEP
        group = edges[edges["map"] == name]
        first = True
        for row in group.itertuples():
            figure.add_trace(go.Scatter(
                x=[left, left + 1], y=[source_y[row.source_layer], target_y[row.target_layer]],
                mode="lines", line={"color": colours[name], "width": 1 + 3 * row.weight,
                                    "dash": "dash" if name.startswith("trained") else "solid"},
                name=name, legendgroup=name, showlegend=first,
                hovertemplate=f"{name}: source {row.source_layer} -> target {row.target_layer}, "
                              f"weight {row.weight:.2f}<extra></extra>",
            ))
            first = False
        figure.add_trace(go.Scatter(
            x=[left] * len(source_y), y=list(source_y.values()), mode="markers+text",
            text=[f"S{l}" if l % label_every_s == 0 else "" for l in source_y], textposition="middle left",
            marker={"color": ROLE_COLOURS["source"], "size": 7}, showlegend=False, hoverinfo="skip"))
        figure.add_trace(go.Scatter(
            x=[left + 1] * len(target_y), y=list(target_y.values()), mode="markers+text",
            text=[f"T{l}" if l % label_every_t == 0 else "" for l in target_y], textposition="middle right",
            marker={"color": ROLE_COLOURS["target_before"], "size": 7}, showlegend=False, hoverinfo="skip"))
        figure.add_annotation(x=left + 0.5, y=1.09, text=name, showarrow=False, font={"size": 12})
    figure.update_xaxes(visible=False, range=[-0.45, (len(maps) - 1) * PANEL_STEP + 1.45])
    figure.update_yaxes(title="relative depth (0 = first layer, 1 = last)", range=[-0.05, 1.14])
    figure.update_layout(legend={"orientation": "h", "y": -0.05})


def _layer_tick(count: int) -> int | None:
    if count <= 16:
        return 1
    if count <= 40:
        return 2
    return None
