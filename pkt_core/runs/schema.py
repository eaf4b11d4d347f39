"""The run format: every file a run folder may hold, as typed, versioned records.

A run is a folder. Its ``manifest.json`` (:class:`RunManifest`) says what ran, on what, with
which code, at what cost and with which results; the other files hold the arrays and tables:

- ``manifest.json``: :class:`RunManifest` (every method);
- ``similarity_<measure>_<view>.json``: :class:`SimilarityMatrixFile` (every method; ``pkt similarity``
  writes the same record, so its output dropped into a run folder is part of the run);
- ``mappings.json``: :class:`LayerMaps` (SemAlign);
- ``evaluation/<key>/<role>/summary.json``: :class:`EvaluationSummary`, and ``items.parquet`` beside
  it (table ``items`` of :data:`TABLES`); ``evaluation/<key>/comparison_target_before_after.json``:
  :class:`PairedComparison` (every evaluated run, ``pkt eval``). The key is the task, or
  ``task-formulation[-circular]`` for an evaluation that named its own formulation (:class:`TaskEvaluation`);
- ``attribution.parquet``, ``fidelity.parquet``, ``stage_losses.parquet``, ``seeking_*.parquet``,
  ``laten_*.parquet``: the tables of :data:`TABLES`, each with the columns its kind needs;
- ``linear_probe.parquet``: table ``linear_probe`` of :data:`TABLES`, the layer-wise linear probe (every
  method, choice tasks; the manifest's :class:`LinearProbeRecord` says how it was made, or why not);
- ``probe_activations.safetensors``, ``cross_map.safetensors``, ``target_delta.safetensors``: the
  tensor files of :data:`TENSOR_FILES`, each with its key names;
- ``progress.json`` and ``checkpoints/``: resume state of a partial run (:class:`Progress`),
  removed when the run finishes.

Views name which models a similarity matrix compares: ``target_source_before``,
``target_source_after`` (rows: target layers, columns: source layers) and
``target_before_after`` (rows: the target before, columns: after). Roles of an evaluation:
``source``, ``target_before``, ``target_after``.

Reading validates: a file that does not match its record raises :class:`RunFormatError` naming
the file, the field and what was expected, and the run is listed as unreadable with that reason.
``format_version`` counts format changes; :mod:`pkt_core.runs.migration` rewrites older runs.
This module imports nothing of the library but its errors, so every layer may use it.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from pkt_core.errors import PktError

FORMAT_VERSION = 2
MANIFEST_FILE = "manifest.json"
PROGRESS_FILE = "progress.json"
CHECKPOINTS_FOLDER = "checkpoints"
MAPPINGS_FILE = "mappings.json"
EVALUATION_FOLDER = "evaluation"
SUMMARY_FILE = "summary.json"
ITEMS_FILE = "items.parquet"
COMPARISON_FILE = "comparison_target_before_after.json"
PROBE_ACTIVATIONS_FILE = "probe_activations.safetensors"
CROSS_MAP_FILE = "cross_map.safetensors"
WEIGHT_DELTA_FILE = "target_delta.safetensors"
LINEAR_PROBE_FILE = "linear_probe.parquet"

RunStatus = Literal["running", "failed", "cancelled", "complete"]
ROLES = ("source", "target_before", "target_after")
Role = Literal["source", "target_before", "target_after"]
SIMILARITY_VIEWS = ("target_source_before", "target_source_after", "target_before_after")
SimilarityView = Literal["target_source_before", "target_source_after", "target_before_after"]


class RunFormatError(PktError):
    """A run file does not match the run format (the message names the file, field and expectation)."""


class Record(BaseModel):
    """Base of every record: unknown fields are refused, so a misspelt or stale field is found."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class OpenRecord(BaseModel):
    """A record whose named fields are checked and whose further fields are kept as they are
    (descriptions that differ per model family or method)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)


# -- pieces of the manifest -------------------------------------------------------------------


class ModelRecord(OpenRecord):
    name: str
    reference: str | None = None
    kind: str | None = None
    location: str | None = None
    family: str | None = None
    model_type: str | None = None
    num_layers: int = Field(ge=1)
    width: int | None = None
    vocab_size: int | None = None
    parameters: int | None = None
    dtype: str | None = None
    device: str | None = None
    fingerprint: str | None = None
    notes: list[str] = Field(default_factory=list)


class LossWeight(Record):
    weight: float
    paper_version: str | None = None


class DataRecord(Record):
    description: str
    alignment_ids: list[str]
    probe_ids: list[str]
    probe_labels: list[str | None] = Field(default_factory=list)
    cka_rows: int | None = None


class StageCost(Record):
    wall_seconds: float = Field(ge=0)
    peak_rss_mib: float | None = None
    peak_gpu_mib: float | None = None


class RunCost(Record):
    wall_seconds: float
    stage_wall_seconds: float
    peak_rss_mib: float | None = None
    peak_gpu_mib: float | None = None
    trainable_parameters: int | None = None


class MapEntry(Record):
    target_layer: int = Field(ge=0)
    source_layers: list[int]
    weights: list[float]

    @model_validator(mode="after")
    def _same_length(self) -> MapEntry:
        if len(self.source_layers) != len(self.weights):
            raise ValueError(f"target layer {self.target_layer}: {len(self.source_layers)} source layers but "
                             f"{len(self.weights)} weights")
        return self


class ChosenMapping(Record):
    chosen: str
    paper_version: str | None = None
    table: list[MapEntry]
    notes: list[str] = Field(default_factory=list)


class MetricValue(Record):
    """One metric over items: the mean, and its bootstrap interval where one was computed."""

    mean: float
    low: float | None = None
    high: float | None = None
    n: int | None = None
    confidence: float | None = None
    resamples: int | None = None


# A metric is a value with its interval, or (for code tasks) the count of items per sandbox outcome.
OutcomeCounts = dict[str, int]
Metric = MetricValue | OutcomeCounts


def interval_metrics(metrics: dict[str, Metric]) -> dict[str, MetricValue]:
    """The metrics that are values (with intervals), without outcome counts."""
    return {name: value for name, value in metrics.items() if isinstance(value, MetricValue)}


class SubsetRecord(OpenRecord):
    rule: str
    count: int
    ids_digest: str
    limit: int | None = None


class PairedComparison(Record):
    """Target before vs after on the same items: flips, McNemar's test, the paired difference."""

    n: int
    accuracy_a: float
    accuracy_b: float
    both_right: int
    both_wrong: int
    right_to_wrong: int
    wrong_to_right: int
    mcnemar_p: float | None = None
    difference: MetricValue
    only_in_a: int = 0
    only_in_b: int = 0
    right_to_wrong_ids: list[str] = Field(default_factory=list)
    wrong_to_right_ids: list[str] = Field(default_factory=list)


class RoleEvaluation(Record):
    """What the manifest keeps of one model's evaluation on one task (the full record is in
    ``evaluation/<task>/<role>/``)."""

    metrics: dict[str, Metric]
    items: int = Field(ge=0)
    subset: SubsetRecord
    model: str
    formulation: dict[str, Any] | None = None  # how the items were scored (letters / cloze, shots, circular)


class TaskEvaluation(Record):
    """One evaluation of a run (manifest ``evaluation[<key>]``): the key is the task, or
    ``task-formulation[-circular]`` when the run scored the task in a formulation of its own
    (:mod:`pkt_core.evaluation.specs`); ``spec`` is what was asked (absent in runs written before specs)."""

    spec: str | None = None
    source: RoleEvaluation | None = None
    target_before: RoleEvaluation | None = None
    target_after: RoleEvaluation | None = None
    comparison_target_before_after: PairedComparison | None = None

    def role(self, role: str) -> RoleEvaluation | None:
        if role not in ROLES:
            raise KeyError(f"no role {role!r}; roles are {', '.join(ROLES)}")
        return getattr(self, role)


class WeightDelta(Record):
    file: str | None = None
    format: str
    tensors: int = Field(ge=0)
    left_out: str | None = None


class ShippedRecord(Record):
    left_out: list[str] = Field(default_factory=list)
    stored_float16: list[str] = Field(default_factory=list)
    reproduce: str
    # file -> SHA-256 digests of the tensor groups stored once in the shipped folder's _shared/
    # (pkt_core.runs.shared_tensors); the run's own file, if any, holds the rest.
    shared_parts: dict[str, list[Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]]] = Field(
        default_factory=dict)
    # folder in the run (evaluation/<task>/<role>) -> SHA-256 digest of the whole folder stored once
    # as _shared/<digest>/ (pkt_core.runs.shared_folders).
    shared_folders: dict[Annotated[str, StringConstraints(pattern=r"^evaluation/[^/]+/[^/]+$")],
                         Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]] = Field(default_factory=dict)


class AlignmentLevel(Record):
    level: Literal["token", "sequence"]
    note: str


class CodeRevision(Record):
    """The code that made a result: a git commit (and whether the tree had uncommitted changes),
    or the installed package version when the code did not run from a checkout."""

    package_version: str
    git_commit: str | None = None
    git_dirty: bool | None = None
    source: str  # how the revision was found: "git checkout", "installed package", or a migration note


class HardwareRecord(OpenRecord):
    cpu: str | None = None
    cpu_count: int | None = None
    memory_gib: float | None = None
    gpus: list[str] = Field(default_factory=list)
    torch_threads: int | None = None


class Provenance(Record):
    code: CodeRevision
    command: str | None = None  # the command line that started the run, where there was one
    hardware: HardwareRecord


class LinearProbeRoleRecord(Record):
    """How one model's linear-probe states were obtained and what they cost."""

    layers: int = Field(ge=1)
    cache: Literal["hit", "miss", "off"]  # states read from the cache, captured and stored, or captured only
    capture_seconds: float = Field(ge=0)
    fit_seconds: float = Field(ge=0)
    truncated_prompts: int = Field(default=0, ge=0)  # prompts cut from the left to max_tokens


class LinearProbeRecord(Record):
    """The layer-wise linear probe of a run (``linear_probe.parquet``), or why the run has none."""

    status: Literal["computed", "skipped"]
    reason: str | None = None  # why it was skipped
    task: str | None = None
    items: int = Field(default=0, ge=0)
    item_rule: str | None = None
    items_digest: str | None = None
    label: str | None = None  # what is predicted (the gold option's index)
    prompt: str | None = None
    state: str | None = None  # which state of each layer is probed
    classifier: dict[str, Any] = Field(default_factory=dict)
    chance: float | None = None  # the majority label's share among the items
    roles: dict[str, LinearProbeRoleRecord] = Field(default_factory=dict)


class RunManifest(Record):
    """``manifest.json``. Every field is named here; a method keeps records of its own under
    ``method_details`` (selected layers, shapes), free-form by method."""

    format_version: int
    run_id: str
    kind: Literal["transfer"] = "transfer"
    method: str
    variant: str | None = None
    paper_version: str | None = None
    pair: str | None = None
    source: ModelRecord
    target: ModelRecord
    task: str | None = None
    config: dict[str, Any]
    losses: dict[str, LossWeight] = Field(default_factory=dict)
    data: DataRecord
    seeds: dict[str, int] = Field(default_factory=dict)
    vocabulary: dict[str, Any] = Field(default_factory=dict)
    alignment_level: AlignmentLevel | None = None
    status: RunStatus
    error: str | None = None
    created_at: str
    ended_at: str | None = None
    resumed_at: str | None = None
    resumes: int = 0
    environment: dict[str, Any] = Field(default_factory=dict)
    provenance: Provenance
    stages: dict[str, StageCost] = Field(default_factory=dict)
    mapping: ChosenMapping | None = None
    evaluation: dict[str, TaskEvaluation] = Field(default_factory=dict)
    method_details: dict[str, Any] | None = None
    semantic_bases: dict[str, Any] | None = None  # SemAlign: which token columns the bases keep
    # The decomposition-fidelity stage's scope (transfer/fidelity.py): sample or full, its rule, seed, and the
    # layers and rows it kept per model.
    fidelity: dict[str, Any] | None = None
    # Where each set-up result came from ("probe states source": "cache" | "computed" | "attribution pass"):
    # the per-model cache (transfer/model_cache.py), a forward pass another stage made, or computed here.
    setup_reuse: dict[str, str] = Field(default_factory=dict)
    precision: dict[str, Any] | None = None  # the precision policy the run resolved (compute dtype, autocast, ...)
    # "<measure> <view>" -> why the run holds no such matrix (e.g. too few probe rows for the measure).
    similarity_skipped: dict[str, str] = Field(default_factory=dict)
    # The layer-wise linear probe: how it was computed, or why not; None in runs made before it existed.
    linear_probe: LinearProbeRecord | None = None
    # What was added to the complete run afterwards, without retraining (when, which files, by which code).
    amendments: list[dict[str, Any]] = Field(default_factory=list)
    weights_delta: WeightDelta | None = None
    wall_seconds: float | None = None
    trainable_parameters: int | None = None
    cost: RunCost | None = None
    artefacts: list[str] = Field(default_factory=list)
    shipped: ShippedRecord | None = None

    @field_validator("format_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value > FORMAT_VERSION:
            raise ValueError(f"format {value} is newer than this library reads ({FORMAT_VERSION}); update pkt_core")
        if value < FORMAT_VERSION:
            raise ValueError(f"format {value} is older than {FORMAT_VERSION}; migrate it with "
                             f"`python -m pkt_core.runs.migration FOLDER`")
        return value

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def similarity_skipped_measures(self, view: str = "target_source_before") -> list[str]:
        """Measures the run left out for ``view`` (too few rows for them), from ``similarity_skipped``."""
        return [key.split(" ")[0] for key in self.similarity_skipped if key.endswith(" " + view)]

    @property
    def across_tokenizers(self) -> bool:
        return self.alignment_level is not None and self.alignment_level.level == "sequence"


# -- the other files --------------------------------------------------------------------------


class SimilarityMatrixFile(OpenRecord):
    """A layer x layer similarity matrix: rows are layers of the first model, columns of the second.

    ``n_rows`` is how many samples (token or sequence rows) each layer had; ``notes`` are the
    engine's warnings (e.g. a CCA-family measure on fewer rows than dimensions, or the principal
    subspace kept); ``rows`` says which rows they were. Further metadata (``pkt similarity``
    records its inputs and options) is kept as it is.
    """

    format_version: int = FORMAT_VERSION
    metric: str
    view: SimilarityView | None = None
    values: list[list[float]]
    n_rows: int | None = None
    notes: list[str] = Field(default_factory=list)
    rows: str | None = None
    kind: Literal["score", "distance"] | None = None
    dims_rows: list[int] | None = None  # width of each row layer's states
    dims_columns: list[int] | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    # CCA family: the principal subspace it ran on (k, variance kept per layer, the rule).
    subspace: dict[str, Any] | None = None
    seconds: float | None = None  # wall time of computing this matrix (its cost within the run)

    @field_validator("values")
    @classmethod
    def _rectangular_and_finite(cls, values: list[list[float]]) -> list[list[float]]:
        if not values or not values[0]:
            raise ValueError("the matrix is empty")
        width = len(values[0])
        for index, row in enumerate(values):
            if len(row) != width:
                raise ValueError(f"row {index} has {len(row)} values, row 0 has {width}: not a matrix")
            if not all(math.isfinite(v) for v in row):
                raise ValueError(f"row {index} holds NaN or inf")
        return values

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.values), len(self.values[0])


class LayerMap(Record):
    name: str
    paper_version: str | None = None
    source_layers: int = Field(ge=1)
    target_layers: int = Field(ge=1)
    table: list[MapEntry]
    notes: list[str] = Field(default_factory=list)


class LayerMaps(Record):
    """``mappings.json`` (SemAlign): every layer map it computed, and the one it trained with."""

    chosen: str
    mappings: dict[str, LayerMap]

    @model_validator(mode="after")
    def _chosen_is_there(self) -> LayerMaps:
        if self.chosen not in self.mappings:
            raise ValueError(f"the chosen map {self.chosen!r} is not among the maps ({', '.join(self.mappings)})")
        return self


class EvaluationSummary(OpenRecord):
    """``summary.json`` of one model on one task. Named fields are checked; the rest (splits,
    settings, per-subject scores, versions) is kept as written."""

    task: str
    model: ModelRecord
    metrics: dict[str, Metric]
    subset: SubsetRecord
    shots: int | None = None
    counts: dict[str, int] = Field(default_factory=dict)


class Progress(Record):
    """``progress.json`` of a partial run: the stages finished so far (for resume)."""

    finished: list[str] = Field(default_factory=list)


# -- tables (Parquet) and tensors (safetensors) -----------------------------------------------


class TableSpec(BaseModel):
    """A Parquet table of a run: the columns every writer must give, with their Arrow types."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    name: str
    required: dict[str, Any]  # column -> pyarrow type (nullable)
    description: str

    def check(self, schema: pa.Schema, file: str) -> None:
        for column, kind in self.required.items():
            if column not in schema.names:
                raise RunFormatError(f"{file}: column {column!r} is missing (a {self.name} table needs "
                                     f"{', '.join(self.required)})")
            actual = schema.field(column).type
            if not _compatible(actual, kind):
                raise RunFormatError(f"{file}: column {column!r} is {actual}, expected {kind}")


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    if actual == expected or pa.types.is_null(actual):
        return True
    numeric = (pa.types.is_integer, pa.types.is_floating)
    if any(test(expected) for test in numeric):
        return any(test(actual) for test in numeric) or pa.types.is_boolean(actual)
    if pa.types.is_string(expected):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual)
    if pa.types.is_list(expected):
        return pa.types.is_list(actual) or pa.types.is_large_list(actual)
    return False


TABLES: dict[str, TableSpec] = {spec.name: spec for spec in (
    TableSpec(name="items", description="one row per evaluated item of one model on one task",
              required={"task": pa.string(), "item_id": pa.string(), "prompt": pa.string(), "target": pa.string(),
                        "prediction": pa.string(), "score": pa.float64(), "outcome": pa.string(),
                        "details": pa.string()}),
    TableSpec(name="stage_losses", description="one row per training step: the stage (its target layer, or the peer's epoch), the step and every loss term (loss_<term>)",
              required={"stage_layer": pa.int64(), "step": pa.int64(), "loss": pa.float64()}),
    TableSpec(name="attribution", description="SemAlign's source-layer attribution (abs and signed)",
              required={"source_layer": pa.int64(), "abs": pa.float64(), "signed": pa.float64()}),
    TableSpec(name="fidelity", description="decomposition fidelity per model, layer and side of the bases",
              required={"model": pa.string(), "layer": pa.int64(), "bases": pa.string(),
                        "mean_cosine": pa.float64()}),
    TableSpec(name="seeking_layers", description="Seeking Neural Nuggets: sensitivity per source layer",
              required={"source_layer": pa.int64(), "sensitivity": pa.float64(), "selected": pa.bool_()}),
    TableSpec(name="seeking_extraction", description="Seeking Neural Nuggets: the extracted sub-blocks per layer pair",
              required={"target_layer": pa.int64(), "source_layer": pa.int64(), "matrix": pa.string(),
                        "block_score": pa.float64()}),
    TableSpec(name="laten_locations", description="LaTen: logit-lens gain of every sublayer of both models",
              required={"model": pa.string(), "layer": pa.int64(), "module": pa.string(), "lens_gain": pa.float64(),
                        "selected": pa.bool_()}),
    TableSpec(name="laten_neurons", description="LaTen: the located neurons of each paired sublayer",
              required={"pair": pa.int64(), "module": pa.string(), "source_layer": pa.int64(),
                        "target_layer": pa.int64(), "source_neuron": pa.int64(), "target_neuron": pa.int64()}),
    TableSpec(name="linear_probe", description="layer-wise linear probe: per model and layer, how well the state "
                                               "predicts the gold answer (cross-validated accuracy, its interval, chance)",
              required={"model": pa.string(), "layer": pa.int64(), "relative_depth": pa.float64(),
                        "accuracy": pa.float64(), "ci_low": pa.float64(), "ci_high": pa.float64(),
                        "accuracy_fold_mean": pa.float64(), "accuracy_fold_std": pa.float64(),
                        "chance": pa.float64(), "n_items": pa.int64(), "n_classes": pa.int64(), "state": pa.string(),
                        "seconds": pa.float64()}),
)}
TABLE_FILES = {f"{name}.parquet": name for name in TABLES if name != "items"}


class TensorFileSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    file: str
    key_pattern: str  # every key of the file matches it
    description: str

    def check(self, keys: list[str], file: str) -> None:
        pattern = re.compile(self.key_pattern)
        bad = [key for key in keys if not pattern.fullmatch(key)]
        if bad:
            raise RunFormatError(f"{file}: tensor names {bad[:3]} do not match {self.key_pattern!r} ({self.description})")


TENSOR_FILES: dict[str, TensorFileSpec] = {spec.file: spec for spec in (
    TensorFileSpec(file=PROBE_ACTIVATIONS_FILE, key_pattern=r"(source|target_before|target_after)\.layer\.\d+",
                   description="pooled probe states per model and layer, one row per probe"),
    TensorFileSpec(file=CROSS_MAP_FILE, key_pattern=r"cross_map", description="SemAlign's source-to-target map M"),
    TensorFileSpec(file=WEIGHT_DELTA_FILE, key_pattern=r".+", description="the target's weight delta"),
)}


# -- file names and reading -------------------------------------------------------------------


def similarity_file_name(metric: str, view: str) -> str:
    if view not in SIMILARITY_VIEWS:
        raise RunFormatError(f"no similarity view {view!r}; views are {', '.join(SIMILARITY_VIEWS)}")
    return f"similarity_{metric}_{view}.json"


def parse_similarity_file_name(name: str) -> tuple[str | None, str] | None:
    """(metric or None, view) from ``similarity_<metric>_<view>.json`` or ``cka_<view>.json``
    (format 1, linear CKA); None when the name is neither."""
    stem = name[:-len(".json")] if name.endswith(".json") else None
    if stem is None:
        return None
    view = next((v for v in SIMILARITY_VIEWS if stem.endswith("_" + v)), None)
    if view is None:
        return None
    prefix = stem[: -len(view) - 1]
    if prefix == "cka":
        return "linear_cka", view
    if prefix.startswith("similarity_") and len(prefix) > len("similarity_"):
        return prefix[len("similarity_"):], view
    return None


def evaluation_path(task: str, role: str, file: str) -> str:
    if role not in ROLES:
        raise RunFormatError(f"no evaluation role {role!r}; roles are {', '.join(ROLES)}")
    return f"{EVALUATION_FOLDER}/{task}/{role}/{file}"


def describe_validation_error(file: str, error: ValidationError) -> str:
    """'file: field a.b: expected ...' for the first few problems pydantic found."""
    problems = []
    for problem in error.errors()[:3]:
        where = ".".join(str(part) for part in problem["loc"]) or "(the whole file)"
        got = problem.get("input")
        shown = json.dumps(got, default=str)[:60] if not isinstance(got, dict) else "an object"
        problems.append(f"field {where}: {problem['msg']} (found {shown})")
    more = f" and {len(error.errors()) - 3} more" if len(error.errors()) > 3 else ""
    return f"{file}: " + "; ".join(problems) + more


def parse_record(record_type: type[BaseModel], payload: Any, file: str):
    try:
        return record_type.model_validate(payload)
    except ValidationError as error:
        raise RunFormatError(describe_validation_error(file, error)) from None


def read_json_record(record_type: type[BaseModel], path: Path, file: str | None = None):
    """Read and validate one JSON file of a run; every failure is a :class:`RunFormatError`."""
    name = file or path.name
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunFormatError(f"{name}: the file is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunFormatError(f"{name}: not readable JSON ({error})") from None
    return parse_record(record_type, payload, name)


def record_json(record: BaseModel) -> dict:
    """The record as the JSON object a file holds."""
    return record.model_dump(mode="json")
