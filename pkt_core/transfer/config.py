"""What a transfer run is asked to do: one dataclass, saved verbatim in the manifest.

The SemAlign variants are presets of losses and layer maps:

- ``v1`` (full v1 paper): v1 layer cosine loss on the layer's residual contribution plus the v1
  output cosine loss; depth map with critical-layer relocation.
- ``v2-relation`` (reconstructed from the v2 abstract): relation-geometry loss on residual
  contributions plus a small output-KL term; attribution-weighted monotone map.
- ``acl-fisher`` (reconstructed from the ACL abstract): Fisher-weighted logit surrogate plus a small
  output-KL term; attribution-weighted monotone map.

All three train with the frontier schedule (one stage per target layer, shallow to deep, only
the frontier layer trainable), which the v2 abstract describes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from pkt_core.errors import PktError

VARIANTS: dict[str, dict] = {
    "v1": {
        "paper_version": "v1 (full paper)",
        "losses": {"layer_cosine": 1.0, "output_cosine": 1.0},
        "mapping": "depth+critical",
    },
    "v2-relation": {
        "paper_version": "v2 (reconstructed from the abstract)",
        "losses": {"relation": 1.0, "output_kl": 0.1},
        "mapping": "attribution-monotone",
    },
    "acl-fisher": {
        "paper_version": "v2 / ACL 2026 (reconstructed from the abstract)",
        "losses": {"fisher_logit": 1.0, "output_kl": 0.1},
        "mapping": "attribution-monotone",
    },
}
MAPPINGS = ("depth", "depth+critical", "interpolated", "attribution-monotone", "cka-monotone")
LOSSES = ("layer_cosine", "output_cosine", "relation", "fisher_logit", "output_kl")


class TransferConfigError(PktError):
    """A transfer configuration asks for something inconsistent."""


@dataclass
class TransferConfig:
    source: str
    target: str
    pair: str | None = None
    method: str = "semalign"
    variant: str = "v1"
    task: str | None = None
    data_file: str | None = None
    align_samples: int = 32
    probe_samples: int = 48
    steps_per_stage: int = 2
    batch_size: int = 8
    learning_rate: float = 1e-4
    max_tokens: int = 256
    trainable: str = "block"  # block | lora
    lora_rank: int = 16
    losses: dict[str, float] = field(default_factory=dict)
    mapping: str = ""
    layer_site: str = "contribution"  # contribution | block_output
    apply_final_norm: bool = True
    coefficients: str = "cosine"  # cosine | least_squares (fidelity)
    drop_first_position: bool = True
    critical_fraction: float = 0.2
    attribution_aggregation: str = "abs"  # abs | signed
    allow_shared_subset: bool = False
    stages: list[int] | None = None  # target layers to train (default all)
    seed: int = 0
    dtype: str = "fp32"
    source_device: str = "cpu"
    target_device: str = "cpu"
    save_weights_delta: bool = True
    eval_tasks: list[str] = field(default_factory=list)  # evaluated for source, target before and after
    eval_limit: int | None = None  # items per task (MMLU: per subject), a fixed recorded subset

    def __post_init__(self) -> None:
        if self.method != "semalign":
            return
        if self.variant not in VARIANTS:
            raise TransferConfigError(f"unknown SemAlign variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        preset = VARIANTS[self.variant]
        if not self.losses:
            self.losses = dict(preset["losses"])
        if not self.mapping:
            self.mapping = preset["mapping"]
        unknown = set(self.losses) - set(LOSSES)
        if unknown:
            raise TransferConfigError(f"unknown losses {sorted(unknown)}; choose from {', '.join(LOSSES)}")
        if self.mapping not in MAPPINGS:
            raise TransferConfigError(f"unknown mapping {self.mapping!r}; choose from {', '.join(MAPPINGS)}")
        if self.trainable not in {"block", "lora"}:
            raise TransferConfigError("trainable must be 'block' or 'lora'")
        if self.layer_site not in {"contribution", "block_output"}:
            raise TransferConfigError("layer_site must be 'contribution' or 'block_output'")
        if (self.task is None) == (self.data_file is None):
            raise TransferConfigError("give exactly one of a task (--task) or a data file (--data)")
        from pkt_core.evaluation.tasks import TASKS

        unknown_tasks = set(self.eval_tasks) - set(TASKS)
        if unknown_tasks:
            raise TransferConfigError(f"unknown evaluation tasks {sorted(unknown_tasks)}; choose from {', '.join(TASKS)}")
        if self.align_samples < 1 or self.steps_per_stage < 1 or self.batch_size < 1:
            raise TransferConfigError("align_samples, steps_per_stage and batch_size must be at least 1")

    @property
    def paper_version(self) -> str:
        return VARIANTS[self.variant]["paper_version"] if self.method == "semalign" else "peer method"

    def needs_final_logits(self) -> bool:
        return any(self.losses.get(name, 0) for name in ("output_cosine", "output_kl"))

    def to_record(self) -> dict:
        return asdict(self)
