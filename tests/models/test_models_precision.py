"""The precision policy: what auto picks, autocast attached to the model, an fp32 head, the record."""

import pytest
import torch

from pkt_core.models import precision
from pkt_core.models.loading import wrap_loaded_model
from pkt_core.models.precision import NonFiniteStepError, PrecisionError, check_finite_step, resolve_precision
from pkt_core.models.synthetic import byte_level_tokenizer, random_model_from_config, tiny_config


def test_auto_picks_bf16_only_where_bf16_is_native(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    chosen = resolve_precision("auto", "cpu")
    assert (chosen.name, chosen.requested) == ("bf16", "auto") and "native bf16" in chosen.reason
    assert chosen.weight_dtype == torch.float32 and chosen.compute_dtype == torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", "cpu").name == "fp32"
    # A fake CUDA machine: an Ampere card has bf16, a Turing card does not.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (8, 0))
    assert resolve_precision("auto", "cuda:1").name == "bf16"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (7, 5))
    assert resolve_precision("auto", "cuda:0").name == "fp32"


def test_a_low_precision_on_a_cpu_that_emulates_it_warns_and_auto_does_not(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(precision.SlowPrecisionWarning, match="no native bf16/fp16 matmul.*--dtype auto"):
        resolve_precision("bf16", "cpu")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("auto", "cpu").name == "fp32"
        resolve_precision(torch.bfloat16)  # a model already stored in bf16: described, not chosen
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
        resolve_precision("bf16", "cpu")


def test_policies_and_their_records():
    assert resolve_precision(torch.bfloat16).name == "bf16-weights"  # the old load_model(dtype=torch.bfloat16)
    assert resolve_precision("float16").needs_grad_scaler
    record = resolve_precision("bf16").record()
    assert record["weights"] == "fp32" and record["compute"] == "bf16" and record["autocast"]
    assert record["master_weights"] == "fp32" and record["lm_head"] == "fp32"
    assert resolve_precision("fp32").fingerprint_suffix() == ""
    assert resolve_precision("bf16").fingerprint_suffix() != resolve_precision("bf16-weights").fingerprint_suffix()
    with pytest.raises(PrecisionError, match="choose one of"):
        resolve_precision("int8")


def _tiny(policy):
    model = random_model_from_config(tiny_config("qwen2", num_layers=2), seed=0)
    return wrap_loaded_model(model, byte_level_tokenizer(), "tiny", precision=policy)


def test_autocast_runs_inside_the_forward_and_the_head_stays_fp32():
    loaded = _tiny("bf16")
    seen = {}
    projection = loaded.adapter.decoder_layers()[0].mlp.down_proj
    projection.register_forward_hook(lambda m, a, out: seen.__setitem__("mlp", out.dtype))
    ids = torch.tensor([[1, 2, 3, 4]])
    logits = loaded.model(input_ids=ids).logits
    assert seen["mlp"] == torch.bfloat16  # matmuls in bf16
    assert logits.dtype == torch.float32  # the vocabulary-sized output in fp32
    assert not torch.is_autocast_enabled("cpu")  # left again after the forward
    reference = _tiny("fp32").model(input_ids=ids).logits
    assert torch.allclose(logits, reference, atol=0.1)  # same model, bf16 matmul noise only
    # Precision is part of the identity result caches key on.
    assert loaded.fingerprint != _tiny("fp32").fingerprint
    assert loaded.describe()["precision"]["policy"] == "bf16"


def test_autocast_is_left_even_when_the_forward_raises():
    loaded = _tiny("bf16")

    def boom(module, args, output):
        raise KeyError("stop")

    handle = loaded.adapter.decoder_layers()[0].register_forward_hook(boom)
    with pytest.raises(KeyError):
        loaded.model(input_ids=torch.tensor([[1, 2]]))
    handle.remove()
    assert not torch.is_autocast_enabled("cpu")


def test_non_finite_check_names_where_and_when():
    parameter = torch.nn.Parameter(torch.zeros(3))
    parameter.grad = torch.tensor([0.0, float("nan"), 1.0])
    with pytest.raises(NonFiniteStepError, match=r"gradient .* in stage 4, step 7"):
        check_finite_step(torch.tensor(0.5), [parameter], "stage 4", 7)
    with pytest.raises(NonFiniteStepError, match=r"loss \(nan\) in laten, step 2"):
        check_finite_step(float("nan"), [], "laten", 2)
    parameter.grad = torch.ones(3)
    check_finite_step(torch.tensor(0.5), [parameter], "stage 0", 0)  # finite: no error
