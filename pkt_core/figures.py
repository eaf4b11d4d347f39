"""Figures of a run: one data table per figure, drawn on screen (plotly) or for a paper (matplotlib).

Every figure is a :class:`FigureSpec`: the tidy table behind it (exactly what is drawn; it is
the CSV a user downloads), a caption record (run id, measure, options) and an encoding that
says which columns are drawn how. Two renderers read the same spec: :func:`to_plotly` for the
app (hover values, zoom) and :func:`to_matplotlib` for static export with a paper preset
(font sizes, a colour-blind-safe palette, single or double column width). :func:`export_figure`
turns a spec into PDF, SVG or PNG bytes, CSV or a JSON caption, all on the server: nothing
needs a browser to export.

The builders below only *read* a run (through :mod:`pkt_core.run_reader` and
:mod:`pkt_core.evaluation.records`); nothing a run holds is recomputed from raw activations.
This module never imports Streamlit.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pkt_core.errors import PktError

# -- presets ----------------------------------------------------------------------------------

# Okabe & Ito (2008), "Color Universal Design": distinguishable under the common colour-vision
# deficiencies. Black is kept last: it is the colour of overlays.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
ROLE_COLOURS = {"source": "#0072B2", "target_before": "#E69F00", "target_after": "#009E73"}
ROLE_NAMES = {"source": "source", "target_before": "target before", "target_after": "target after"}
OUTCOME_COLOURS = {"correct": "#009E73", "incorrect": "#D55E00", "not evaluated": "#999999"}
ROLES = ("source", "target_before", "target_after")


class FigureError(PktError):
    """A figure cannot be built from what the run holds (the message says what is missing)."""


@dataclass(frozen=True)
class PaperPreset:
    """Typography and colour for export. Widths follow two-column venues (ACL, NeurIPS, IEEE)."""

    name: str = "paper"
    font_family: str = "DejaVu Sans"
    font_size: float = 8.0
    title_size: float = 9.0
    tick_size: float = 7.0
    line_width: float = 1.2
    marker_size: float = 3.5
    single_column_in: float = 3.5
    double_column_in: float = 7.1
    aspect: float = 0.72  # height / width
    dpi: int = 300
    palette: tuple[str, ...] = OKABE_ITO
    sequential: str = "viridis"  # perceptually uniform, colour-blind safe
    diverging: str = "PuOr"  # ColorBrewer, colour-blind safe

    def width_inches(self, width: str) -> float:
        if width == "single":
            return self.single_column_in
        if width == "double":
            return self.double_column_in
        raise FigureError(f"width must be 'single' or 'double', not {width!r}")

    def record(self, width: str) -> dict:
        return {"preset": self.name, "width": width, "width_in": self.width_inches(width),
                "font_family": self.font_family, "font_size_pt": self.font_size, "dpi": self.dpi,
                "palette": "Okabe-Ito" if self.palette == OKABE_ITO else list(self.palette),
                "sequential": self.sequential, "diverging": self.diverging}


PAPER = PaperPreset()
EXPORT_FORMATS = ("pdf", "svg", "png", "csv", "json")
MIME_TYPES = {"pdf": "application/pdf", "svg": "image/svg+xml", "png": "image/png", "csv": "text/csv",
              "json": "application/json"}


@dataclass
class FigureSpec:
    """What one figure shows. ``data`` is the table behind it; ``encoding`` names its columns.

    kinds and their encodings:
    - ``heatmap``: row, col, value (+ overlay: weight column, drawn as markers where > 0),
      row_label, col_label, value_label, diverging, zmin, zmax
    - ``lines``: x, y, series (+ low, high for a band), x_label, y_label
    - ``bars``: x, y, series (+ low, high for error bars), x_label, y_label
    - ``scatter``: x, y, colour (+ symbol, hover), x_label, y_label
    - ``bipartite``: edges (map, source_layer, target_layer, weight), n_source, n_target
    """

    name: str
    kind: str
    title: str
    data: pd.DataFrame
    caption: dict
    encoding: dict
    notes: list[str] = field(default_factory=list)

    def caption_record(self, preset: PaperPreset = PAPER, width: str = "single") -> dict:
        return {"figure": self.name, "title": self.title, **self.caption, "notes": list(self.notes),
                "columns": list(self.data.columns), "rows": int(len(self.data)), "export": preset.record(width)}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower()


# -- rendering: plotly (screen) --------------------------------------------------------------


def _series_colours(values, preset: PaperPreset) -> dict:
    colours = {}
    palette = [c for c in preset.palette]
    for index, value in enumerate(dict.fromkeys(values)):
        colours[value] = ROLE_COLOURS.get(value) or OUTCOME_COLOURS.get(value) or palette[index % len(palette)]
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
            figure.add_trace(go.Scatter(
                x=marked[enc["col"]], y=marked[enc["row"]], mode="markers+lines",
                name=enc.get("overlay_label", "layer map"),
                marker={"symbol": "circle-open", "color": "#000000", "size": 6 + 10 * marked[weight].to_numpy(),
                        "line": {"width": 2}},
                line={"color": "rgba(0,0,0,0.45)", "width": 1, "dash": "dot"},
                customdata=marked[[weight]].to_numpy(),
                hovertemplate="mapped: target %{y} <- source %{x}, weight %{customdata[0]:.2f}<extra></extra>",
            ))
        figure.update_xaxes(title=enc.get("col_label"), dtick=1 if len(grid.columns) <= 32 else None)
        figure.update_yaxes(title=enc.get("row_label"), dtick=1 if len(grid.index) <= 32 else None)
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
            if spec.kind == "lines":
                figure.add_trace(go.Scatter(x=group[enc["x"]], y=group[enc["y"]], mode="lines+markers", name=label,
                                            line={"color": colours[name]}, error_y=error))
            else:
                figure.add_trace(go.Bar(x=group[enc["x"]].astype(str), y=group[enc["y"]], name=label,
                                        marker_color=colours[name], error_y=error))
        figure.update_xaxes(title=enc.get("x_label"))
        figure.update_yaxes(title=enc.get("y_label"))
        if spec.kind == "bars":
            figure.update_layout(barmode="group")
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


def _plotly_bipartite(figure, spec: FigureSpec, preset: PaperPreset) -> None:
    import plotly.graph_objects as go

    source_y, target_y = _bipartite_positions(spec.encoding)
    edges = spec.data
    maps = list(dict.fromkeys(edges["map"]))
    colours = {name: preset.palette[i % len(preset.palette)] for i, name in enumerate(maps)}
    for index, name in enumerate(maps):
        group = edges[edges["map"] == name]
        offset = (index - (len(maps) - 1) / 2) * 0.012  # keep coinciding maps visible side by side
        first = True
        for row in group.itertuples():
            figure.add_trace(go.Scatter(
                x=[0, 1], y=[source_y[row.source_layer] + offset, target_y[row.target_layer] + offset],
                mode="lines", line={"color": colours[name], "width": 1 + 4 * row.weight,
                                    "dash": "dash" if name.startswith("trained") else "solid"},
                name=name, legendgroup=name, showlegend=first,
                hovertemplate=f"{name}: source {row.source_layer} -> target {row.target_layer}, "
                              f"weight {row.weight:.2f}<extra></extra>",
            ))
            first = False
    figure.add_trace(go.Scatter(x=[0] * len(source_y), y=list(source_y.values()), mode="markers+text",
                                text=[f"S{l}" for l in source_y], textposition="middle left", name="source layers",
                                marker={"color": ROLE_COLOURS["source"], "size": 9}, showlegend=False))
    figure.add_trace(go.Scatter(x=[1] * len(target_y), y=list(target_y.values()), mode="markers+text",
                                text=[f"T{l}" for l in target_y], textposition="middle right", name="target layers",
                                marker={"color": ROLE_COLOURS["target_before"], "size": 9}, showlegend=False))
    figure.update_xaxes(visible=False, range=[-0.25, 1.25])
    figure.update_yaxes(title="relative depth (0 = first layer, 1 = last)", range=[-0.05, 1.05])


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
        maps = list(dict.fromkeys(data["map"]))
        colours = {name: preset.palette[i % len(preset.palette)] for i, name in enumerate(maps)}
        for index, name in enumerate(maps):
            offset = (index - (len(maps) - 1) / 2) * 0.012
            group = data[data["map"] == name]
            for n, row in enumerate(group.itertuples()):
                axes.plot([0, 1], [source_y[row.source_layer] + offset, target_y[row.target_layer] + offset],
                          color=colours[name], linewidth=0.4 + 1.6 * row.weight,
                          linestyle="--" if name.startswith("trained") else "-", label=name if n == 0 else None)
        axes.scatter([0] * len(source_y), list(source_y.values()), color=ROLE_COLOURS["source"], s=12, zorder=3)
        axes.scatter([1] * len(target_y), list(target_y.values()), color=ROLE_COLOURS["target_before"], s=12, zorder=3)
        step_s = max(1, len(source_y) // 16)
        step_t = max(1, len(target_y) // 16)
        for layer, y in source_y.items():
            if layer % step_s == 0:
                axes.annotate(f"S{layer}", (0, y), xytext=(-3, 0), textcoords="offset points", ha="right", va="center",
                              fontsize=preset.tick_size - 1)
        for layer, y in target_y.items():
            if layer % step_t == 0:
                axes.annotate(f"T{layer}", (1, y), xytext=(3, 0), textcoords="offset points", ha="left", va="center",
                              fontsize=preset.tick_size - 1)
        axes.set_xlim(-0.3, 1.3)
        axes.set_xticks([0, 1])
        axes.set_xticklabels(["source", "target"])
        axes.set_ylabel("relative depth")
        axes.legend(frameon=False, fontsize=preset.tick_size - 1, loc="upper center", bbox_to_anchor=(0.5, -0.12),
                    ncol=min(3, len(maps)))
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


# -- export -----------------------------------------------------------------------------------


def export_figure(spec: FigureSpec, fmt: str, preset: PaperPreset = PAPER, width: str = "single") -> bytes:
    """The figure as ``pdf``, ``svg`` or ``png`` bytes (matplotlib, paper preset), its data as
    ``csv`` or its caption as ``json``. Everything happens here, on the server."""
    if fmt == "csv":
        return spec.data.to_csv(index=False).encode("utf-8")
    if fmt == "json":
        return (json.dumps(spec.caption_record(preset, width), indent=2, default=_json_default) + "\n").encode("utf-8")
    if fmt not in ("pdf", "svg", "png"):
        raise FigureError(f"cannot export as {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    import matplotlib

    figure = to_matplotlib(spec, preset, width)
    buffer = io.BytesIO()
    metadata = {"Title": spec.title}
    with matplotlib.rc_context(_rc(preset)):
        figure.savefig(buffer, format=fmt, dpi=preset.dpi, metadata=metadata)
    return buffer.getvalue()


def export_filename(spec: FigureSpec, fmt: str) -> str:
    run = spec.caption.get("run_id", "run")
    return f"{_slug(str(run))}-{_slug(spec.name)}.{fmt}"


def export_bundle(spec: FigureSpec, folder: str | Path, preset: PaperPreset = PAPER, width: str = "single",
                  formats: tuple[str, ...] = EXPORT_FORMATS) -> list[Path]:
    """Write every format of ``spec`` into ``folder``; returns the files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = folder / export_filename(spec, fmt)
        path.write_bytes(export_figure(spec, fmt, preset, width))
        written.append(path)
    return written


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (Path,)):
        return str(value)
    return str(value)


# -- runs table -------------------------------------------------------------------------------

PRIMARY_METRICS = {"mmlu": "acc", "gsm8k": "exact_match,flexible-extract", "humaneval": "pass@1", "mbpp": "pass@1"}


def primary_metric(task: str, metrics: dict) -> str | None:
    preferred = PRIMARY_METRICS.get(task)
    if preferred in metrics:
        return preferred
    for name, value in metrics.items():
        if isinstance(value, dict) and "mean" in value:
            return name
    return None


def _interval_text(value: dict | None) -> str:
    if not value or "mean" not in value:
        return "-"
    if value.get("low") is not None and value.get("high") is not None:
        return f"{value['mean']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"
    return f"{value['mean']:.3f}"


def run_gains(manifest: dict) -> list[dict]:
    """Per evaluated task: the primary metric of target before and after (with intervals) and the gain."""
    rows = []
    for task, roles in (manifest.get("evaluation") or {}).items():
        if not isinstance(roles, dict):
            continue
        before, after = roles.get("target_before") or {}, roles.get("target_after") or {}
        metric = primary_metric(task, after or before)
        if metric is None:
            continue
        b, a = before.get(metric), after.get(metric)
        gain = (a["mean"] - b["mean"]) if (a and b and "mean" in a and "mean" in b) else None
        rows.append({"task": task, "metric": metric, "before": b, "after": a, "gain": gain,
                     "source": (roles.get("source") or {}).get(metric)})
    return rows


def _peak(stages: dict, key: str) -> float | None:
    values = [record.get(key) for record in (stages or {}).values() if isinstance(record, dict)]
    values = [v for v in values if isinstance(v, (int, float))]
    return max(values) if values else None


def _hardware(manifest: dict) -> str:
    environment = manifest.get("environment") or {}
    gpus = environment.get("gpus") or []
    if gpus:
        return f"{len(gpus)} x {gpus[0]}"
    cpus = environment.get("cpu_count")
    return f"CPU ({cpus} cores)" if cpus else (manifest.get("hardware") or "-")


def runs_table(listings) -> pd.DataFrame:
    """One row per run (complete or not) with pair, method, variant, task, gains, cost, date, hardware."""
    rows = []
    for listing in listings:
        manifest = listing.manifest or {}
        source, target = manifest.get("source") or {}, manifest.get("target") or {}
        pair = manifest.get("pair") or (
            f"{source.get('name', '?')} -> {target.get('name', '?')}" if source or target else None)
        gains = run_gains(manifest)
        first = gains[0] if gains else None
        rows.append({
            "run_id": manifest.get("run_id") or listing.path.name,
            "pair": pair,
            "method": manifest.get("method"),
            "variant": (f"{manifest.get('variant')} (two tokenizers, per sequence)"
                        if (manifest.get("alignment_level") or {}).get("level") == "sequence" else manifest.get("variant")),
            "task": manifest.get("task") or (manifest.get("config") or {}).get("data_file"),
            "gain": first["gain"] if first else None,
            "gains": "; ".join(f"{g['task']} {g['metric']}: {_interval_text(g['before'])} -> {_interval_text(g['after'])}"
                               for g in gains) or "not evaluated",
            "wall_s": manifest.get("wall_seconds"),
            "peak_rss_mib": _peak(manifest.get("stages"), "peak_rss_mib"),
            "peak_gpu_mib": _peak(manifest.get("stages"), "peak_gpu_mib"),
            "trainable_params": manifest.get("trainable_parameters"),
            "created": manifest.get("created_at"),
            "hardware": _hardware(manifest) if manifest else None,
            "status": manifest.get("status", "unreadable") if listing.manifest else "unreadable",
            "problem": listing.problem or "",
            "folder": str(listing.path),
        })
    return pd.DataFrame(rows, columns=["run_id", "pair", "method", "variant", "task", "gain", "gains", "wall_s",
                                       "peak_rss_mib", "peak_gpu_mib", "trainable_params", "created", "hardware",
                                       "status", "problem", "folder"])


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


# -- benchmarks -------------------------------------------------------------------------------


def evaluation_folders(run) -> dict[str, dict[str, Path]]:
    """task -> role -> folder, for the evaluations stored under ``<run>/evaluation/``."""
    root = run.folder / "evaluation"
    found: dict[str, dict[str, Path]] = {}
    if not root.is_dir():
        return found
    for task_folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for role in ROLES:
            folder = task_folder / role
            if (folder / "summary.json").is_file() or (folder / "items.parquet").is_file():
                found.setdefault(task_folder.name, {})[role] = folder
    return found


def benchmark_summary(run) -> pd.DataFrame:
    """task, role, metric, mean, low, high: from each evaluation's summary.json, else the manifest."""
    from pkt_core.evaluation.records import RecordsError, read_summary

    rows = []
    folders = evaluation_folders(run)
    recorded = run.manifest.get("evaluation") or {}
    for task in sorted(set(folders) | set(recorded)):
        for role in ROLES:
            metrics = None
            origin = "summary.json"
            if role in folders.get(task, {}):
                try:
                    metrics = read_summary(folders[task][role]).get("metrics")
                except (RecordsError, json.JSONDecodeError):
                    metrics = None
            if metrics is None:
                metrics = (recorded.get(task) or {}).get(role)
                origin = "manifest"
            for name, value in (metrics or {}).items():
                if isinstance(value, dict) and "mean" in value:
                    rows.append({"task": task, "role": role, "metric": name, "mean": value["mean"],
                                 "low": value.get("low"), "high": value.get("high"), "from": origin})
    return pd.DataFrame(rows, columns=["task", "role", "metric", "mean", "low", "high", "from"])


def benchmark_bars(run, task: str, metric: str) -> FigureSpec:
    summary = benchmark_summary(run)
    data = summary[(summary["task"] == task) & (summary["metric"] == metric)][["role", "mean", "low", "high"]].copy()
    if data.empty:
        raise FigureError(f"run {run.run_id} has no {metric} for {task}")
    data["low"] = data["low"].fillna(data["mean"])
    data["high"] = data["high"].fillna(data["mean"])
    data["model"] = data["role"]
    caption = {"run_id": run.run_id, "task": task, "measure": metric, "interval": "bootstrap 95% (as evaluated)"}
    return FigureSpec(f"{task}-{metric}", "bars", f"{task}: {metric}", data, caption,
                      {"x": "role", "y": "mean", "series": "model", "low": "low", "high": "high", "x_label": "model",
                       "y_label": metric})


def per_subject(run, task: str = "mmlu") -> pd.DataFrame:
    """subject, role, n, acc (and acc_norm) from each role's summary (MMLU)."""
    from pkt_core.evaluation.records import read_summary

    rows = []
    for role, folder in evaluation_folders(run).get(task, {}).items():
        if not (folder / "summary.json").is_file():
            continue
        for entry in read_summary(folder).get("per_subject") or []:
            rows.append({"role": role, **entry})
    return pd.DataFrame(rows)


def per_subject_bars(run, task: str = "mmlu", metric: str = "acc", subjects: list[str] | None = None) -> FigureSpec:
    table = per_subject(run, task)
    if table.empty:
        raise FigureError(f"run {run.run_id} has no per-subject results for {task}")
    if subjects:
        table = table[table["subject"].isin(subjects)]
    data = table[["subject", "role", "n", metric]].rename(columns={metric: "value"})
    caption = {"run_id": run.run_id, "task": task, "measure": metric, "subjects": subjects or "all"}
    return FigureSpec(f"{task}-{metric}-per-subject", "bars", f"{task}: {metric} per subject", data, caption,
                      {"x": "subject", "y": "value", "series": "role", "x_label": "subject", "y_label": metric})


def paired_items(run, task: str) -> tuple[Any, pd.DataFrame]:
    """The paired comparison target before -> after and one row per item with every model's answer."""
    from pkt_core.evaluation.records import read_items
    from pkt_core.evaluation.runner import compare_evaluations

    folders = evaluation_folders(run).get(task, {})
    if "target_before" not in folders or "target_after" not in folders:
        raise FigureError(f"run {run.run_id} has no per-item {task} evaluation of the target before and after")
    comparison = compare_evaluations(folders["target_before"], folders["target_after"])
    merged = None
    for role in ROLES:
        if role not in folders:
            continue
        items = read_items(folders[role])
        keep = items[["item_id", "prediction", "score", "outcome"]].rename(
            columns={c: f"{c}_{role}" for c in ("prediction", "score", "outcome")})
        if merged is None:
            merged = items[["item_id", "subject", "prompt", "target"]].merge(keep, on="item_id")
        else:
            merged = merged.merge(keep, on="item_id", how="left")
    gained, lost = set(comparison.wrong_to_right_ids), set(comparison.right_to_wrong_ids)
    merged["flip"] = [("gained" if i in gained else "lost" if i in lost else
                       ("both right" if s == 1 else "both wrong"))
                      for i, s in zip(merged["item_id"].astype(str), merged["score_target_after"])]
    return comparison, merged.rename(columns={"target": "gold"})


def figure_summary(spec: FigureSpec) -> dict:
    """A compact, JSON-ready description (used by tests and the app's caption panel)."""
    return {"name": spec.name, "kind": spec.kind, "rows": len(spec.data), **{k: v for k, v in spec.caption.items()
                                                                            if k not in ("outlier_handling",)}}

