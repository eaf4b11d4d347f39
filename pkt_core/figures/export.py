"""Export a figure as PDF, SVG or PNG (matplotlib), its data as CSV and its caption as JSON, on the server."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from pkt_core.figures.render_matplotlib import _rc, to_matplotlib
from pkt_core.figures.spec import (
    EXPORT_FORMATS,
    PAPER,
    FigureError,
    FigureSpec,
    PaperPreset,
    _slug,
)

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



def figure_summary(spec: FigureSpec) -> dict:
    """A compact, JSON-ready description (used by tests and the app's caption panel)."""
    return {"name": spec.name, "kind": spec.kind, "rows": len(spec.data), **{k: v for k, v in spec.caption.items()
                                                                            if k not in ("outlier_handling",)}}

