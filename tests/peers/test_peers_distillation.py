"""The controls: logit distillation and fine-tuning train with SemAlign's own budget."""

import torch
from peer_pairs import run_samples, state_copy, tiny_pair

from pkt_core.capture.hooks import position_ids_from_mask
from pkt_core.runs.reader import open_run
from pkt_core.transfer.alignment_data import tokenise_samples
from pkt_core.transfer.config import TransferConfig
from pkt_core.transfer.pipeline import run_transfer


def _config(method, **changes):
    base = dict(source="s", target="t", method=method, data_file="synthetic", align_samples=12, probe_samples=8,
                steps_per_stage=3, batch_size=4, learning_rate=1e-3, stages=[1])
    base.update(changes)
    return TransferConfig(**base)


def _answer_rows(loaded, samples):
    """Independent reference: plain forward, log-probabilities at the answer-prediction positions."""
    batch = tokenise_samples(loaded.tokenizer, samples, 256)
    logits = loaded.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   position_ids=position_ids_from_mask(batch.attention_mask)).logits
    mask = batch.prediction_mask()
    return logits[mask].log_softmax(-1), batch.next_tokens()[mask]


def test_first_step_losses_are_the_kl_to_the_source_and_the_answer_cross_entropy(tmp_path):
    alignment = run_samples()[0]
    for method in ("kd", "finetune"):
        source, target = tiny_pair()
        with torch.no_grad():
            source_log_probs, answers = _answer_rows(source, alignment)
            target_log_probs, _ = _answer_rows(target, alignment)
        run = open_run(run_transfer(_config(method), out_dir=tmp_path / method, source=source, target=target,
                                    samples=run_samples()))
        first = run.table("stage_losses.parquet")[0]
        if method == "kd":
            kl = (source_log_probs.exp() * (source_log_probs - target_log_probs)).sum(-1).mean()
            assert abs(first["loss_output_kl"] - float(kl)) < 1e-5
            assert set(run.manifest.losses) == {"output_kl"}
        else:
            ce = -target_log_probs.gather(-1, answers[:, None]).mean()
            assert abs(first["loss_answer_ce"] - float(ce)) < 1e-5
            assert set(run.manifest.losses) == {"answer_ce"}


def test_controls_have_semalign_s_trainable_budget(tmp_path):
    runs = {}
    for method in ("semalign", "kd", "finetune"):
        for trainable in ("block", "lora"):
            source, target = tiny_pair()
            untouched = state_copy(target)
            config = _config(method, trainable=trainable, stages=[0, 2], steps_per_stage=1)
            run = open_run(run_transfer(config, out_dir=tmp_path / f"{method}-{trainable}", source=source,
                                        target=target, samples=run_samples()))
            runs[(method, trainable)] = run
            changed = {n for n, v in untouched.items() if not torch.equal(v, target.model.state_dict()[n])}
            assert changed and all(n.startswith(("model.layers.0.", "model.layers.2.")) for n in changed)
    for trainable in ("block", "lora"):
        semalign = runs[("semalign", trainable)]
        for method in ("kd", "finetune"):
            run = runs[(method, trainable)]
            assert run.manifest.trainable_parameters == semalign.manifest.trainable_parameters
            training_stages = lambda r: sorted(s for s in r.manifest.stages if s.startswith("stage-"))
            assert training_stages(run) == training_stages(semalign) == ["stage-000", "stage-002"]
            assert len(run.table("stage_losses.parquet")) == len(semalign.table("stage_losses.parquet"))
            assert run.manifest.method_details["stages"] == [0, 2]
