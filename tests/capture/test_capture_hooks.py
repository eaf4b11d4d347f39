import pytest
import torch
from tiny_models import SAMPLE_TEXTS, make_tiny_loaded

from pkt_core.capture.dataset import capture_texts, pad_batch, tokenize_texts
from pkt_core.capture.hooks import (
    CaptureOptions,
    capture_batch,
    position_ids_from_mask,
    record_residuals,
)
from pkt_core.errors import CaptureError
from pkt_core.models.architecture import adapter_for


def test_shapes_and_layer_counts_for_every_family(tiny_loaded):
    options = CaptureOptions(include_logits=True)
    result = capture_texts(tiny_loaded, SAMPLE_TEXTS, options, batch_size=2)
    encoded = tokenize_texts(tiny_loaded.tokenizer, SAMPLE_TEXTS, 512)
    n_tokens = sum(len(ids) for ids in encoded)
    assert result.layers == [0, 1, 2]
    assert result.n_rows == n_tokens
    for layer in result.layers:
        for site in ("resid_pre", "resid_post", "contribution"):
            assert result.layer(layer, site).shape == (n_tokens, 64)
    assert result.logits().shape == (n_tokens, tiny_loaded.adapter.vocab_size)


def test_states_match_the_models_own_hidden_states(tiny_loaded):
    """Second method: HF's output_hidden_states (input of block l = hidden_states[l])."""
    model = tiny_loaded.model
    ids = torch.tensor(tokenize_texts(tiny_loaded.tokenizer, [SAMPLE_TEXTS[3]], 512))
    mask = torch.ones_like(ids)
    rows = capture_batch(model, ids, mask, CaptureOptions())
    with torch.no_grad():
        reference = model(ids, output_hidden_states=True).hidden_states
    num_layers = adapter_for(model).num_layers
    for layer in range(num_layers):
        torch.testing.assert_close(rows.activations[(layer, "resid_pre")], reference[layer][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            rows.activations[(layer, "contribution")],
            rows.activations[(layer, "resid_post")] - rows.activations[(layer, "resid_pre")],
        )
        if layer < num_layers - 1:  # HF's last entry has the final norm applied
            torch.testing.assert_close(rows.activations[(layer, "resid_post")], reference[layer + 1][0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_gives_the_unpadded_states(tiny_loaded, side):
    options = CaptureOptions(include_logits=True)
    encoded = tokenize_texts(tiny_loaded.tokenizer, SAMPLE_TEXTS, 512)
    singles = [
        capture_batch(tiny_loaded.model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), options, [i])
        for i, ids in enumerate(encoded)
    ]
    ids, mask = pad_batch(encoded, tiny_loaded.tokenizer.pad_token_id, side)
    batched = capture_batch(tiny_loaded.model, ids, mask, options, list(range(len(encoded))))
    offset = 0
    for single in singles:
        n = single.n_rows
        for key, value in single.activations.items():
            torch.testing.assert_close(batched.activations[key][offset:offset + n], value, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batched.logits[offset:offset + n], single.logits, atol=1e-5, rtol=1e-5)
        assert batched.position[offset:offset + n].tolist() == list(range(n))
        offset += n
    assert offset == batched.n_rows


def test_position_ids_count_real_tokens_only():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 0, 0]]


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_are_removed_when_the_forward_raises():
    loaded = make_tiny_loaded("llama")
    before = _hook_count(loaded.model)
    with pytest.raises(IndexError):
        with record_residuals(loaded.model, [0, 1, 2]):
            assert _hook_count(loaded.model) == before + 6
            loaded.model(torch.tensor([[10_000]]))  # id beyond the vocabulary
    assert _hook_count(loaded.model) == before


def test_mean_and_last_token_rows_agree_with_all_rows():
    loaded = make_tiny_loaded("qwen2")
    all_rows = capture_texts(loaded, SAMPLE_TEXTS, CaptureOptions(), batch_size=3)
    means = capture_texts(loaded, SAMPLE_TEXTS, CaptureOptions(token_selection="mean"), batch_size=3)
    lasts = capture_texts(loaded, SAMPLE_TEXTS, CaptureOptions(token_selection="last"), batch_size=3)
    keys = all_rows.row_keys()
    states = all_rows.layer(1)
    assert means.n_rows == lasts.n_rows == len(SAMPLE_TEXTS)
    for sequence in range(len(SAMPLE_TEXTS)):
        in_sequence = keys[:, 0] == sequence
        torch.testing.assert_close(torch.from_numpy(means.layer(1)[sequence]),
                                   torch.from_numpy(states[in_sequence].astype("float64").mean(0)).float(),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.from_numpy(lasts.layer(1)[sequence]), torch.from_numpy(states[in_sequence][-1]))
    assert (means.row_keys()[:, 1] == -1).all()
    assert lasts.row_keys()[:, 1].tolist() == [int((keys[:, 0] == s).sum()) - 1 for s in range(len(SAMPLE_TEXTS))]


def test_drop_first_position():
    loaded = make_tiny_loaded("gpt2")
    result = capture_texts(loaded, SAMPLE_TEXTS, CaptureOptions(drop_first_position=True), batch_size=2)
    encoded = tokenize_texts(loaded.tokenizer, SAMPLE_TEXTS, 512)
    assert result.n_rows == sum(len(ids) - 1 for ids in encoded)
    assert result.row_keys()[:, 1].min() == 1


def test_outlier_filter_drops_planted_massive_activations_and_records_them():
    loaded = make_tiny_loaded("llama")
    tokenizer = loaded.tokenizer
    planted_id = tokenizer.convert_tokens_to_ids("Q")
    with torch.no_grad():  # give one token an embedding 1000x the others: a "massive activation"
        loaded.adapter.input_embeddings().weight[planted_id] *= 1000.0
    texts = ["abQcd", "Qxyz", "no planted token here"]
    options = CaptureOptions(outlier_norm_factor=10.0)
    result = capture_texts(loaded, texts, options, batch_size=3)
    planted = [
        (sequence, position)
        for sequence, ids in enumerate(tokenize_texts(tokenizer, texts, 512))
        for position, token in enumerate(ids)
        if token == planted_id
    ]
    assert sorted(map(tuple, result.metadata["dropped_outliers"]["rows"])) == planted
    assert result.metadata["dropped_outliers"]["count"] == 2
    assert result.metadata["options"]["outlier_norm_factor"] == 10.0
    assert planted_id not in result.token_ids().tolist()
    kept = {tuple(key) for key in result.row_keys().tolist()}
    assert not kept & set(planted)


def test_nan_in_activations_is_a_clear_error():
    loaded = make_tiny_loaded("qwen2")
    with torch.no_grad():
        adapter_for(loaded.model).decoder_layers()[1].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(CaptureError, match="NaN or inf"):
        capture_texts(loaded, SAMPLE_TEXTS[:2], CaptureOptions())


def test_bad_options_are_refused():
    with pytest.raises(CaptureError, match="token_selection"):
        CaptureOptions(token_selection="first")
    with pytest.raises(CaptureError, match="sites"):
        CaptureOptions(sites=("attention",))
    with pytest.raises(CaptureError, match="outlier_norm_factor"):
        CaptureOptions(outlier_norm_factor=0.5)
    loaded = make_tiny_loaded("qwen2")
    with pytest.raises(CaptureError, match="layers \\[7\\] do not exist"):
        capture_texts(loaded, SAMPLE_TEXTS, CaptureOptions(layers=(0, 7)))
    with pytest.raises(CaptureError, match="no texts"):
        capture_texts(loaded, [], CaptureOptions())


def test_chosen_layers_and_sites_only():
    loaded = make_tiny_loaded("mistral")
    result = capture_texts(loaded, SAMPLE_TEXTS, CaptureOptions(layers=(2, 0), sites=("resid_post",)))
    assert result.layers == [0, 2]
    assert result.sites == ["resid_post"]
