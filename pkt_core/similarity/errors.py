"""What the similarity engine raises or warns about; every message names the array and the bound hit."""

from __future__ import annotations

from pkt_core.errors import SimilarityInputError


class DegenerateRepresentationError(SimilarityInputError):
    """A representation carries no usable variation (all rows identical), so the measure is undefined."""


class UnknownMeasureError(SimilarityInputError):
    """A measure name (or one of its options) is not in the registry."""


class SimilarityWarning(UserWarning):
    """A result is defined but less meaningful than usual (e.g. CCA with more features than rows)."""
