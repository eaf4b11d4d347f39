import pytest
import torch

from pkt_core.errors import MemoryBudgetError, UnknownModelError
from pkt_core.models import memory
from pkt_core.models.loading import load_model, resolve_model_reference
from pkt_core.models.memory import MemoryEstimate, count_parameters_from_config
from pkt_core.models.synthetic import tiny_config, write_tiny_llama_gguf


def test_local_folder_loads_with_dtype(tiny_model_folder):
    # bf16 compute keeps fp32 (master) weights and runs the forward under bf16 autocast ...
    mixed = load_model(str(tiny_model_folder), dtype="bf16")
    assert next(mixed.model.parameters()).dtype == torch.float32
    assert mixed.describe()["precision"]["compute"] == "bf16" and mixed.describe()["precision"]["autocast"]
    # ... and bf16 weights are the user's explicit choice.
    loaded = load_model(str(tiny_model_folder), dtype="bf16-weights")
    assert loaded.location.kind == "folder"
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert loaded.adapter.num_layers == 2
    assert loaded.describe()["dtype"] == "bf16"
    # Independent count: the weights actually loaded, each tensor once.
    unique = {id(p): p.numel() for p in loaded.model.parameters()}
    assert loaded.parameters == sum(unique.values())


def test_gguf_file_and_folder_with_one_gguf_load(tmp_path):
    write_tiny_llama_gguf(tmp_path / "model.gguf")
    by_file = load_model(str(tmp_path / "model.gguf"))
    by_folder = load_model(str(tmp_path))
    assert by_file.location.kind == by_folder.location.kind == "gguf"
    assert by_file.adapter.width == 32
    assert by_file.fingerprint == by_folder.fingerprint


def test_unknown_name_suggests_close_registered_names():
    with pytest.raises(UnknownModelError, match="Did you mean 'qwen2.5-coder-0.5b'"):
        resolve_model_reference("qwen2.5-coder-0.5")


def test_non_model_file_is_refused(tmp_path):
    (tmp_path / "weights.pt").write_bytes(b"x")
    with pytest.raises(UnknownModelError, match="not a GGUF file"):
        resolve_model_reference(str(tmp_path / "weights.pt"))


def test_hub_id_that_cannot_be_reached_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnknownModelError, match="could not reach hub model 'someone/not-cached-here'"):
        load_model("someone/not-cached-here")


def test_memory_refusal_gives_the_numbers(tiny_model_folder, monkeypatch):
    monkeypatch.setattr(memory, "available_cpu_bytes", lambda: 1000)
    with pytest.raises(MemoryBudgetError) as error:
        load_model(str(tiny_model_folder))
    message = str(error.value)
    assert "need about" in message and "GiB" in message and "cpu: 0.0 GiB free" in message
    assert "Try --dtype bf16" in message


def test_memory_estimate_matches_weight_bytes():
    config = tiny_config("llama", num_layers=2, width=64)
    parameters = count_parameters_from_config(config)
    # Independent count: embeddings + per-layer attention and MLP + norms + untied head.
    width, ffn, vocab, kv = 64, 128, config.vocab_size, 64 // 4 * 2
    per_layer = width * width * 2 + width * kv * 2 + 3 * width * ffn + 2 * width
    expected = vocab * width + 2 * per_layer + width + (0 if config.tie_word_embeddings else vocab * width)
    assert parameters == expected
    assert MemoryEstimate(parameters, torch.bfloat16).weight_bytes == 2 * parameters


def test_cuda_without_gpu_is_refused(tiny_model_folder):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(MemoryBudgetError, match="no CUDA GPU"):
        load_model(str(tiny_model_folder), device="cuda:0")


def test_auto_without_gpu_falls_back_to_cpu(tiny_model_folder):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert load_model(str(tiny_model_folder), device="auto").device == "cpu"


def test_unknown_dtype_and_device():
    with pytest.raises(MemoryBudgetError, match="unknown dtype"):
        memory.parse_dtype("int3")
    with pytest.raises(MemoryBudgetError, match="unknown device"):
        memory.available_device_bytes("tpu")
