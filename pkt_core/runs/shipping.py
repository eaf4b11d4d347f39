"""Copy a finished run into the repository's ``cached_runs/``: small, complete, reproducible.

The weight delta is left out (it is the size of the trained layers); everything the app shows
stays. The cross-model map (``d_tgt x d_src``, 5.5 MB in float32 for the Qwen pair) is stored in
float16: the app only projects with it, and float16's relative error (5e-4) is far below what a
2-D projection can show. When the folder's size budget is tight, a run may also be shipped
without the artefacts only the Projections page reads (``leave_out``); the other pages need none
of them. The tensors and the source and untouched-target evaluation folders runs of one pair
hold alike move to the folder's ``_shared/``, stored once (:mod:`pkt_core.runs.shared_tensors`,
:mod:`pkt_core.runs.shared_folders`). The manifest says what was left out, rounded or shared and
the command that recreates the run in full.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pkt_core.atomic_files import replace_directory, write_json_atomic
from pkt_core.evaluation.splits import compact_split_record
from pkt_core.figures.runs_page import MEASURE_NAMES as MEASURE_TITLES
from pkt_core.runs.reader import RunReadError, open_run
from pkt_core.runs.shared_folders import prune_shared_folders, share_folders, shareable_folders
from pkt_core.runs.shared_tensors import prune_shared, referenced_digests, share_tensors
from pkt_core.runs.writer import write_validated_manifest
from pkt_core.runs.schema import (
    CROSS_MAP_FILE,
    PROBE_ACTIVATIONS_FILE,
    WEIGHT_DELTA_FILE,
    ShippedRecord,
)

LEFT_OUT = (WEIGHT_DELTA_FILE,)
HALVED = (CROSS_MAP_FILE,)
# Read by the Projections page alone: a run shipped without them keeps every other page.
MAY_LEAVE_OUT = (PROBE_ACTIVATIONS_FILE, CROSS_MAP_FILE)


class ShippingError(ValueError):
    """A ship request that would drop something the app needs."""


def ship_run(run_folder: Path, destination_root: Path, reproduce_command: str,
             leave_out: Sequence[str] = ()) -> Path:
    """Copy ``run_folder`` to ``destination_root/<run id>`` without the weight delta (and without
    ``leave_out``, a subset of ``MAY_LEAVE_OUT``)."""
    unknown = sorted(set(leave_out) - set(MAY_LEAVE_OUT))
    if unknown:
        raise ShippingError(f"cannot leave out {', '.join(unknown)}: the app needs it; only "
                            f"{', '.join(MAY_LEAVE_OUT)} may be left out (the Projections page alone reads them)")
    run = open_run(run_folder)
    destination = destination_root / run.folder.name
    staging = destination_root / f".{run.folder.name}.shipping"
    shutil.rmtree(staging, ignore_errors=True)
    dropped = LEFT_OUT + tuple(leave_out)
    shutil.copytree(run.folder, staging, ignore=shutil.ignore_patterns(*dropped))
    manifest = run.manifest.model_copy(deep=True)
    left_out = [name for name in dropped if (run.folder / name).exists()]
    if WEIGHT_DELTA_FILE in left_out and manifest.weights_delta is not None:
        manifest.weights_delta = manifest.weights_delta.model_copy(update={
            "file": None, "left_out": "not shipped with the repository; rerun to recreate it"})
    halved = [name for name in HALVED if (staging / name).exists()]
    for name in halved:
        tensors = load_file(staging / name)
        save_file({key: value.to(torch.float16) for key, value in tensors.items()}, staging / name)
    compact_summaries(staging)
    shared = share_tensors(staging)
    manifest.shipped = ShippedRecord(left_out=left_out, stored_float16=halved, reproduce=reproduce_command,
                                     shared_parts=shared, shared_folders=share_folders(staging))
    write_validated_manifest(staging, manifest)
    replace_directory(staging, destination)
    prune_unreferenced(destination_root)
    return destination


def _summaries(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("evaluation/*/*/summary.json"))


def _summary_needs_compacting(path: Path) -> bool:
    splits = json.loads(path.read_text(encoding="utf-8")).get("splits")
    return isinstance(splits, dict) and compact_split_record(splits) != splits


def compact_summaries(folder: Path) -> int:
    """Rewrite the evaluation summaries of ``folder`` the way the evaluator writes them now (an
    alignment pool's id list becomes its digest); returns how many changed. Nothing else changes."""
    changed = 0
    for path in _summaries(folder):
        payload = json.loads(path.read_text(encoding="utf-8"))
        splits = payload.get("splits")
        if isinstance(splits, dict) and compact_split_record(splits) != splits:
            payload["splits"] = compact_split_record(splits)
            write_json_atomic(path, payload)
            changed += 1
    return changed


def share_shipped(root: Path) -> list[Path]:
    """Bring runs shipped earlier under ``root`` to today's shipping: the tensors and the source and
    untouched-target evaluation folders they hold alike moved into ``root/_shared``, their summaries
    compacted. Each run is rewritten in a staging copy and swapped in whole."""
    changed = []
    for folder in sorted(p for p in Path(root).iterdir() if (p / "manifest.json").is_file()):
        try:
            run = open_run(folder)
        except RunReadError:
            continue
        shipped = run.manifest.shipped
        if shipped is None:
            continue
        to_share = not shipped.shared_parts
        to_share_folders = bool(shareable_folders(folder))
        to_compact = any(_summary_needs_compacting(path) for path in _summaries(folder))
        if not (to_share or to_share_folders or to_compact):
            continue
        staging = Path(root) / f".{folder.name}.sharing"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(folder, staging)
        compact_summaries(staging)
        manifest = run.manifest.model_copy(deep=True)
        if to_share:
            manifest.shipped = manifest.shipped.model_copy(update={"shared_parts": share_tensors(staging)})
        if to_share_folders:
            folders = {**manifest.shipped.shared_folders, **share_folders(staging)}
            manifest.shipped = manifest.shipped.model_copy(update={"shared_folders": folders})
        write_validated_manifest(staging, manifest)
        replace_directory(staging, folder)
        changed.append(folder)
    prune_unreferenced(root)
    return changed


def prune_unreferenced(root: Path) -> list[Path]:
    """Remove the shared parts no complete shipped run under ``root`` names any more."""
    manifests = []
    for folder in sorted(p for p in Path(root).iterdir() if (p / "manifest.json").is_file()):
        try:
            manifests.append(open_run(folder).manifest)
        except RunReadError:
            # A damaged run may still name parts: keep everything rather than delete what it needs.
            return []
    keep = referenced_digests(manifests)
    return prune_shared(root, keep) + prune_shared_folders(root, keep)


# -- the table of shipped runs ----------------------------------------------------------------

METHOD_TITLES = {"semalign": "SemAlign", "seeking": "Seeking Neural Nuggets", "laten": "LaTen",
                 "kd": "logit distillation (control)", "finetune": "plain fine-tuning (control)"}


def _interval(value: dict | None) -> str:
    if not value or value.get("mean") is None:
        return "-"
    if value.get("low") is None:
        return f"{value['mean']:.3f}"
    return f"{value['mean']:.3f} ({value['low']:.3f}-{value['high']:.3f})"


def results_rows(root: Path) -> list[dict]:
    """One row per (complete run under ``root``, evaluated task), read from the manifests only."""
    from pkt_core.figures.runs_page import continuous_record, run_gains

    rows = []
    for folder in sorted(p for p in Path(root).iterdir() if (p / "manifest.json").is_file()):
        try:
            run = open_run(folder)
        except RunReadError:  # incomplete or corrupt: never a result
            continue
        manifest = run.manifest
        method = METHOD_TITLES.get(manifest.method, manifest.method)
        if manifest.method == "semalign":
            method += f" {manifest.variant}"
        for gain in sorted(run_gains(manifest), key=lambda g: g.task):
            evaluation = manifest.evaluation[gain.task]
            continuous = continuous_record(run, gain.task)
            comparison = evaluation.comparison_target_before_after
            # Runs written before the manifest had a cost summary: the same numbers from their stages.
            stage_peaks = [r.peak_rss_mib for r in manifest.stages.values() if r.peak_rss_mib]
            cost = {"wall_seconds": manifest.wall_seconds, "peak_rss_mib": max(stage_peaks, default=None),
                    "trainable_parameters": manifest.trainable_parameters}
            if manifest.cost is not None:
                cost.update(manifest.cost.model_dump())
            gpus = manifest.provenance.hardware.gpus
            hardware = ", ".join(gpus) if gpus else f"{manifest.provenance.hardware.cpu_count or '?'}-core CPU"
            as_dict = lambda value: value.model_dump() if value is not None else None  # noqa: E731
            rows.append({
                "run": folder.name, "method": method, "alignment_task": manifest.task or "file",
                "alignment_samples": len(manifest.data.alignment_ids), "task": gain.task, "metric": gain.metric,
                "items": evaluation.target_before.items if evaluation.target_before else None,
                "before": as_dict(gain.before), "after": as_dict(gain.after), "source": as_dict(gain.source),
                "right_to_wrong": comparison.right_to_wrong if comparison else None,
                "wrong_to_right": comparison.wrong_to_right if comparison else None,
                "mcnemar_p": comparison.mcnemar_p if comparison else None, "wall_seconds": cost.get("wall_seconds"),
                "peak_rss_mib": cost.get("peak_rss_mib"), "trainable_parameters": cost.get("trainable_parameters"),
                "hardware": hardware, "continuous": continuous, "dtype": _compute_dtype(manifest),
                "budget": _budget(manifest), "departures": _departures(manifest),
                "seed": int(manifest.config.get("seed") or 0),
            })
    return rows


def _signed_interval(value: dict | None, digits: int = 3) -> str:
    if not value or value.get("mean") is None:
        return "-"
    if value.get("low") is None:
        return f"{value['mean']:+.{digits}f}"
    return f"{value['mean']:+.{digits}f} ({value['low']:+.{digits}f} to {value['high']:+.{digits}f})"




def continuous_cell(record: dict | None) -> str:
    """'gold-option mass +0.012 (+0.004 to +0.020); gap closed 0.07 (0.02 to 0.12)'."""
    if not record or "after_minus_before" not in record:
        return "no continuous measure in this run's items"
    digits = 3 if record["measure"] == "gold_prob" else 2
    text = f"{MEASURE_TITLES[record['measure']]} {_signed_interval(record['after_minus_before'], digits)}"
    closed = record.get("gap_closed") or {}
    if closed.get("mean") is not None:
        text += f"; gap closed {closed['mean']:.2f} ({closed['low']:.2f} to {closed['high']:.2f})"
        if closed.get("note"):
            text += " (gap not resolved)"
    return text


def _budget(manifest) -> str:
    """'32 samples x 2 steps' (frontier methods) or '32 samples x 3 epochs' (the peers)."""
    config = manifest.config
    samples = len(manifest.data.alignment_ids)
    if config.get("epochs"):
        return f"{samples} samples x {config['epochs']} epochs"
    steps = config.get("steps_per_stage")
    return f"{samples} samples x {steps} step{'s' if steps != 1 else ''}" if steps else f"{samples} samples"


def _departures(manifest) -> list[str]:
    """What a run set differently from its method's defaults of today, so that two rows of one
    method never read alike: 'losses layer_cosine=1' (an ablation), 'lr 1e-4' (a run made under an
    older default or with --lr). The seed is kept apart: runs differing only in it form a seed group."""
    from pkt_core.transfer.config import METHOD_DEFAULTS, METHODS, VARIANTS

    config = manifest.config
    preset = (VARIANTS.get(manifest.variant or "", {}) if manifest.method == "semalign"
              else METHODS.get(manifest.method, {})).get("losses")
    losses = config.get("losses")
    departures = []
    if preset and losses and {k: float(v) for k, v in losses.items()} != {k: float(v) for k, v in preset.items()}:
        departures.append("losses " + " + ".join(f"{name}={weight:g}" for name, weight in losses.items()))
    default_rate = METHOD_DEFAULTS.get(manifest.method, {}).get("learning_rate")
    rate = config.get("learning_rate")
    if rate is not None and default_rate is not None and float(rate) != float(default_rate):
        mantissa, exponent = f"{float(rate):.6e}".split("e")
        departures.append(f"lr {mantissa.rstrip('0').rstrip('.')}e{int(exponent)}")  # 1e-4, 2.5e-5
    return departures


def _compute_dtype(manifest) -> str:
    """How the run computed: 'fp32', or 'bf16 autocast' for the auto policy on a bf16 CPU or GPU."""
    precision = manifest.precision or {}
    target = precision.get("target") or {}
    if target.get("autocast"):
        return f"{target.get('compute', 'low-precision')} autocast"
    return target.get("compute") or manifest.config.get("dtype", "fp32")


def _gap_text(record: dict) -> str:
    """The pair's own gap on the continuous measure: 'source - target: gold-option mass +0.182 (...)'."""
    digits = 3 if record["measure"] == "gold_prob" else 2
    return (f"source - target: {MEASURE_TITLES[record['measure']]} "
            f"{_signed_interval(record.get('source_minus_before'), digits)}")


def results_table(root: Path) -> str:
    """The shipped runs as a Markdown table (what ``cached_runs/README.md`` and RESULTS.md show)."""
    lines = ["| run | method | task (items), metric | target before | target after | flips (lost / gained), McNemar p "
             "| source | trainable params | wall, peak RAM, hardware |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in results_rows(root):
        flips = "-" if row["mcnemar_p"] is None else (
            f"{row['right_to_wrong']} / {row['wrong_to_right']}, p = {row['mcnemar_p']:.2f}")
        params = "-" if row["trainable_parameters"] is None else f"{row['trainable_parameters'] / 1e6:.1f} M"
        wall = "-" if row["wall_seconds"] is None else f"{row['wall_seconds']:,.0f} s"
        memory = "" if row["peak_rss_mib"] is None else f", {row['peak_rss_mib'] / 1024:.1f} GiB"
        lines.append(f"| `{row['run']}` | {row['method']} | {row['task']} ({row['items']}), {row['metric']} "
                     f"| {_interval(row['before'])} | {_interval(row['after'])} | {flips} | {_interval(row['source'])} "
                     f"| {params} | {wall}{memory}, {row['hardware']} |")
    return "\n".join(lines)


def paper_table(root: Path) -> str:
    """The shipped runs in the layout of the paper's Table 1: models and methods x tasks.

    The untouched target and the source come from the runs' own evaluations (every run scores
    them on the same items, so one value per task); a method's cell is its target after
    transfer, the change from before and McNemar's p; its cost is the run's wall time."""
    rows = results_rows(root)
    tasks = sorted({row["task"] for row in rows}, key=lambda t: ["mmlu", "gsm8k", "humaneval", "mbpp"].index(t)
                   if t in ("mmlu", "gsm8k", "humaneval", "mbpp") else 9)
    header = "| model / method | " + " | ".join(
        f"{task} ({next(r['items'] for r in rows if r['task'] == task)} items, {next(r['metric'] for r in rows if r['task'] == task)})"
        for task in tasks) + " | cost (wall, peak RAM) |"
    lines = [header, "|---|" + "---|" * len(tasks) + "---|"]
    for label, role in (("target (untouched)", "before"), ("source", "source")):
        cells = []
        for task in tasks:
            values = {(_interval(r[role])) for r in rows if r["task"] == task}
            cell = values.pop() if len(values) == 1 else "differs between runs: " + "; ".join(sorted(values))
            gaps = {_gap_text(r["continuous"]) for r in rows if r["task"] == task and r["continuous"]}
            if role == "source" and gaps:  # runs of two precisions may differ in the last digit
                cell += "<br>" + " / ".join(sorted(gaps))
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " | - |")
    # Runs of one method at different budgets, precisions or settings are different rows (editions of
    # the table, ablations); runs differing only in their seed are one group, each seed a row of its own
    # and, for two or more seeds, a row of their spread.
    groups: dict[str, dict[int, dict[str, dict]]] = {}
    for row in rows:
        label = f"{row['method']} ({', '.join([row['budget'], row['dtype'], *row['departures']])})"
        groups.setdefault(label, {}).setdefault(row["seed"], {})[row["task"]] = row
    titles = list(METHOD_TITLES.values())
    order = lambda name: (next((i for i, t in enumerate(titles) if name.startswith(t)), len(titles)), name)  # noqa: E731
    for label, by_seed in sorted(groups.items(), key=lambda item: order(item[0])):
        for seed, by_task in sorted(by_seed.items()):
            title = label if len(by_seed) == 1 and seed == 0 else f"{label[:-1]}, seed {seed})"
            lines.append(f"| {title} | " + " | ".join(_method_cell(by_task.get(task)) for task in tasks)
                         + f" | {_cost_cell(by_task.values())} |")
        if len(by_seed) > 1:
            seeds = sorted(by_seed)
            lines.append(f"| {label[:-1]}, spread over seeds {', '.join(map(str, seeds))}) | " + " | ".join(
                _seed_spread_cell([by_seed[s].get(task) for s in seeds]) for task in tasks) + " | - |")
    return "\n".join(lines)


def _method_cell(row: dict | None) -> str:
    if row is None or row["after"] is None:
        return "not run"
    change = row["after"]["mean"] - row["before"]["mean"]
    p_value = "" if row["mcnemar_p"] is None else f", p = {row['mcnemar_p']:.2f}"
    return f"{_interval(row['after'])}; {change:+.3f}{p_value}<br>{continuous_cell(row['continuous'])}"


def _cost_cell(rows) -> str:
    """One entry per run, named by its alignment task (a run evaluating several tasks costs once):
    'mmlu: 1,476 s, 18.1 GiB, bf16 autocast'."""
    by_run = {r["run"]: r for r in rows if r["wall_seconds"] is not None and r["peak_rss_mib"]}
    return "; ".join(f"{r['alignment_task']}: {r['wall_seconds']:,.0f} s, {r['peak_rss_mib'] / 1024:.1f} GiB, {r['dtype']}"
                     for r in by_run.values()) or "-"


def _seed_spread_cell(rows: list[dict | None]) -> str:
    """The seeds' changes side by side, their mean and range: the spread a method's row must clear."""
    done = [r for r in rows if r is not None and r["after"] is not None]
    if not done:
        return "not run"
    if len(done) < 2:
        return "one seed only"
    changes = [r["after"]["mean"] - r["before"]["mean"] for r in done]
    text = (f"change {' / '.join(f'{c:+.3f}' for c in changes)}: mean {sum(changes) / len(changes):+.3f}, "
            f"range {max(changes) - min(changes):.3f}")
    shifts = [r["continuous"]["after_minus_before"]["mean"] for r in done
              if r["continuous"] and r["continuous"].get("after_minus_before")]
    if len(shifts) == len(done):
        name = MEASURE_TITLES[done[0]["continuous"]["measure"]]
        digits = 3 if done[0]["continuous"]["measure"] == "gold_prob" else 2
        text += (f"<br>{name} {' / '.join(f'{s:+.{digits}f}' for s in shifts)}: mean "
                 f"{sum(shifts) / len(shifts):+.{digits}f}, range {max(shifts) - min(shifts):.{digits}f}")
    return text


BEGIN_MARK, END_MARK = "<!-- shipped-runs:begin (generated: python -m pkt_core.runs.shipping readme) -->", \
    "<!-- shipped-runs:end -->"


def readme_section(root: Path) -> str:
    """The generated part of ``cached_runs/README.md``: the table and each run's reproduce command."""
    commands = []
    for folder in sorted(p for p in Path(root).iterdir() if (p / "manifest.json").is_file()):
        try:
            shipped = open_run(folder).manifest.shipped
        except RunReadError:
            continue
        if shipped is not None and shipped.reproduce:
            extras = [name for name in shipped.left_out if name not in LEFT_OUT]
            note = f" (shipped without {', '.join(extras)}: the Projections page cannot draw it)" if extras else ""
            commands.append(f"# {folder.name}{note}\n{shipped.reproduce}")
    body = "\n\n".join(commands)
    return f"{BEGIN_MARK}\n{results_table(root)}\n\nReproduce (each from a fresh clone):\n\n```bash\n{body}\n```\n{END_MARK}"


TABLE_BEGIN, TABLE_END = "<!-- table-1:begin (generated: python -m pkt_core.runs.shipping readme) -->", \
    "<!-- table-1:end -->"


def _replace_between(path: Path, begin: str, end: str, body: str) -> None:
    text = path.read_text()
    start, stop = text.index(begin), text.index(end) + len(end)
    path.write_text(text[:start] + body + text[stop:])


def update_readme(root: Path, results: Path | None = None) -> Path:
    """Rewrite the generated section of ``<root>/README.md`` (and the Table 1 of ``results``,
    default ``benchmarks/RESULTS.md`` beside ``root``) from the manifests."""
    readme = Path(root) / "README.md"
    prune_unreferenced(root)
    _replace_between(readme, BEGIN_MARK, END_MARK, readme_section(root))
    results = results or Path(root).resolve().parent / "benchmarks" / "RESULTS.md"
    if results.is_file() and TABLE_BEGIN in results.read_text():
        _replace_between(results, TABLE_BEGIN, TABLE_END, f"{TABLE_BEGIN}\n{paper_table(root)}\n{TABLE_END}")
    return readme


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pkt_core.runs.shipping",
                                     description="Ship a finished run into cached_runs/, or print the table of shipped runs.")
    commands = parser.add_subparsers(dest="command", required=True)
    ship = commands.add_parser("ship", help="copy a finished run (without its weight delta) into a folder")
    ship.add_argument("run_folder", type=Path)
    ship.add_argument("--to", type=Path, default=Path("cached_runs"))
    ship.add_argument("--reproduce", required=True, help="the command that recreates the run")
    ship.add_argument("--leave-out", action="append", default=[], choices=MAY_LEAVE_OUT,
                      help="also leave out this artefact (only the Projections page reads it); repeatable")
    table = commands.add_parser("table", help="Markdown table of the complete runs in a folder")
    table.add_argument("root", type=Path, nargs="?", default=Path("cached_runs"))
    readme = commands.add_parser("readme", help="rewrite the generated section of <root>/README.md")
    readme.add_argument("root", type=Path, nargs="?", default=Path("cached_runs"))
    share = commands.add_parser("share", help="store the tensors and evaluation folders shipped runs hold alike once, "
                                                   "in <root>/_shared")
    share.add_argument("root", type=Path, nargs="?", default=Path("cached_runs"))
    args = parser.parse_args(argv)
    if args.command == "ship":
        print(ship_run(args.run_folder, args.to, args.reproduce, args.leave_out))
    elif args.command == "share":
        for folder in share_shipped(args.root):
            print(folder)
    elif args.command == "readme":
        print(update_readme(args.root))
    else:
        print(results_table(args.root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
