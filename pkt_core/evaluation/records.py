"""An evaluation on disk: per-item rows as Parquet and a summary as JSON, both written atomically.

``<out>/items.parquet`` has one row per item: task, item_id, subject (MMLU), prompt, target,
prediction (the chosen letter, the extracted number or the program's completion), score (0/1),
outcome (``correct``/``incorrect`` for MMLU and GSM8K; the sandbox outcome for code), details
(JSON: log-likelihoods, both GSM8K extractions, sandbox output, ...) and whether the row came
from the cache. ``<out>/summary.json`` holds the metrics with bootstrap intervals, what was run
(model, variant, shots, chat template, subset rule, split record) and library versions.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pkt_core.errors import PktError

ITEMS_FILE = "items.parquet"
SUMMARY_FILE = "summary.json"
ITEM_COLUMNS = ("task", "item_id", "subject", "prompt", "target", "prediction", "score", "outcome", "details",
                "cached", "formulation", "gold_logprob", "gold_prob")
# formulation: how the item was asked (e.g. mmlu-mc-0shot); gold_logprob / gold_prob: the continuous
# measures of pkt_core.evaluation.continuous (gold_prob only for choice tasks).
ITEM_SCHEMA = pa.schema([
    ("task", pa.string()), ("item_id", pa.string()), ("subject", pa.string()), ("prompt", pa.string()),
    ("target", pa.string()), ("prediction", pa.string()), ("score", pa.float64()), ("outcome", pa.string()),
    ("details", pa.string()), ("cached", pa.bool_()), ("formulation", pa.string()), ("gold_logprob", pa.float64()),
    ("gold_prob", pa.float64()),
])


class RecordsError(PktError):
    """An evaluation folder is missing or holds unreadable records."""


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_items(folder: Path, rows: Sequence[Mapping]) -> Path:
    table = pa.Table.from_pylist(
        [{column: _column_value(row, column) for column in ITEM_COLUMNS} for row in rows], schema=ITEM_SCHEMA
    )
    path = Path(folder) / ITEMS_FILE
    _atomic_write(path, lambda temporary: pq.write_table(table, temporary))
    return path


def _column_value(row: Mapping, column: str):
    value = row.get(column)
    if column == "details":
        return json.dumps(value if value is not None else {}, sort_keys=True, default=str)
    return value


def write_summary(folder: Path, summary: Mapping) -> Path:
    """``summary.json``, validated as the run format's :class:`~pkt_core.runs.schema.EvaluationSummary`
    (as a reader will read it) before it is written."""
    from pkt_core.runs.schema import EvaluationSummary, RunFormatError, parse_record

    path = Path(folder) / SUMMARY_FILE
    text = json.dumps(summary, indent=2, sort_keys=False, default=str)
    try:
        parse_record(EvaluationSummary, json.loads(text), str(path))
    except RunFormatError as error:
        raise RecordsError(f"refusing to write an evaluation summary its readers would reject: {error}") from None
    _atomic_write(path, lambda temporary: Path(temporary).write_text(text + "\n", encoding="utf-8"))
    return path


def read_items(folder: Path) -> pd.DataFrame:
    path = Path(folder) / ITEMS_FILE
    if not path.is_file():
        raise RecordsError(f"{path} does not exist; run `pkt eval ... --out {folder}` first")
    return pq.read_table(path).to_pandas()


def read_summary(folder: Path) -> dict:
    path = Path(folder) / SUMMARY_FILE
    if not path.is_file():
        raise RecordsError(f"{path} does not exist; run `pkt eval ... --out {folder}` first")
    return json.loads(path.read_text(encoding="utf-8"))


def scores_by_item(items: pd.DataFrame) -> dict[str, float]:
    """item id -> score, the input of :func:`pkt_core.evaluation.metrics.compare_paired`."""
    return dict(zip(items["item_id"].astype(str), items["score"].astype(float)))
