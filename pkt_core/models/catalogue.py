"""What ``pkt models list`` and the app show about registered models."""

from __future__ import annotations

import json

from pkt_core.models.provisioning import is_cached
from pkt_core.models.registry import MODELS
from pkt_core.paths import model_cache_dir


def _cached_parameter_count(name: str) -> int:
    """Parameters of the cached weights: a GGUF mirror unties the Qwen embeddings, so it can
    hold more than the hub model. Counted once from the config and remembered in the cache."""
    from pkt_core.models.loading import load_config, resolve_model_reference
    from pkt_core.models.memory import count_parameters_from_config

    memo = model_cache_dir(name) / "pkt_parameter_count.json"
    if memo.is_file():
        return int(json.loads(memo.read_text())["parameters"])
    count = count_parameters_from_config(load_config(resolve_model_reference(name)))
    memo.write_text(json.dumps({"parameters": count}))
    return count


def catalogue_rows() -> list[dict]:
    """One row per registered model; a cached model's shape is read from its real config."""
    rows = []
    for spec in MODELS.values():
        cached = is_cached(spec.name)
        layers, width, vocab = spec.layers, spec.width, spec.vocab_size
        if cached:
            config = json.loads((model_cache_dir(spec.name) / "config.json").read_text())
            layers = config.get("num_hidden_layers", layers)
            width = config.get("hidden_size", width)
            vocab = config.get("vocab_size", vocab)
            parameters = _cached_parameter_count(spec.name)
        else:
            parameters = spec.parameters
        rows.append(
            {
                "name": spec.name,
                "hub_id": spec.hub_id,
                "revision": spec.revision,
                "architecture": spec.architecture,
                "parameters": parameters,
                "layers": layers,
                "width": width,
                "vocab_size": vocab,
                "cached": cached,
                "path": str(model_cache_dir(spec.name)) if cached else None,
                "mirror": None if spec.mirror is None else {
                    "packages": [f"{p.package}=={p.version}" for p in spec.mirror.parts],
                    "sha256": spec.mirror.sha256,
                    "quantisation": spec.mirror.quantisation,
                },
            }
        )
    return rows
