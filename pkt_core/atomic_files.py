"""Writes that are whole or absent: a reader never sees half a file or half a folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, payload: Any, default=None) -> None:
    """Write JSON to a temporary file beside ``path``, then rename it over ``path``."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(payload, indent=1, default=default))
    os.replace(temporary, path)


def replace_directory(staging: Path, destination: Path) -> None:
    """Move a finished ``staging`` folder to ``destination``; an old folder there goes only after."""
    if destination.exists():
        trash = destination.with_name(f".{destination.name}.old")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(destination, trash)
        os.replace(staging, destination)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, destination)
