"""Shared fixtures: tiny random models of every supported family and a byte-level tokenizer."""

from __future__ import annotations

import pytest
from tiny_models import FAMILY_MODEL_TYPES, make_tiny_loaded

from pkt_core.models.synthetic import byte_level_tokenizer


@pytest.fixture(autouse=True)
def isolated_pkt_home(tmp_path_factory, monkeypatch):
    """Every test gets its own PKT_HOME, so no test sees the user's cache or another test's files."""
    home = tmp_path_factory.mktemp("pkt_home")
    monkeypatch.setenv("PKT_HOME", str(home))
    # The app's shipped runs too: tests see only the runs they make (tests/test_app.py checks the
    # repository's cached_runs/ on purpose).
    monkeypatch.setenv("PKT_CACHED_RUNS", str(tmp_path_factory.mktemp("cached_runs")))
    # A job worker a test starts (directly or through the New run page) leaves one second after
    # its last job instead of holding models for the default quarter of an hour.
    monkeypatch.setenv("PKT_JOBS_IDLE_EXIT", "1")
    return home


@pytest.fixture
def real_pair_home(monkeypatch):
    """For slow tests: the user's real model cache (``$PKT_REAL_HOME``, default ~/.cache/pkt)
    instead of the per-test PKT_HOME; skips, saying why, when the real pair is not cached."""
    import os
    from pathlib import Path

    from pkt_core.models.provisioning import is_cached
    from pkt_core.models.registry import DEFAULT_PAIR, get_pair_spec

    pair = get_pair_spec(DEFAULT_PAIR)
    monkeypatch.setenv("PKT_HOME", os.environ.get("PKT_REAL_HOME", str(Path.home() / ".cache" / "pkt")))
    missing = [name for name in (pair.source, pair.target) if not is_cached(name)]
    if missing:
        pytest.skip(f"the real pair is not cached ({', '.join(missing)}); run `pkt models fetch {pair.name}`")
    return pair


@pytest.fixture(scope="session")
def tokenizer():
    return byte_level_tokenizer()


@pytest.fixture(params=FAMILY_MODEL_TYPES)
def tiny_loaded(request):
    return make_tiny_loaded(request.param)


@pytest.fixture
def tiny_model_folder(tmp_path):
    """A tiny Qwen2 model and tokenizer saved as a Hugging Face folder, as a user would bring one."""
    loaded = make_tiny_loaded("qwen2", num_layers=2)
    folder = tmp_path / "tiny-qwen2"
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return folder

