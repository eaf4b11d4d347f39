"""Load a causal LM and its tokenizer by registered name, local folder, GGUF file or hub id.

One call, :func:`load_model`, with a precision policy (``dtype``: fp32, bf16, fp16, auto, or
bf16-weights / fp16-weights; see :mod:`pkt_core.models.precision`) and a device (``cpu``,
``cuda[:i]`` or ``auto``: an accelerate ``device_map`` that shards a model too big for one GPU
over all GPUs; under torchrun, each rank's own GPU). Memory is estimated from the config first; a model that cannot fit is refused
with the numbers before a byte of weights is read.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pkt_core.errors import ModelNotCachedError, PktError, UnknownModelError
from pkt_core.models.architecture import ArchitectureAdapter, adapter_for
from pkt_core.models.memory import (
    MemoryEstimate,
    check_fits,
    count_parameters_from_config,
    dtype_name,
)
from pkt_core.models.placement import distributed_local_device
from pkt_core.models.precision import (
    PrecisionPolicy,
    install_precision,
    policy_for_weights,
    resolve_precision,
)
from pkt_core.models.provisioning import PROVENANCE_FILE, is_cached
from pkt_core.models.registry import MODELS
from pkt_core.paths import model_cache_dir

HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
FINGERPRINT_SAMPLE_BYTES = 1 << 20


@dataclass(frozen=True)
class ModelLocation:
    """Where a reference points: ``kind`` is registry, folder, gguf or hub."""

    reference: str
    kind: str
    path_or_id: str
    gguf_file: str | None = None
    display_name: str = ""

    def from_pretrained_args(self) -> tuple[str, dict]:
        if self.kind == "gguf":
            return str(Path(self.path_or_id).parent), {"gguf_file": Path(self.path_or_id).name}
        return self.path_or_id, {}


@dataclass
class LoadedModel:
    """A model ready for capture, transfer or evaluation, with what it is and where it sits."""

    model: torch.nn.Module
    tokenizer: object
    location: ModelLocation
    dtype: torch.dtype
    device: str
    adapter: ArchitectureAdapter
    fingerprint: str
    parameters: int
    notes: list[str] = field(default_factory=list)
    # How it computes (autocast, fp32 head, master weights); ``dtype`` is what its weights are
    # stored in. None: the policy the weight dtype implies (fp32: the plain reference).
    precision: PrecisionPolicy | None = None

    def __post_init__(self) -> None:
        if self.precision is None:
            self.precision = policy_for_weights(self.dtype)

    @property
    def name(self) -> str:
        return self.location.display_name

    @property
    def input_device(self) -> torch.device:
        """Where input ids must go: the device of the embeddings (the first shard under ``auto``)."""
        return self.adapter.input_embeddings().weight.device

    def describe(self) -> dict:
        return {
            "name": self.name,
            "reference": self.location.reference,
            "kind": self.location.kind,
            "location": self.location.path_or_id,
            "family": self.adapter.family,
            "model_type": self.model.config.model_type,
            "num_layers": self.adapter.num_layers,
            "width": self.adapter.width,
            "vocab_size": self.adapter.vocab_size,
            "parameters": self.parameters,
            "dtype": dtype_name(self.dtype),
            "precision": self.precision.record(),
            "device": self.device,
            "fingerprint": self.fingerprint,
            "notes": list(self.notes),
        }


def resolve_model_reference(reference: str) -> ModelLocation:
    """Turn what a user typed into a location, or say clearly why it is none."""
    if reference in MODELS:
        if not is_cached(reference):
            raise ModelNotCachedError(
                f"model {reference!r} is registered but not cached yet; run `pkt models fetch {reference}` "
                f"(cache: {model_cache_dir(reference)})."
            )
        return ModelLocation(reference, "registry", str(model_cache_dir(reference)), display_name=reference)
    path = Path(reference).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise UnknownModelError(
                f"{reference!r} is a file but not a GGUF file; pass a model folder (with config.json), "
                f"a .gguf file, a registered name or a hub id."
            )
        return ModelLocation(reference, "gguf", str(path.resolve()), gguf_file=path.name, display_name=path.stem)
    if path.is_dir():
        if (path / "config.json").is_file():
            return ModelLocation(reference, "folder", str(path.resolve()), display_name=path.name)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelLocation(reference, "gguf", str(ggufs[0].resolve()), gguf_file=ggufs[0].name,
                                 display_name=ggufs[0].stem)
        raise UnknownModelError(
            f"folder {reference!r} holds no config.json and {len(ggufs)} GGUF files; "
            f"point at a Hugging Face model folder or at one .gguf file."
        )
    if HUB_ID_PATTERN.match(reference) and not reference.startswith((".", "/")):
        return ModelLocation(reference, "hub", reference, display_name=reference.split("/")[-1])
    close = difflib.get_close_matches(reference, list(MODELS), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownModelError(
        f"cannot find model {reference!r}: it is not a registered name, an existing path, or a hub id "
        f"(owner/name).{hint} Registered: {', '.join(sorted(MODELS))}."
    )


def load_config(location: ModelLocation, trust_remote_code: bool = False):
    from transformers import AutoConfig

    path_or_id, extra = location.from_pretrained_args()
    try:
        return AutoConfig.from_pretrained(path_or_id, trust_remote_code=trust_remote_code, **extra)
    except OSError as error:
        if location.kind == "hub":
            raise UnknownModelError(
                f"could not reach hub model {location.path_or_id!r}: {str(error).splitlines()[0]} "
                f"Check the id and your network, or fetch a registered mirror (`pkt models list`)."
            ) from error
        raise PktError(f"could not read the config of {location.reference!r}: {error}") from error


def load_model(
    reference: str,
    dtype: str | torch.dtype = "fp32",
    device: str = "cpu",
    trust_remote_code: bool = False,
    check_memory: bool = True,
) -> LoadedModel:
    """Load model + tokenizer; ``device`` is cpu, cuda, cuda:N or auto (sharded over all GPUs).

    ``dtype`` names a precision policy (:func:`pkt_core.models.precision.resolve_precision`):
    ``bf16`` keeps float32 weights and computes under bf16 autocast; ``bf16-weights`` stores the
    weights in bf16; a ``torch.dtype`` means weights stored in it.
    """
    from transformers import AutoModelForCausalLM

    # Under torchrun every rank takes its own GPU rather than sharding over all of them.
    device = distributed_local_device(device)
    device = "cuda:0" if device == "cuda" else device
    policy = resolve_precision(dtype, device)
    torch_dtype = policy.weight_dtype
    location = resolve_model_reference(reference)
    config = load_config(location, trust_remote_code)
    parameters = count_parameters_from_config(config)
    # A GGUF file is dequantised to float32 first, whatever dtype is asked for afterwards.
    load_dtype = torch.float32 if location.kind == "gguf" else torch_dtype
    free = {}
    if check_memory:
        free = check_fits(location.display_name, MemoryEstimate(parameters, load_dtype), device)

    path_or_id, extra = location.from_pretrained_args()
    placement: dict = {}
    if device == "auto" and any(name.startswith("cuda") for name in free):
        # Leave 10% of every card free for activations; never spill weights onto the CPU silently.
        placement = {
            "device_map": "auto",
            "max_memory": {int(name.split(":")[1]): int(value * 0.9) for name, value in free.items()},
        }
    elif device.startswith("cuda"):
        placement = {"device_map": {"": device}}
    resolved_device = "cpu" if device == "auto" and not placement else device
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path_or_id, dtype=load_dtype, trust_remote_code=trust_remote_code, **placement, **extra
        )
    except OSError as error:
        raise UnknownModelError(f"could not load {reference!r}: {str(error).splitlines()[0]}") from error
    if load_dtype != torch_dtype:
        model = model.to(torch_dtype)
    if location.kind == "gguf":
        model.hf_quantizer = None
    model.eval()
    adapter = adapter_for(model)
    install_precision(model, adapter.lm_head(), policy)
    tokenizer, notes = _load_tokenizer(path_or_id, extra, trust_remote_code)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        location=location,
        dtype=torch_dtype,
        device=resolved_device,
        adapter=adapter,
        fingerprint=model_fingerprint(location) + policy.fingerprint_suffix(),
        parameters=parameters,
        notes=notes,
        precision=policy,
    )


def _load_tokenizer(path_or_id: str, extra: dict, trust_remote_code: bool):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path_or_id, trust_remote_code=trust_remote_code, **extra)
    notes: list[str] = []
    if tokenizer.pad_token is None:
        # Padding positions are masked out everywhere; which id fills them does not matter.
        tokenizer.pad_token = tokenizer.eos_token
        notes.append("tokenizer had no pad token; using the eos token for padding")
    return tokenizer, notes


def model_fingerprint(location: ModelLocation) -> str:
    """A stable identity for caches: the pinned hash where known, else a digest of config + weights.

    For local folders the digest covers each weight file's name, size, header and first and last
    megabyte: cheap, and any re-save or edit of real weights changes it.
    """
    digest = hashlib.sha256()
    if location.kind == "hub":
        digest.update(f"hub:{location.path_or_id}".encode())
        return digest.hexdigest()[:16]
    root = Path(location.path_or_id)
    if location.kind == "registry":
        provenance = json.loads((root / PROVENANCE_FILE).read_text())
        pinned = provenance.get("gguf_sha256") or f"{provenance.get('hub_id')}@{provenance.get('revision')}"
        digest.update(f"registry:{location.reference}:{pinned}".encode())
        return digest.hexdigest()[:16]
    files = [root] if location.kind == "gguf" else sorted(
        [*root.glob("*.safetensors"), *root.glob("*.bin"), root / "config.json"]
    )
    for path in files:
        if not path.is_file():
            continue
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(FINGERPRINT_SAMPLE_BYTES))
            if size > FINGERPRINT_SAMPLE_BYTES:
                handle.seek(-FINGERPRINT_SAMPLE_BYTES, 2)
                digest.update(handle.read())
    return digest.hexdigest()[:16]


def wrap_loaded_model(model: torch.nn.Module, tokenizer, name: str, device: str = "cpu",
                      precision: str | PrecisionPolicy | None = None) -> LoadedModel:
    """A :class:`LoadedModel` for a model already in memory (built from a config, or just trained).

    ``precision`` (a policy or its name) converts the weights to the policy's storage dtype and
    attaches its autocast; None keeps the weights as they are, under the policy they imply.
    """
    model.eval()
    first = next(model.parameters())
    if precision is None:
        policy = policy_for_weights(first.dtype)
    else:
        policy = precision if isinstance(precision, PrecisionPolicy) else resolve_precision(precision, device)
        if first.dtype != policy.weight_dtype:
            model.to(policy.weight_dtype)
    adapter = adapter_for(model)
    install_precision(model, adapter.lm_head(), policy)
    parameters = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    # Every weight goes into the fingerprint: caches (semantic bases, evaluation results) key on
    # it, and an in-memory model is often one that was just changed.
    digest = hashlib.sha256(f"memory:{name}:{parameters}".encode())
    for key, tensor in model.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        location=ModelLocation(name, "memory", name, display_name=name),
        dtype=policy.weight_dtype,
        device=device,
        adapter=adapter,
        fingerprint=digest.hexdigest()[:16] + policy.fingerprint_suffix(),
        parameters=parameters,
        precision=policy,
    )
