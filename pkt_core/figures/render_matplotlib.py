"""Draw a :class:`~pkt_core.figures.spec.FigureSpec` for a paper with matplotlib and the paper preset."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pkt_core.figures.render_plotly import PANEL_STEP, _bipartite_positions, _series_colours, bipartite_panels
from pkt_core.figures.spec import (
    PAPER,
    ROLE_COLOURS,
    ROLE_NAMES,
    FigureError,
    FigureSpec,
    PaperPreset,
)

# -- rendering: matplotlib (paper export) -----------------------------------------------------


def _rc(preset: PaperPreset) -> dict:
    return {
        "font.family": preset.font_family, "font.size": preset.font_size, "axes.titlesize": preset.title_size,
        "axes.labelsize": preset.font_size, "xtick.labelsize": preset.tick_size, "ytick.labelsize": preset.tick_size,
        "legend.fontsize": preset.tick_size, "lines.linewidth": preset.line_width,
        "lines.markersize": preset.marker_size, "axes.prop_cycle": __import__("cycler").cycler(color=list(preset.palette)),
        "pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none", "savefig.bbox": "tight",
        "axes.spines.top": False, "axes.spines.right": False,
    }


def to_matplotlib(spec: FigureSpec, preset: PaperPreset = PAPER, width: str = "single"):
    """A static matplotlib figure of ``spec`` in the preset's typography, ``width`` single/double column."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    inches = preset.width_inches(width)
    with matplotlib.rc_context(_rc(preset)):
        figure = Figure(figsize=(inches, inches * preset.aspect), dpi=preset.dpi)
        axes = figure.add_subplot(1, 1, 1)
        _draw(axes, figure, spec, preset)
        axes.set_title(spec.title)
    return figure


def _draw(axes, figure, spec: FigureSpec, preset: PaperPreset) -> None:
    enc = spec.encoding
    data = spec.data
    if spec.kind == "heatmap":
        grid = data.pivot(index=enc["row"], columns=enc["col"], values=enc["value"]).sort_index().sort_index(axis=1)
        cmap = preset.diverging if enc.get("diverging") else preset.sequential
        zmin, zmax = enc.get("zmin"), enc.get("zmax")
        if enc.get("diverging") and zmin is None:
            bound = float(np.nanmax(np.abs(grid.values))) or 1.0
            zmin, zmax = -bound, bound
        image = axes.imshow(grid.values, origin="lower", aspect="auto", cmap=cmap, vmin=zmin, vmax=zmax,
                            extent=(min(grid.columns) - 0.5, max(grid.columns) + 0.5,
                                    min(grid.index) - 0.5, max(grid.index) + 0.5), interpolation="nearest")
        colourbar = figure.colorbar(image, ax=axes, fraction=0.05, pad=0.03)
        colourbar.set_label(enc.get("value_label", ""))
        weight = enc.get("overlay")
        if weight and weight in data and (data[weight] > 0).any():
            marked = data[data[weight] > 0].sort_values([enc["row"], enc["col"]])
            axes.plot(marked[enc["col"]], marked[enc["row"]], linestyle=":", color="black", linewidth=0.8)
            axes.scatter(marked[enc["col"]], marked[enc["row"]], s=8 + 30 * marked[weight], facecolors="none",
                         edgecolors="black", linewidths=0.9, label=enc.get("overlay_label", "layer map"))
            axes.legend(loc="upper left", frameon=False)
        axes.set_xlabel(enc.get("col_label", ""))
        axes.set_ylabel(enc.get("row_label", ""))
        for side in ("top", "right"):
            axes.spines[side].set_visible(True)
    elif spec.kind in ("lines", "bars"):
        series_column = enc.get("series")
        groups = list(data.groupby(series_column, sort=False)) if series_column else [(spec.title, data)]
        colours = _series_colours([name for name, _ in groups], preset)
        if spec.kind == "lines":
            for name, group in groups:
                if name in enc.get("reference", ()):  # a level to compare with (chance)
                    axes.plot(group[enc["x"]], group[enc["y"]], linestyle="--", color="#7f7f7f",
                              label=ROLE_NAMES.get(name, str(name)))
                    continue
                axes.plot(group[enc["x"]], group[enc["y"]], marker="o", color=colours[name],
                          label=ROLE_NAMES.get(name, str(name)))
                if enc.get("low") and enc.get("high"):
                    axes.fill_between(group[enc["x"]], group[enc["low"]], group[enc["high"]], color=colours[name],
                                      alpha=0.2, linewidth=0)
        else:
            categories = list(dict.fromkeys(data[enc["x"]].astype(str)))
            positions = {c: i for i, c in enumerate(categories)}
            width = 0.8 / max(1, len(groups))
            for index, (name, group) in enumerate(groups):
                xs = np.array([positions[str(c)] for c in group[enc["x"]]]) + (index - (len(groups) - 1) / 2) * width
                error = None
                if enc.get("low") and enc.get("high"):
                    error = np.vstack([(group[enc["y"]] - group[enc["low"]]).to_numpy(),
                                       (group[enc["high"]] - group[enc["y"]]).to_numpy()])
                axes.bar(xs, group[enc["y"]], width=width, color=colours[name], yerr=error, capsize=1.5,
                         error_kw={"linewidth": 0.7}, label=ROLE_NAMES.get(name, str(name)))
            axes.set_xticks(range(len(categories)))
            axes.set_xticklabels(categories, rotation=90 if len(categories) > 8 else 0)
        axes.set_xlabel(enc.get("x_label", ""))
        axes.set_ylabel(enc.get("y_label", ""))
        if series_column and len(groups) > 1:
            axes.legend(frameon=False)
    elif spec.kind == "scatter":
        colour = enc["colour"]
        colours = _series_colours(list(data[colour]), preset)
        markers = ["o", "s", "D", "^", "x", "+"]
        symbol = enc.get("symbol")
        for name, group in data.groupby(colour, sort=False):
            if symbol and symbol in group:
                order = sorted(data[symbol].astype(str).unique())
                for value, part in group.groupby(group[symbol].astype(str)):
                    axes.scatter(part[enc["x"]], part[enc["y"]], color=colours[name], s=10,
                                 marker=markers[order.index(value) % len(markers)], linewidths=0.6)
            else:
                axes.scatter(group[enc["x"]], group[enc["y"]], color=colours[name], s=10)
            axes.scatter([], [], color=colours[name], s=10, label=ROLE_NAMES.get(name, str(name)))
        if symbol and symbol in data:
            for index, value in enumerate(sorted(data[symbol].astype(str).unique())):
                axes.scatter([], [], color="#666666", s=10, marker=markers[index % len(markers)],
                             label=ROLE_NAMES.get(value, value))
        axes.legend(frameon=False, fontsize=preset.tick_size, loc="best")
        axes.set_xlabel(enc.get("x_label", ""))
        axes.set_ylabel(enc.get("y_label", ""))
    elif spec.kind == "bipartite":
        source_y, target_y = _bipartite_positions(enc)
        maps = bipartite_panels(spec)
        colours = {name: preset.palette[i % len(preset.palette)] for i, name in enumerate(maps)}
        step_s, step_t = max(1, len(source_y) // 8), max(1, len(target_y) // 8)
        for index, name in enumerate(maps):  # one panel per map, side by side
            left = index * PANEL_STEP
            for row in data[data["map"] == name].itertuples():
                axes.plot([left, left + 1], [source_y[row.source_layer], target_y[row.target_layer]],
                          color=colours[name], linewidth=0.4 + 1.2 * row.weight,
                          linestyle="--" if name.startswith("trained") else "-")
            axes.scatter([left] * len(source_y), list(source_y.values()), color=ROLE_COLOURS["source"], s=6, zorder=3)
            axes.scatter([left + 1] * len(target_y), list(target_y.values()), color=ROLE_COLOURS["target_before"],
                         s=6, zorder=3)
            for layer, y in source_y.items():
                if layer % step_s == 0:
                    axes.annotate(f"S{layer}", (left, y), xytext=(-2, 0), textcoords="offset points", ha="right",
                                  va="center", fontsize=preset.tick_size - 2)
            for layer, y in target_y.items():
                if layer % step_t == 0:
                    axes.annotate(f"T{layer}", (left + 1, y), xytext=(2, 0), textcoords="offset points", ha="left",
                                  va="center", fontsize=preset.tick_size - 2)
            axes.text(left + 0.5, 1.07, name, ha="center", va="bottom", fontsize=preset.tick_size)
        axes.set_xlim(-0.5, (len(maps) - 1) * PANEL_STEP + 1.5)
        axes.set_ylim(-0.05, 1.15)
        axes.set_xticks([])
        axes.set_ylabel("relative depth")
    else:
        raise FigureError(f"unknown figure kind {spec.kind!r}")
    _integer_ticks(axes, spec)


def _integer_ticks(axes, spec: FigureSpec) -> None:
    """Layer and step axes take whole numbers only."""
    from matplotlib.ticker import MaxNLocator

    if spec.kind not in ("heatmap", "lines"):
        return
    enc = spec.encoding
    columns = {"x": enc.get("col") if spec.kind == "heatmap" else enc.get("x"),
               "y": enc.get("row") if spec.kind == "heatmap" else None}
    for axis, column in columns.items():
        if column and column in spec.data and pd.api.types.is_integer_dtype(spec.data[column]):
            getattr(axes, f"{axis}axis").set_major_locator(MaxNLocator(integer=True))


