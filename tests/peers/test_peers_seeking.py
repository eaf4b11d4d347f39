"""Seeking Neural Nuggets: sensitivity, layer and sub-block selection, SVD-initialised LoRA."""

import numpy as np
import pytest
import torch
from peer_pairs import addition_samples, fresh_copy, state_copy, tiny_pair

from pkt_core.capture.hooks import position_ids_from_mask
from pkt_core.peers.seeking import (
    SeekingError,
    check_pair,
    extract_knowledge,
    fine_tune_extracted,
    inject_extracted_knowledge,
    remove_lora,
)
from pkt_core.peers.sensitivity import (
    decoder_parameter_sensitivity,
    layer_sensitivity,
    select_layers,
)
from pkt_core.transfer.alignment_data import tokenise_samples
from pkt_core.transfer.config import TransferConfig
from pkt_core.transfer.frontier import apply_weight_delta
from pkt_core.transfer.lora import LoRALinear


def _independent_sensitivity(loaded, samples, names):
    """Per sample: HF forward, CE on the answer tokens, |theta * grad| summed over samples."""
    parameters = dict(loaded.model.named_parameters())
    total = {name: torch.zeros_like(parameters[name]) for name in names}
    for index in range(len(samples)):
        sample = samples.select([index])
        loaded.model.zero_grad()
        logits = loaded.model(input_ids=sample.input_ids, attention_mask=sample.attention_mask,
                              position_ids=position_ids_from_mask(sample.attention_mask)).logits
        mask = sample.prediction_mask()
        torch.nn.functional.cross_entropy(logits[mask], sample.next_tokens()[mask]).backward()
        for name in names:
            total[name] += (parameters[name].detach() * parameters[name].grad).abs()
    loaded.model.zero_grad()
    return total


def test_sensitivity_is_the_per_sample_sum_of_theta_times_grad():
    source, _ = tiny_pair()
    samples = tokenise_samples(source.tokenizer, addition_samples(3, seed=1), 32)
    sensitivity = decoder_parameter_sensitivity(source, samples)
    assert all(name.startswith("model.layers.") for name in sensitivity)
    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.3.mlp.down_proj.weight",
             "model.layers.2.input_layernorm.weight"]
    expected = _independent_sensitivity(source, samples, names)
    for name in names:
        torch.testing.assert_close(sensitivity[name], expected[name], rtol=1e-4, atol=1e-9)
    assert all(p.requires_grad for p in source.model.parameters())  # flags restored
    assert all(p.grad is None for p in source.model.parameters())  # every gradient consumed, none kept
    # The hooks are gone: a later backward leaves its gradients in place as usual.
    source.model(input_ids=samples.input_ids[:1]).logits.sum().backward()
    assert source.model.get_parameter(names[0]).grad is not None


def test_layer_selection_keeps_the_most_sensitive_layers_in_depth_order():
    assert select_layers(np.array([5.0, 1.0, 9.0, 3.0, 7.0]), 3) == [0, 2, 4]
    assert select_layers(np.array([2.0, 2.0, 1.0]), 1) == [0]


def _planted_sensitivity(source, low_layer: int, plant: tuple[str, int, int, int, int]):
    """Small random sensitivity everywhere, none in ``low_layer``, a high block planted in one matrix."""
    generator = torch.Generator().manual_seed(0)
    sensitivity = {}
    for name, parameter in source.model.named_parameters():
        if name.startswith("model.layers."):
            values = torch.rand(parameter.shape, generator=generator) * 0.01
            if name.startswith(f"model.layers.{low_layer}."):
                values.zero_()
            sensitivity[name] = values
    name, row, col, rows, cols = plant
    sensitivity[name][row : row + rows, col : col + cols] += 1.0
    return sensitivity


def test_extraction_finds_a_planted_block_and_factors_it_by_truncated_svd():
    source, target = tiny_pair()
    target_up = target.model.get_submodule("model.layers.1.mlp.up_proj").weight  # 64 x 32
    rows, cols = target_up.shape
    # Source layer 1 carries no sensitivity: layers 0, 2, 3 feed target layers 0, 1, 2.
    sensitivity = _planted_sensitivity(source, 1, ("model.layers.2.mlp.up_proj.weight", 40, 17, rows, cols))
    scores, selected, extracted = extract_knowledge(source, target, sensitivity, rank=4)
    assert selected == [0, 2, 3]
    np.testing.assert_allclose(scores, layer_sensitivity(source, sensitivity))
    assert len(extracted) == 3 * 7  # every weight matrix of every target layer
    up = next(e for e in extracted if e.target_layer == 1 and e.matrix == "mlp.up_proj")
    assert up.source_layer == 2
    assert (up.block.row, up.block.col, up.block.rows, up.block.cols) == (40, 17, rows, cols)
    source_block = source.model.get_submodule("model.layers.2.mlp.up_proj").weight.detach().double().numpy()[40:104, 17:49]
    u, s, vh = np.linalg.svd(source_block, full_matrices=False)
    expected = (u[:, :4] * s[:4]) @ vh[:4]
    np.testing.assert_allclose((up.scaled_b.double() @ up.a.double()).numpy(), expected, atol=1e-5)
    assert up.energy_kept == pytest.approx(float((s[:4] ** 2).sum() / (s**2).sum()), rel=1e-6)


def test_svd_initialised_lora_model_is_target_plus_the_rank_r_delta():
    source, target = tiny_pair()
    samples = tokenise_samples(source.tokenizer, addition_samples(4, seed=2), 32)
    sensitivity = decoder_parameter_sensitivity(source, samples)
    rank = 4
    _, _, extracted = extract_knowledge(source, target, sensitivity, rank)
    untouched = state_copy(target)

    # The expected model, built independently: target + numpy rank-r SVD of each source sub-block.
    expected_state = {name: value.clone() for name, value in untouched.items()}
    for item in extracted:
        source_weight = source.model.get_submodule(f"model.layers.{item.source_layer}.{item.matrix}").weight
        block = source_weight.detach().double().numpy()[item.block.row : item.block.row + item.block.rows,
                                                        item.block.col : item.block.col + item.block.cols]
        u, s, vh = np.linalg.svd(block, full_matrices=False)
        delta = (u[:, :rank] * s[:rank]) @ vh[:rank]
        name = f"model.layers.{item.target_layer}.{item.matrix}.weight"
        expected_state[name] = torch.from_numpy(untouched[name].double().numpy() + delta)

    wrappers = inject_extracted_knowledge(target, extracted, dropout=0.05)
    target.model.eval()
    for name, wrapper in wrappers.items():
        np.testing.assert_allclose(wrapper.merged_weight().detach().double().numpy(), expected_state[name].numpy(),
                                   atol=1e-6, rtol=0)
    reference = fresh_copy(target, {k: v.float() for k, v in expected_state.items()})
    batch = tokenise_samples(target.tokenizer, addition_samples(6, seed=3), 32)
    arguments = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                 "position_ids": position_ids_from_mask(batch.attention_mask)}
    with torch.no_grad():
        torch.testing.assert_close(target.model(**arguments).logits, reference(**arguments).logits, atol=1e-5, rtol=1e-5)

    # Taking the wrappers off gives back the untouched target; the factors are the delta.
    factors = remove_lora(target, wrappers)
    assert all(torch.equal(target.model.state_dict()[k], v) for k, v in untouched.items())
    apply_weight_delta(target.model, factors)
    for name in wrappers:
        np.testing.assert_allclose(target.model.state_dict()[name].double().numpy(), expected_state[name].numpy(), atol=1e-6)


def test_fine_tuning_takes_one_adamw_step_from_the_extracted_factors():
    source, target = tiny_pair()
    samples = tokenise_samples(target.tokenizer, addition_samples(4, seed=2), 32)
    _, _, extracted = extract_knowledge(source, target, decoder_parameter_sensitivity(source, samples), rank=4)
    untouched = state_copy(target)
    lr = 1e-3
    config = TransferConfig(source="s", target="t", data_file="d.jsonl", method="seeking", epochs=1,
                            batch_size=len(samples), learning_rate=lr, seeking_lora_dropout=0.0)

    # Reference: the gradient G of the answer CE at the merged weights W + B A (plain HF forward);
    # the factors' gradients are G A^T and B^T G, and AdamW's first step (bias-corrected, no decay)
    # moves each by lr * g / (|g| + eps).
    merged = {f"model.layers.{e.target_layer}.{e.matrix}.weight": e for e in extracted}
    state = {k: v.clone() for k, v in untouched.items()}
    for name, item in merged.items():
        state[name] = (untouched[name].double() + item.scaled_b.double() @ item.a.double()).float()
    reference = fresh_copy(target, state)
    logits = reference(input_ids=samples.input_ids, attention_mask=samples.attention_mask,
                       position_ids=position_ids_from_mask(samples.attention_mask)).logits
    mask = samples.prediction_mask()
    loss = torch.nn.functional.cross_entropy(logits[mask], samples.next_tokens()[mask])
    loss.backward()
    parameters = dict(reference.named_parameters())

    def adam_step(value, gradient):
        return value - lr * gradient / (gradient.abs() + 1e-8)

    records, factors = fine_tune_extracted(target, extracted, samples, config)
    assert len(records) == 1 and records[0]["loss_answer_ce"] == pytest.approx(float(loss.detach()), rel=1e-5)
    weights = target.model.state_dict()
    for name, item in merged.items():
        gradient = parameters[name].grad.double()
        b, a = item.scaled_b.double(), item.a.double()
        expected_b, expected_a = adam_step(b, gradient @ a.T), adam_step(a, b.T @ gradient)
        assert factors[f"{name}.lora_b"].dtype == torch.float32
        np.testing.assert_allclose(factors[f"{name}.lora_b"].double().numpy(), expected_b.numpy(), rtol=0, atol=lr * 1e-3)
        np.testing.assert_allclose(factors[f"{name}.lora_a"].double().numpy(), expected_a.numpy(), rtol=0, atol=lr * 1e-3)
        # The trained delta is left applied: W + B' A'.
        np.testing.assert_allclose(weights[name].double().numpy(),
                                   (untouched[name].double() + expected_b @ expected_a).numpy(), rtol=0, atol=1e-4)
    assert all(p.requires_grad for p in target.model.parameters())  # flags restored
    assert not any(isinstance(module, LoRALinear) for module in target.model.modules())  # wrappers taken off


def test_a_shallower_source_is_refused():
    source, target = tiny_pair(source_layers=2, target_layers=3)
    with pytest.raises(SeekingError, match="only 2"):
        check_pair(source, target)
    narrow_source, wide_target = tiny_pair(source_width=32, target_width=64)
    with pytest.raises(SeekingError, match="larger than the source's"):
        check_pair(narrow_source, wide_target)
