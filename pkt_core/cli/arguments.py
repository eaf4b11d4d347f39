"""Argument readers several subcommands share."""

from __future__ import annotations

from pkt_core.errors import PktError


def parse_layer_list(text: str | None) -> tuple[int, ...] | None:
    """'0,3,5-8' -> (0, 3, 5, 6, 7, 8); None or 'all' -> None (every layer)."""
    if text is None or text == "all":
        return None
    layers: list[int] = []
    try:
        for piece in text.split(","):
            if "-" in piece:
                first, last = piece.split("-")
                layers.extend(range(int(first), int(last) + 1))
            else:
                layers.append(int(piece))
    except ValueError:
        raise PktError(f"cannot read layer list {text!r}; write e.g. 0,3,5-8 or all") from None
    return tuple(layers)
