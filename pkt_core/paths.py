"""Where PKT keeps its files: one home folder, overridable with ``$PKT_HOME``."""

from __future__ import annotations

import os
from pathlib import Path


def pkt_home() -> Path:
    """The root of everything PKT caches (models, downloads, activations); default ~/.cache/pkt."""
    configured = os.environ.get("PKT_HOME")
    root = Path(configured).expanduser() if configured else Path.home() / ".cache" / "pkt"
    return root


def models_dir() -> Path:
    return pkt_home() / "models"


def downloads_dir() -> Path:
    return pkt_home() / "downloads"


def model_cache_dir(name: str) -> Path:
    """The folder that holds a provisioned model (safetensors, config, tokenizer)."""
    return models_dir() / name
