"""Per-item results kept across runs, keyed by (model fingerprint, task, item id, prompt variant).

So the source and the untouched target are scored once, and every later run (a new transfer,
a larger ``--limit``) scores only what is new. The store is one SQLite file under
``$PKT_HOME/eval_cache/``: each write is a transaction, so a crash never leaves half a record,
and the app and the CLI may write at the same time.

The variant part of the key is a digest of everything else that changes a score: prompt
format, shots, stop sequences, token budget, dtype, sandbox limits and the scoring version.

Fingerprints: a model loaded from the registry or a folder has the loader's fingerprint (pinned
hash or file digest). A model built or changed in memory (a transferred target) is
fingerprinted by the content of all its weights, so an altered model never hits the cache of
the model it came from. A model loaded from disk and then changed in place must be wrapped
again with :func:`pkt_core.models.loading.wrap_loaded_model`, or evaluated with ``use_cache=False``.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from contextlib import closing
from pathlib import Path

import torch

from pkt_core.models.loading import LoadedModel
from pkt_core.paths import pkt_home

CACHE_FILE = "results.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    fingerprint TEXT NOT NULL,
    task TEXT NOT NULL,
    variant TEXT NOT NULL,
    item_id TEXT NOT NULL,
    record TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (fingerprint, task, variant, item_id)
)
"""
_SQLITE_VARIABLES = 500  # ids per query, under SQLite's bound on query parameters


def eval_cache_dir() -> Path:
    return pkt_home() / "eval_cache"


@torch.no_grad()
def weights_digest(model: torch.nn.Module) -> str:
    """A digest of every parameter and buffer: names, shapes, dtypes and bytes."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in model.state_dict().items():
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(data.shape)}:{data.dtype}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def evaluation_fingerprint(loaded: LoadedModel) -> str:
    """The cache identity of a model; see the module docstring for when the weights are hashed."""
    if loaded.location.kind == "memory":
        return f"weights-{weights_digest(loaded.model)}"
    return loaded.fingerprint


def variant_key(variant_name: str, settings: Mapping) -> str:
    blob = json.dumps(settings, sort_keys=True, default=str)
    return f"{variant_name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


class ResultCache:
    """Item records (JSON objects) by key; ``path`` defaults to ``$PKT_HOME/eval_cache/results.sqlite``."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else eval_cache_dir() / CACHE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as connection, connection:
            connection.execute(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=60)
        connection.execute("PRAGMA journal_mode=WAL")
        return connection

    def get_many(self, fingerprint: str, task: str, variant: str, item_ids: Iterable[str]) -> dict[str, dict]:
        ids = list(item_ids)
        found: dict[str, dict] = {}
        with closing(self._connect()) as connection:
            for start in range(0, len(ids), _SQLITE_VARIABLES):
                chunk = ids[start:start + _SQLITE_VARIABLES]
                rows = connection.execute(
                    f"SELECT item_id, record FROM results WHERE fingerprint = ? AND task = ? AND variant = ? "
                    f"AND item_id IN ({','.join('?' * len(chunk))})",
                    (fingerprint, task, variant, *chunk),
                )
                found.update((item_id, json.loads(record)) for item_id, record in rows)
        return found

    def put_many(self, fingerprint: str, task: str, variant: str, records: Mapping[str, Mapping]) -> None:
        now = time.time()
        rows = [(fingerprint, task, variant, item_id, json.dumps(record), now) for item_id, record in records.items()]
        with closing(self._connect()) as connection, connection:
            connection.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?)", rows)

    def count(self, fingerprint: str | None = None) -> int:
        with closing(self._connect()) as connection:
            if fingerprint is None:
                return connection.execute("SELECT COUNT(*) FROM results").fetchone()[0]
            query = "SELECT COUNT(*) FROM results WHERE fingerprint = ?"
            return connection.execute(query, (fingerprint,)).fetchone()[0]

    def forget(self, fingerprint: str) -> int:
        """Drop every record of one model; returns how many were dropped."""
        with closing(self._connect()) as connection, connection:
            return connection.execute("DELETE FROM results WHERE fingerprint = ?", (fingerprint,)).rowcount
