"""The precision policy in training: fp32 master weights under bf16 autocast, fp32 vocabulary
reductions, exact delta merges, and the stop on a non-finite step (named, resumable)."""

import json

import pytest
import torch
from transfer_fixtures import addition_samples, make_pair

from pkt_core.models.loading import wrap_loaded_model
from pkt_core.models.precision import NonFiniteStepError
from pkt_core.transfer import losses
from pkt_core.transfer.alignment_data import tokenise_samples
from pkt_core.transfer.config import TransferConfig
from pkt_core.transfer.frontier import apply_weight_delta, train_stage
from pkt_core.transfer.pipeline import run_transfer
from pkt_core.transfer.supervision import Supervision


def _with_policy(loaded, policy):
    return wrap_loaded_model(loaded.model, loaded.tokenizer, loaded.name, precision=policy)


def _finetune_config(**changes):
    base = dict(source="tiny-source", target="tiny-target", method="finetune", data_file="x.jsonl",
                align_samples=8, probe_samples=4, steps_per_stage=1, batch_size=4, learning_rate=1e-4)
    base.update(changes)
    return TransferConfig(**base)


def _one_step(policy):
    """One frontier step (answer CE, lr 1e-4) on layer 1 of the tiny target under ``policy``."""
    _, target = make_pair()
    target = _with_policy(target, policy)
    samples = tokenise_samples(target.tokenizer, addition_samples(8, seed=3), 32)
    block = target.adapter.decoder_layers()[1]
    before = {name: p.detach().clone() for name, p in block.named_parameters()}
    gradients: dict[str, torch.Tensor] = {}
    for name, parameter in block.named_parameters():  # the gradient each weight gets, as it accumulates
        parameter.register_post_accumulate_grad_hook(lambda p, name=name: gradients.__setitem__(name, p.grad.clone()))
    supervision = Supervision(targets={}, source_log_probs=None, final_norm_applied=False)
    _, delta = train_stage(target, 1, samples, supervision, _finetune_config())
    return target, block, before, delta, gradients


def _bf16_step_unchanged_fraction(std: float = 0.03, lr: float = 1e-4) -> float:
    """The defect being fixed, reproduced directly: one AdamW step on bf16 weights."""
    weight = torch.nn.Parameter((torch.randn(256, 256, generator=torch.Generator().manual_seed(0)) * std).bfloat16())
    original = weight.detach().clone()
    weight.grad = torch.randn_like(weight)
    torch.optim.AdamW([weight], lr=lr, weight_decay=0.0).step()
    return float((weight.detach() == original).float().mean())


def test_bf16_autocast_step_changes_every_weight_that_gets_a_gradient():
    # Premise: a bf16 optimizer step leaves a large share of weights exactly where they were.
    assert _bf16_step_unchanged_fraction() > 0.1
    target, block, before, delta, gradients = _one_step("bf16")
    assert all(p.dtype == torch.float32 for p in block.parameters())  # master weights
    assert gradients.keys() == dict(block.named_parameters()).keys()
    for name, parameter in block.named_parameters():
        moved = parameter.detach() != before[name]
        has_gradient = gradients[name] != 0
        assert int(has_gradient.sum()) > 0.9 * has_gradient.numel()
        stuck = int((has_gradient & ~moved).sum())
        assert stuck == 0, f"{name}: {stuck} elements with a gradient did not move"
    assert all(value.dtype == torch.float32 for value in delta.values())


def test_bf16_stored_block_trains_in_fp32_and_merges_by_one_rounding():
    target, block, before, delta, _ = _one_step("bf16-weights")
    assert all(p.dtype == torch.bfloat16 for p in block.parameters())  # stored dtype restored
    prefix = "model.layers.1."
    for name, parameter in block.named_parameters():
        if parameter.dim() < 2:
            continue
        update = delta[prefix + name]
        assert update.dtype == torch.float32 and float((update != 0).float().mean()) > 0.99  # kept in fp32
        exact = before[name].double() + update.double()
        merged = parameter.detach().double()
        # The merged weight is the bf16 nearest to the exact sum: no bf16 value lies closer.
        up = torch.nextafter(parameter.detach(), torch.full_like(parameter.detach(), float("inf"))).double()
        down = torch.nextafter(parameter.detach(), torch.full_like(parameter.detach(), float("-inf"))).double()
        error = (merged - exact).abs()
        assert bool((error <= (up - exact).abs()).all()) and bool((error <= (down - exact).abs()).all())


def test_fisher_loss_on_bf16_inputs_is_within_1e_6_of_float64():
    generator = torch.Generator().manual_seed(0)
    vocab, width, rows = 151_936, 64, 4
    head = (torch.randn(vocab, width, generator=generator) * 0.05).bfloat16()
    supervision = torch.randn(rows, width, generator=generator).bfloat16()
    states = (supervision.float() + 0.02 * torch.randn(rows, width, generator=generator)).bfloat16()
    # Independent float64 reference of 0.5 * sum_v p_v (d_v - sum_u p_u d_u)^2 on the same values.
    w, h, h_ref = head.double(), states.double(), supervision.double()
    z, z_ref = h @ w.T, h_ref @ w.T
    p = torch.softmax(z_ref, dim=-1)
    d = z - z_ref
    reference = float((0.5 * (p * (d - (p * d).sum(-1, keepdim=True)) ** 2).sum(-1)).mean())
    assert reference > 1e-6  # a loss large enough for the bound to mean something
    value = float(losses.fisher_logit_loss(states, supervision, head))
    assert abs(value - reference) < 1e-6
    # The same formula in model dtype (what the code did) misses by far more than the fp32 path does.
    z16, z16_ref = states @ head.T, supervision @ head.T
    p16 = z16_ref.softmax(-1)
    d16 = z16 - z16_ref
    in_bf16 = float((0.5 * (p16 * (d16 - (p16 * d16).sum(-1, keepdim=True)) ** 2).sum(-1)).mean())
    assert abs(in_bf16 - reference) > 10 * abs(value - reference)
    # And under an active bf16 autocast (as inside a model forward) it stays float32.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert abs(float(losses.fisher_logit_loss(states, supervision, head)) - reference) < 1e-6


def test_output_kl_under_autocast_is_float32():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 1000, generator=generator).bfloat16()
    source = torch.log_softmax(torch.randn(3, 1000, generator=generator, dtype=torch.float64), -1)
    target = torch.log_softmax(logits.double(), -1)
    reference = float((source.exp() * (source - target)).sum(-1).mean())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = losses.output_kl_loss(logits, source.float())
    assert value.dtype == torch.float32 and abs(float(value) - reference) < 1e-5


def test_apply_weight_delta_rounds_once_not_twice():
    # 1e-4 updates on bf16 weights of std 0.03: rounding the update to bf16 and adding it to a bf16
    # weight loses them; the sum formed in fp32 and rounded once keeps each one that a bf16 can hold.
    generator = torch.Generator().manual_seed(2)
    model = torch.nn.Linear(128, 128, bias=False).bfloat16()
    with torch.no_grad():
        model.weight.copy_(torch.randn(128, 128, generator=generator) * 0.03)
    before = model.weight.detach().clone()
    update = torch.randn(128, 128, generator=generator) * 1e-4
    apply_weight_delta(model, {"weight": update})
    exact = before.double() + update.double()
    nearest = exact.float().bfloat16()  # float64 -> float32 is exact enough here; one rounding to bf16
    assert torch.equal(model.weight.detach(), nearest)
    twice = before + update.bfloat16()
    assert not torch.equal(twice, nearest)  # the old arithmetic differs: the test can fail


def test_a_nan_step_stops_the_run_naming_stage_and_step_and_the_run_resumes(tmp_path, monkeypatch):
    from pkt_core.transfer import frontier

    original = frontier.stage_losses

    def nan_in_stage_one(loaded, batch, indices, layer, *args):
        terms = original(loaded, batch, indices, layer, *args)
        return {name: value * float("nan") for name, value in terms.items()} if layer == 1 else terms

    monkeypatch.setattr(frontier, "stage_losses", nan_in_stage_one)
    config = _finetune_config(steps_per_stage=2, fidelity=False)
    samples = (addition_samples(8, seed=5), addition_samples(4, seed=6), "synthetic addition")
    source, target = make_pair()
    with pytest.raises(NonFiniteStepError, match=r"stage 1, step 0"):
        run_transfer(config, out_dir=tmp_path / "run", source=source, target=target, samples=samples)
    manifest = json.loads((tmp_path / "run.partial" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "stage 1, step 0" in (manifest.get("error") or "")
    assert "stage-000" in manifest["stages"] and "stage-001" not in manifest["stages"]
    monkeypatch.setattr(frontier, "stage_losses", original)
    source, target = make_pair()
    folder = run_transfer(config, out_dir=tmp_path / "run", resume=True, source=source, target=target, samples=samples)
    finished = json.loads((folder / "manifest.json").read_text())
    assert finished["status"] == "complete" and "stage-001" in finished["stages"]
    assert finished["precision"]["target"]["policy"] == "fp32"
    assert finished["precision"]["weights_delta"]["dtype"] == "fp32"


def test_fp16_trains_with_a_grad_scaler_and_finite_steps():
    target, block, before, delta, _ = _one_step("fp16")
    assert delta and all(bool(torch.isfinite(v).all()) for v in delta.values())


def test_cli_progress_tells_training_steps_by_label_not_by_nan():
    from pkt_core.cli.transfer import is_training_step

    assert is_training_step("stage 3") and is_training_step("laten") and is_training_step("seeking")
    assert not is_training_step("probe_before") and not is_training_step("stage-003")
