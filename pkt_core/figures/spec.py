"""What a figure is: the tidy table behind it, its caption and encoding, and the paper preset.

Every figure is a :class:`FigureSpec`; the renderers (:mod:`~pkt_core.figures.render_plotly` for the
app, :mod:`~pkt_core.figures.render_matplotlib` for papers) and :mod:`~pkt_core.figures.export` read it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

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
    - ``lines``: x, y, series (+ low, high for a band; ``reference``: series drawn as grey dashed levels),
      x_label, y_label
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


