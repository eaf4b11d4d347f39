"""LaTen: logit-lens location, hypernetworks that start at zero, deltas confined to the selected neurons."""

import pytest
import torch
from peer_pairs import addition_samples, run_samples, state_copy, tiny_pair

from pkt_core.capture.hooks import position_ids_from_mask
from pkt_core.peers.laten import (
    HYPERNETWORK_INIT_STD,
    NeuronDeltaHypernetwork,
    logit_lens_location,
)
from pkt_core.runs.reader import open_run
from pkt_core.transfer.alignment_data import tokenise_samples
from pkt_core.transfer.config import TransferConfig
from pkt_core.transfer.pipeline import run_transfer


def test_hypernetwork_output_is_near_zero_at_initialisation():
    torch.manual_seed(0)
    network = NeuronDeltaHypernetwork(64, 16, 32)
    weights = torch.cat([p.detach().flatten() for p in network.parameters()])
    assert weights.std().item() == pytest.approx(HYPERNETWORK_INIT_STD, rel=0.1)
    vectors = torch.randn(20, 64)  # source neuron vectors of norm about 8
    output = network(vectors)
    assert output.shape == (20, 32)
    assert output.abs().max().item() < 1e-4  # the bias alone is ~1e-5; the weights' path ~1e-9


def _answer_log_probs(model, batch, hook_module=None):
    """Independent reference: a plain forward, optionally with ``hook_module``'s output zeroed."""
    handle = hook_module.register_forward_hook(lambda m, a, out: torch.zeros_like(out)) if hook_module else None
    try:
        with torch.no_grad():
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                           position_ids=position_ids_from_mask(batch.attention_mask)).logits
    finally:
        if handle is not None:
            handle.remove()
    mask = batch.prediction_mask()
    return logits[mask].log_softmax(-1).gather(-1, batch.next_tokens()[mask][:, None])[:, 0]


def test_lens_gain_and_neuron_scores_of_the_last_mlp_match_an_ablation_and_a_gradient():
    _, target = tiny_pair()
    batch = tokenise_samples(target.tokenizer, addition_samples(6, seed=4), 32)
    scores = logit_lens_location(target, batch, batch_size=4)
    last = target.adapter.num_layers - 1
    mlp = target.model.get_submodule(f"model.layers.{last}.mlp")
    # The last MLP's lens gain is exactly log p(answer) of the model minus the model without that MLP.
    gain = (_answer_log_probs(target.model, batch) - _answer_log_probs(target.model, batch, mlp)).mean()
    assert scores.gains[(last, "mlp")] == pytest.approx(float(gain), rel=1e-4, abs=1e-6)
    assert scores.answer_rows == int(batch.prediction_mask().sum())
    # Its neuron scores sum to gradient x output of the MLP (its down projection has no bias).
    captured = {}

    def keep(module, args, output):
        output.retain_grad()
        captured["out"] = output

    handle = mlp.register_forward_hook(keep)
    logits = target.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                          position_ids=position_ids_from_mask(batch.attention_mask)).logits
    handle.remove()
    mask = batch.prediction_mask()
    logits[mask].log_softmax(-1).gather(-1, batch.next_tokens()[mask][:, None]).sum().backward()
    out = captured["out"]
    expected = float((out.grad * out.detach())[mask].sum())
    target.model.zero_grad()
    assert scores.neuron_scores[(last, "mlp")].sum() == pytest.approx(expected, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_lens_gains_telescope_from_the_embeddings_to_the_model_output(family, monkeypatch):
    """Each gain is read(residual + sublayer) - read(residual), so over all sublayers they sum to the
    model's own log p(answer) minus the lens read of the embeddings; the location takes one head read
    per sublayer plus one per batch, reusing the read before a sublayer from the step before it."""
    import pkt_core.peers.laten as laten

    _, target = tiny_pair(family)
    batch = tokenise_samples(target.tokenizer, addition_samples(6, seed=4), 32)
    reads = []
    original = laten._answer_log_probs
    monkeypatch.setattr(laten, "_answer_log_probs", lambda *args: reads.append(1) or original(*args))
    scores = logit_lens_location(target, batch, batch_size=4)
    batches, sublayers = 2, 2 * target.adapter.num_layers
    assert len(reads) == batches * (sublayers + 1)
    mask = batch.prediction_mask()
    answers = batch.next_tokens()[mask]
    with torch.no_grad():
        embeddings = target.model.get_input_embeddings()(batch.input_ids)[mask].double()
        head = target.model.get_output_embeddings().weight.double()
        norm = target.model.model.norm
        variance = embeddings.pow(2).mean(-1, keepdim=True)
        lens = (embeddings * torch.rsqrt(variance + norm.variance_epsilon) * norm.weight.double()) @ head.T
        start = lens.log_softmax(-1).gather(-1, answers[:, None])[:, 0].mean()
    end = _answer_log_probs(target.model, batch).double().mean()
    assert sum(scores.gains.values()) == pytest.approx(float(end - start), rel=1e-4, abs=1e-5)


def test_the_applied_delta_touches_only_the_selected_neurons(tmp_path):
    source, target = tiny_pair()
    untouched = state_copy(target)
    config = TransferConfig(source="s", target="t", method="laten", data_file="synthetic", align_samples=12,
                            probe_samples=8, batch_size=12, epochs=3, laten_top_layers=2, learning_rate=1e-2)
    run = open_run(run_transfer(config, out_dir=tmp_path / "run", source=source, target=target, samples=run_samples()))
    neurons = run.table("laten_neurons.parquet")
    projection = {"attention": "self_attn.o_proj", "mlp": "mlp.down_proj"}
    selected: dict[str, set[int]] = {}
    for row in neurons:
        selected.setdefault(f"model.layers.{row['target_layer']}.{projection[row['module']]}.weight", set()).add(
            row["target_neuron"])
    assert len(selected) == 4  # two attention and two FFN sublayers
    for name, columns in selected.items():
        in_features = untouched[name].shape[1]
        assert len(columns) == -(-in_features // 10)  # the top 10%
    after = target.model.state_dict()
    for name, before in untouched.items():
        if name not in selected:
            assert torch.equal(after[name], before), f"{name} changed"
            continue
        changed = (after[name] != before).any(dim=0).nonzero().flatten().tolist()
        assert changed and set(changed) <= selected[name]
        others = [j for j in range(before.shape[1]) if j not in selected[name]]
        assert torch.equal(after[name][:, others], before[:, others])
    details = run.manifest.method_details
    assert {p["module"] for p in details["pairs"]} == {"attention", "mlp"}
    assert all(p["hypernetwork"]["input"] == 64 and p["hypernetwork"]["output"] == 32 for p in details["pairs"])
    assert run.manifest.trainable_parameters == sum(p["hypernetwork"]["parameters"] for p in details["pairs"])
    locations = run.table("laten_locations.parquet")
    assert sum(r["selected"] for r in locations) == 8  # 2 per kind in each model
