"""SemAlign across two tokenizers (sequence-level alignment): the pooling and anchor arithmetic against
float64 references, every loss zero at its supervision, refusals, and whole runs on a tiny pair
whose source tokenizer merges byte pairs the target's does not."""


import numpy as np
import pytest
import torch
from transfer_fixtures import addition_samples, train_on

from pkt_core.errors import VocabularyMismatchError
from pkt_core.models.loading import wrap_loaded_model
from pkt_core.models.synthetic import (
    byte_level_tokenizer,
    random_model_from_config,
    tiny_config,
)
from pkt_core.models.vocabulary import compare_vocabularies
from pkt_core.runs.reader import open_run
from pkt_core.transfer.alignment_data import tokenise_samples
from pkt_core.transfer.config import TransferConfig
from pkt_core.transfer.forward import forward_to_frontier
from pkt_core.transfer.pipeline import run_transfer
from pkt_core.transfer.sequence_alignment import (
    ANCHOR_SITE,
    anchor_positions,
    first_answer_rows,
    pooled,
    sequence_stage_losses,
    sequence_token_mask,
    shared_log_probs,
)
from pkt_core.transfer.supervision import Supervision

# Merges inside the prompts "a+b=" only, so both tokenizations end the prompt at the same character.
SOURCE_MERGES = [("1", "+"), ("2", "+"), ("3", "+"), ("+", "5"), ("+", "6"), ("+", "7")]


def cross_tokenizer_pair(seed=0):
    source = wrap_loaded_model(random_model_from_config(tiny_config("qwen2", 4, 64), seed=seed + 1),
                               byte_level_tokenizer(merges=SOURCE_MERGES), "tiny-source-merged")
    target = wrap_loaded_model(random_model_from_config(tiny_config("qwen2", 3, 32), seed=seed + 2),
                               byte_level_tokenizer(), "tiny-target")
    return source, target


def _config(**changes):
    base = dict(source="tiny-source-merged", target="tiny-target", variant="v1", data_file="synthetic.jsonl",
                align_samples=12, probe_samples=8, steps_per_stage=2, batch_size=4, learning_rate=1e-3,
                allow_shared_subset=True)
    base.update(changes)
    return TransferConfig(**base)


def _samples():
    return addition_samples(12, seed=5), addition_samples(8, seed=6), "synthetic addition"


def test_the_two_tokenizers_really_split_the_prompts_differently():
    source, target = cross_tokenizer_pair()
    samples = addition_samples(12, seed=5)
    source_tokens = tokenise_samples(source.tokenizer, samples)
    target_tokens = tokenise_samples(target.tokenizer, samples)
    assert (source_tokens.attention_mask.sum(1) < target_tokens.attention_mask.sum(1)).any()
    assert not compare_vocabularies(source.tokenizer, target.tokenizer).identical


def test_the_anchor_is_the_last_prompt_token_in_both_tokenizations():
    source, target = cross_tokenizer_pair()
    samples = addition_samples(12, seed=5)
    for loaded in (source, target):
        tokens = tokenise_samples(loaded.tokenizer, samples)
        anchors = anchor_positions(tokens)
        for row, sample in enumerate(samples):
            ids = tokens.input_ids[row, : int(anchors[row]) + 1].tolist()
            assert loaded.tokenizer.decode(ids) == sample.prompt
        # The anchor's prediction is the first row of each sequence among the answer rows.
        rows = tokens.prediction_mask().nonzero().tolist()
        firsts = [rows[int(i)] for i in first_answer_rows(tokens)]
        assert firsts == [[row, int(anchors[row])] for row in range(len(samples))]


def test_pooling_and_shared_renormalisation_match_float64_references():
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(3, 5, 4, generator=generator, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 1, 1, 0, 0]], dtype=torch.bool)
    expected = np.stack([states[i][mask[i]].numpy().mean(axis=0) for i in range(3)])
    assert np.allclose(pooled(states, mask).numpy(), expected, atol=1e-12)
    logits = torch.randn(2, 10, generator=generator, dtype=torch.float64)
    ids = torch.tensor([7, 1, 4])
    subset = logits[:, ids].numpy()
    reference = subset - np.log(np.exp(subset).sum(axis=1, keepdims=True))
    assert np.allclose(shared_log_probs(logits, ids).double().numpy(), reference, atol=1e-6)
    # Given full log-probabilities instead of logits, the renormalised subset is the same.
    assert np.allclose(shared_log_probs(logits.log_softmax(-1), ids).double().numpy(), reference, atol=1e-6)


def test_every_sequence_loss_is_zero_when_the_target_equals_its_supervision():
    _, target = cross_tokenizer_pair()
    samples = tokenise_samples(target.tokenizer, addition_samples(6, seed=3))
    indices = list(range(len(samples)))
    layer = 1
    config = TransferConfig(source="s", target="t", variant="v1", data_file="d", allow_shared_subset=True,
                            losses={"layer_cosine": 1.0, "relation": 1.0, "fisher_logit": 1.0, "output_kl": 1.0})
    shared = torch.arange(200)
    with torch.no_grad():
        outputs = forward_to_frontier(target, samples, layer, need_logits=True)
        normed = target.adapter.final_norm()(outputs.resid_post)
        mask = sequence_token_mask(samples, config.drop_first_position)
        rows = torch.arange(len(samples))
        own_log_probs = shared_log_probs(outputs.answer_logits[first_answer_rows(samples)], shared)
    supervision = Supervision(
        {(layer, "block_output"): pooled(normed, mask),
         (layer, "contribution"): pooled(outputs.resid_post - outputs.resid_pre, mask),
         (layer, ANCHOR_SITE): normed[rows, anchor_positions(samples)]},
        own_log_probs, final_norm_applied=True, level="sequence", shared_target_ids=shared)
    with torch.no_grad():
        outputs = forward_to_frontier(target, samples, layer, need_logits=True)
        terms = sequence_stage_losses(target, outputs, samples, indices, layer, supervision, config)
    assert set(terms) == {"layer_cosine", "relation", "fisher_logit", "output_kl"}
    for name, value in terms.items():
        assert abs(float(value)) < 1e-5, (name, float(value))
    # Supervision survives the save / resume round trip with its level and shared ids.
    again = Supervision.from_tensors(supervision.tensors(), True)
    assert again.level == "sequence" and torch.equal(again.shared_target_ids, shared)


def test_without_opting_in_or_with_a_token_level_method_the_pair_is_refused(tmp_path):
    source, target = cross_tokenizer_pair()
    with pytest.raises(VocabularyMismatchError, match="--allow-shared-subset"):
        run_transfer(_config(allow_shared_subset=False), out_dir=tmp_path / "a", source=source, target=target,
                     samples=_samples())
    with pytest.raises(VocabularyMismatchError, match="Only SemAlign aligns across tokenizers"):
        run_transfer(_config(method="kd", variant=""), out_dir=tmp_path / "b", source=source, target=target,
                     samples=_samples())
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("variant", ["v1", "v2-relation", "acl-fisher"])
def test_a_run_across_tokenizers_completes_and_records_how_it_aligned(tmp_path, variant):
    source, target = cross_tokenizer_pair()
    folder = run_transfer(_config(variant=variant, steps_per_stage=3, learning_rate=3e-3), out_dir=tmp_path / "run",
                          source=source, target=target, samples=_samples())
    run = open_run(folder)
    manifest = run.manifest
    assert manifest.status == "complete"
    assert manifest.alignment_level.level == "sequence" and "extension" in manifest.alignment_level.note
    assert manifest.semantic_bases["columns"].startswith("259 shared token strings")
    assert manifest.vocabulary["identical"] is False
    cka = run.similarity("linear_cka", "target_source_before")
    assert cka.values.shape == (3, 4)
    assert cka.record.rows.startswith("probe sequence means") and cka.record.n_rows == 8
    losses = run.table("stage_losses.parquet")
    for layer in range(3):
        steps = [row["loss"] for row in losses if row["stage_layer"] == layer]
        assert len(steps) == 3 and all(np.isfinite(steps))
        assert steps[-1] < steps[0], (variant, layer, steps)


def _anchor_kl(source, target, samples, shared_pairs):
    """Mean KL(p_src || p_tgt) of the next-token distributions at the anchors, over shared tokens."""
    values = []
    with torch.no_grad():
        for loaded, ids in ((source, shared_pairs[:, 0]), (target, shared_pairs[:, 1])):
            tokens = tokenise_samples(loaded.tokenizer, samples)
            logits = forward_to_frontier(loaded, tokens, loaded.adapter.num_layers - 1, True).answer_logits
            values.append(shared_log_probs(logits[first_answer_rows(tokens)], ids).double())
    source_lp, target_lp = values
    return float((source_lp.exp() * (source_lp - target_lp)).sum(-1).mean())


def test_across_tokenizers_the_target_moves_toward_a_source_that_knows_the_task(tmp_path, trained_pair_state):
    source, target = cross_tokenizer_pair()
    # The source learns addition in its own (merged) tokens; the target is the conftest's, which
    # learnt only the answer format (it copies the first operand) with the plain byte tokenizer.
    train_on(source, addition_samples(200, seed=1), steps=200)
    target.model.load_state_dict(trained_pair_state[1])
    shared = torch.from_numpy(compare_vocabularies(source.tokenizer, target.tokenizer).shared_pairs)
    held_out = addition_samples(64, seed=99)
    before = _anchor_kl(source, target, held_out, shared)
    run_transfer(_config(losses={"layer_cosine": 1.0, "output_kl": 1.0}, align_samples=48, steps_per_stage=10,
                         learning_rate=3e-3, batch_size=16),
                 out_dir=tmp_path / "run", source=source, target=target,
                 samples=(addition_samples(48, seed=5), addition_samples(8, seed=6), "synthetic addition"))
    after = _anchor_kl(source, target, held_out, shared)
    assert after < before, (before, after)
