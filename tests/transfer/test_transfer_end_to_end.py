"""SemAlign on a pair the test trains itself: the source knows the task, the target only its format.

Asserts that after the whole pipeline the target's answer distribution on held-out inputs has
moved toward the source's (KL(p_src || p_tgt) decreased). The held-out accuracy change is
reported, not asserted: a direction there is not something the method promises on a toy.
"""

import torch
from transfer_fixtures import addition_samples

from pkt_core.capture.hooks import position_ids_from_mask
from pkt_core.transfer.alignment_data import tokenise_samples
from pkt_core.transfer.config import TransferConfig
from pkt_core.transfer.pipeline import run_transfer


def _answer_log_probs(loaded, samples):
    batch = tokenise_samples(loaded.tokenizer, samples, 32)
    with torch.no_grad():
        logits = loaded.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                              position_ids=position_ids_from_mask(batch.attention_mask)).logits
    mask = batch.prediction_mask()
    return logits[mask].log_softmax(-1), batch.next_tokens()[mask]


def _kl(source_log_probs, target_log_probs):
    return float((source_log_probs.exp() * (source_log_probs - target_log_probs)).sum(-1).mean())


def test_transfer_moves_the_target_toward_the_source(trained_pair, tmp_path):
    source, target = trained_pair
    held_out = addition_samples(64, seed=99)
    source_lp, answers = _answer_log_probs(source, held_out)
    target_lp_before, _ = _answer_log_probs(target, held_out)
    source_accuracy = float((source_lp.argmax(-1) == answers).float().mean())
    assert source_accuracy > 0.8, "the fixture's source did not learn the task"

    # v1 as published: layer cosine + output cosine, no distillation term that would optimise
    # the asserted KL directly.
    config = TransferConfig(source="tiny-source", target="tiny-target", variant="v1", data_file="synthetic",
                            align_samples=48, probe_samples=16, steps_per_stage=8, batch_size=48, learning_rate=1e-3)
    run_transfer(config, out_dir=tmp_path / "run", source=source, target=target,
                 samples=(addition_samples(48, seed=7), addition_samples(16, seed=8), "addition"))
    target_lp_after, _ = _answer_log_probs(target, held_out)
    kl_before, kl_after = _kl(source_lp, target_lp_before), _kl(source_lp, target_lp_after)
    accuracy_before = float((target_lp_before.argmax(-1) == answers).float().mean())
    accuracy_after = float((target_lp_after.argmax(-1) == answers).float().mean())
    print(f"KL(source || target) on held-out: {kl_before:.3f} -> {kl_after:.3f}; "
          f"target accuracy {accuracy_before:.2f} -> {accuracy_after:.2f} (source {source_accuracy:.2f})")
    assert kl_after < kl_before
