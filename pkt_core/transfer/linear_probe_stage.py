"""The run's layer-wise linear probe: source and target before ahead of training, target after it.

Two resumable stages of the run skeleton, so every method (SemAlign and its peers) has them:
``linear_probe_before`` probes every layer of the source and of the untouched target (their states
come from the cache of :mod:`~pkt_core.transfer.linear_probe_states` when an earlier run made them)
and writes their rows to ``linear_probe.parquet``; ``linear_probe_after`` probes the trained target
(captured afresh, never cached) and adds its rows. All three models are probed on the same items
and the same folds. The manifest's ``linear_probe`` record says what was probed and how, what each
model cost, or why the run has no probe (a generation task, a ``--data`` run, switched off).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from pkt_core.errors import PktError
from pkt_core.models.loading import LoadedModel
from pkt_core.runs.schema import LINEAR_PROBE_FILE, LinearProbeRecord, LinearProbeRoleRecord
from pkt_core.runs.writer import RunWriter
from pkt_core.transfer.config import TransferConfig
from pkt_core.transfer.linear_probe import ProbeSettings, majority_share, probe_layers, probe_table_rows
from pkt_core.transfer.linear_probe_items import LABEL_MEANING, PROMPT_FORMAT, ProbeItems, probe_items, skip_reason
from pkt_core.transfer.linear_probe_states import STATE_DEFINITION, probe_states

BEFORE_STAGE = "linear_probe_before"
AFTER_STAGE = "linear_probe_after"


class Stages(Protocol):
    """What the probe needs of the skeleton's :class:`~pkt_core.transfer.run_skeleton.RunStages`."""

    def done(self, name: str) -> bool: ...

    def run(self, name: str, work: Callable[[], object]) -> object: ...


def _settings(config: TransferConfig) -> ProbeSettings:
    return ProbeSettings(seed=config.seed)


def _probe_model(role: str, loaded: LoadedModel, items: ProbeItems, config: TransferConfig,
                 use_cache: bool) -> tuple[list[dict], LinearProbeRoleRecord]:
    states = probe_states(loaded, items, config.max_tokens, use_cache=use_cache)
    started = time.monotonic()
    results = probe_layers({layer: value.numpy() for layer, value in states.layers.items()}, items.labels,
                           _settings(config))
    fit_seconds = time.monotonic() - started
    rows = probe_table_rows(role, results, loaded.adapter.num_layers, STATE_DEFINITION, _settings(config))
    return rows, LinearProbeRoleRecord(layers=loaded.adapter.num_layers, cache=states.cache,
                                       capture_seconds=round(states.seconds, 3), fit_seconds=round(fit_seconds, 3),
                                       truncated_prompts=states.truncated_prompts)


def linear_probe_before(config: TransferConfig, source: LoadedModel, target: LoadedModel, writer: RunWriter,
                        stages: Stages) -> None:
    """Probe the source and the untouched target (call before training), or record why the run has no probe."""
    if stages.done(BEFORE_STAGE):
        return
    reason = skip_reason(config.task, config.data_file, config.linear_probe_items)
    if reason is not None:
        writer.manifest.linear_probe = LinearProbeRecord(status="skipped", reason=reason, task=config.task)
        writer.write_manifest()
        return

    def work() -> None:
        items = probe_items(config.task, config.linear_probe_items)
        rows, roles = [], {}
        for role, loaded in (("source", source), ("target_before", target)):
            role_rows, roles[role] = _probe_model(role, loaded, items, config, use_cache=True)
            rows += role_rows
        writer.save_table(LINEAR_PROBE_FILE, rows)
        writer.manifest.linear_probe = LinearProbeRecord(
            status="computed", task=config.task, items=len(items), item_rule=items.rule, items_digest=items.digest,
            label=LABEL_MEANING, prompt=PROMPT_FORMAT, state=STATE_DEFINITION,
            classifier={**_settings(config).record(), "max_tokens": config.max_tokens},
            chance=majority_share(items.labels), roles=roles)
        writer.write_manifest()

    stages.run(BEFORE_STAGE, work)


def linear_probe_after(config: TransferConfig, target: LoadedModel, writer: RunWriter, stages: Stages) -> None:
    """Probe the trained target (call after training) and add its rows; nothing when the run has no probe."""
    record = writer.manifest.linear_probe
    if record is None or record.status != "computed" or stages.done(AFTER_STAGE):
        return

    def work() -> None:
        import pyarrow.parquet as pq

        items = probe_items(config.task, config.linear_probe_items)
        if items.digest != record.items_digest:
            raise PktError(f"the linear probe's items changed during the run (digest {items.digest}, the run probed "
                           f"{record.items_digest} before training): the task's data files differ; start the run again")
        kept = [row for row in pq.read_table(writer.path(LINEAR_PROBE_FILE)).to_pylist() if row["model"] != "target_after"]
        # The trained target keeps the untouched model's fingerprint: its states must bypass the cache.
        rows, role = _probe_model("target_after", target, items, config, use_cache=False)
        writer.save_table(LINEAR_PROBE_FILE, kept + rows)
        writer.manifest.linear_probe = record.model_copy(update={"roles": {**record.roles, "target_after": role}})
        writer.write_manifest()

    stages.run(AFTER_STAGE, work)
