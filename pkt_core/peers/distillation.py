"""The controls: logit distillation (kd) and plain fine-tuning (finetune) with SemAlign's budget.

Both train the target on the run's alignment samples with SemAlign's own frontier schedule:
the same target layers (``stages``), the same optimizer steps per stage, the same trainable set
(the frontier block, or LoRA r on up/down/v/o) and the same learning rate. So the trainable
parameters per step, the optimizer steps and the data are SemAlign's, and a comparison with a
SemAlign run of the same configuration isolates the training signal:

- ``kd``: KL(p_src || p_tgt) on the answer-prediction positions (the distillation term SemAlign's
  v2 variants carry too), the source's log-probabilities computed once and held constant;
- ``finetune``: the answer tokens' cross-entropy, no source at all.

The ``losses`` of the config may reweight the method's own term, not add SemAlign's.
"""

from __future__ import annotations

import torch

from pkt_core.models.loading import LoadedModel
from pkt_core.transfer.alignment_data import TokenisedSamples
from pkt_core.transfer.forward import forward_to_frontier
from pkt_core.transfer.frontier import frontier_trainable_parameters, run_frontier_schedule
from pkt_core.transfer.run_skeleton import (
    FULL_DELTA_FORMAT,
    LORA_DELTA_FORMAT,
    RunContext,
    TrainedTransfer,
)
from pkt_core.transfer.stages import frontier_layers
from pkt_core.transfer.supervision import Supervision

SOURCE_LOG_PROBS = "source_log_probs"


def source_answer_log_probs(source: LoadedModel, samples: TokenisedSamples, batch_size: int) -> torch.Tensor:
    """Source log-probabilities at every answer-prediction position, in row-major sample order (rows x V)."""
    pieces = []
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            batch = samples.select(list(range(start, min(start + batch_size, len(samples)))))
            logits = forward_to_frontier(source, batch, source.adapter.num_layers - 1, need_logits=True).answer_logits
            pieces.append(logits.float().log_softmax(dim=-1).cpu())
    return torch.cat(pieces)


def train_control(context: RunContext) -> TrainedTransfer:
    config, writer, stages = context.config, context.writer, context.stages
    source_log_probs = None
    if config.method == "kd":
        if stages.done("source_logits"):
            source_log_probs = writer.checkpoint("source_logits")[SOURCE_LOG_PROBS]
        else:
            source_log_probs = stages.run(
                "source_logits", lambda: source_answer_log_probs(context.source, context.alignment, config.batch_size),
                lambda tensor: {SOURCE_LOG_PROBS: tensor})
    context.set_method_details({
        "paper_version": "control",
        "signal": ("KL(p_src || p_tgt) on the answer-prediction positions" if config.method == "kd"
                   else "cross-entropy of the answer tokens"),
        "budget": "SemAlign's frontier schedule: same target layers, steps per stage, trainable set and learning rate",
        "stages": frontier_layers(context.target, config),
        "steps_per_stage": config.steps_per_stage,
        "trainable": config.trainable,
        "lora_rank": config.lora_rank if config.trainable == "lora" else None,
    })
    # Only the answer log-probabilities are read (output_kl); finetune needs no supervision at all.
    supervision = Supervision(targets={}, source_log_probs=source_log_probs, final_norm_applied=False)
    delta = run_frontier_schedule(context, supervision)
    return TrainedTransfer(delta, LORA_DELTA_FORMAT if config.trainable == "lora" else FULL_DELTA_FORMAT,
                           frontier_trainable_parameters(context.target, config))
