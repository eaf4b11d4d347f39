"""The layer-wise linear probe: its cross-validated fit against independent references (scipy's Wilson
interval, scikit-learn's own cross_val_predict pipeline, Hugging Face's hidden states), its folds, the
state cache, and the run stages that write ``linear_probe.parquet`` for every method (or say why not)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch
from transfer_fixtures import addition_samples, make_pair

from pkt_core.runs.reader import open_run
from pkt_core.runs.schema import LINEAR_PROBE_FILE, TABLES
from pkt_core.transfer.config import TransferConfig, TransferConfigError
from pkt_core.transfer.linear_probe import (
    INVERSE_REGULARISATION,
    MAX_ITERATIONS,
    LinearProbeError,
    ProbeSettings,
    label_entropy,
    majority_share,
    probe_layer,
    probe_layers,
    stratified_folds,
    wilson_interval,
)
from pkt_core.transfer.linear_probe_items import probe_items, skip_reason
from pkt_core.transfer.linear_probe_states import last_token_states, probe_states, state_cache_dir
from pkt_core.transfer.pipeline import apply_run_to_model, run_transfer

PROBE_ITEMS = 40
MAX_TOKENS = 96


# -- the fit ------------------------------------------------------------------------------------


def _coded_and_uninformative(seed: int, n: int = 300, width: int = 24) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Layer 0 codes the label along four orthonormal directions (4 units apart, unit noise; the label is the
    argmax of the states' projection on them, wrong for about 1 item in 100), its dimensions on scales
    0.5-20 as a residual stream's are; layer 1's states are independent of the labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    directions = np.linalg.qr(rng.standard_normal((width, 4)))[0].T
    coded = 4.0 * np.eye(4)[labels] @ directions + rng.standard_normal((n, width))
    return {0: coded * rng.uniform(0.5, 20, width), 1: rng.standard_normal((n, width))}, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_layer_the_labels_are_a_linear_function_of_scores_near_one_and_an_independent_one_near_chance(seed):
    states, labels = _coded_and_uninformative(seed)
    coded, independent = probe_layers(states, labels)
    assert coded.accuracy >= 0.95 and coded.ci_low > 0.9
    # Independent states: the out-of-fold accuracy of a chance-level classifier is about Binomial(n, 1/4) / n,
    # whose standard deviation is 0.025 at n = 300; 4 of them bound it (and its interval holds the level).
    assert abs(independent.accuracy - 0.25) < 0.1
    assert independent.ci_low < 0.25 < independent.ci_high and independent.accuracy < coded.ci_low - 0.5
    assert coded.chance == independent.chance == pytest.approx(np.bincount(labels).max() / len(labels))
    assert coded.log_loss < independent.log_loss and independent.log_loss > 0.9 * coded.chance_log_loss
    assert coded.folds == 5 and len(coded.fold_accuracies) == 5 and coded.converged


def test_the_probe_equals_scikit_learns_own_cross_validated_pipeline():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(7)
    labels = rng.integers(0, 4, 120)
    states = rng.standard_normal((120, 40)) + 0.6 * np.eye(4)[labels] @ rng.standard_normal((4, 40))
    result = probe_layer(states, labels, ProbeSettings(seed=3))
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=INVERSE_REGULARISATION, max_iter=MAX_ITERATIONS))
    probabilities = cross_val_predict(pipeline, states, labels, method="predict_proba",
                                      cv=StratifiedKFold(5, shuffle=True, random_state=3))
    assert result.accuracy == pytest.approx(float((probabilities.argmax(axis=1) == labels).mean()), abs=1e-12)
    assert result.log_loss == pytest.approx(log_loss(labels, probabilities), rel=1e-6)
    assert 0.25 < result.accuracy < 1.0  # the test has signal without being trivial


def test_the_wilson_interval_is_scipys():
    from scipy.stats import binomtest

    for correct, n in ((0, 10), (3, 10), (10, 10), (75, 300), (150, 300), (299, 300)):
        expected = binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
        low, high = wilson_interval(correct, n)
        assert low == pytest.approx(expected.low, abs=1e-12) and high == pytest.approx(expected.high, abs=1e-12)
    with pytest.raises(LinearProbeError, match="correct <= n"):
        wilson_interval(11, 10)


def test_the_chance_levels_are_the_majority_share_and_the_label_entropy():
    labels = np.array([0, 0, 0, 1, 1, 2])
    assert majority_share(labels) == 0.5
    assert label_entropy(labels) == pytest.approx(-(0.5 * math.log(0.5) + math.log(1 / 3) / 3 + math.log(1 / 6) / 6))


def test_folds_are_stratified_partition_the_items_and_follow_the_seed():
    labels = np.repeat([0, 1, 2, 3], [40, 31, 17, 12])
    folds = stratified_folds(labels, 5, seed=0)
    tested = np.concatenate([test for _, test in folds])
    assert sorted(tested) == list(range(len(labels)))
    for train, test in folds:
        assert not set(train) & set(test)
        counts = np.bincount(labels[test], minlength=4)
        assert np.all(np.abs(counts - np.bincount(labels) / 5) <= 1)  # each label spread evenly over the folds
    again = stratified_folds(labels, 5, seed=0)
    other = stratified_folds(labels, 5, seed=1)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(folds, other))
    # A label with fewer items than folds lowers k so that every test fold can hold it.
    assert len(stratified_folds(np.repeat([0, 1], [20, 3]), 5)) == 3


def test_inputs_a_probe_cannot_use_are_refused_with_what_to_do():
    states = np.zeros((6, 3))
    with pytest.raises(LinearProbeError, match="two or more labels"):
        probe_layer(states, np.zeros(6, dtype=int))
    with pytest.raises(LinearProbeError, match=r"labels \[2\] have a single item"):
        probe_layer(states, np.array([0, 0, 1, 1, 1, 2]))
    with pytest.raises(LinearProbeError, match="integers"):
        probe_layer(states, np.array([0.0, 1.0] * 3))
    with pytest.raises(LinearProbeError, match="6 rows"):
        probe_layer(np.zeros((5, 3)), np.array([0, 1] * 3))
    with pytest.raises(LinearProbeError, match="NaN"):
        probe_layer(np.full((6, 3), np.nan), np.array([0, 1] * 3))


# -- items and states ---------------------------------------------------------------------------


def test_probe_items_are_labelled_evaluation_items_asked_as_the_runs_probes_are():
    from pkt_core.evaluation.splits import alignment_pool, evaluation_items
    from pkt_core.transfer.task_samples import as_sample

    items = probe_items("mmlu", 120)
    assert len(items) == 120 and set(items.labels) == {0, 1, 2, 3}
    evaluated = {item.item_id: item for item in evaluation_items("mmlu").items}
    assert set(items.item_ids) <= set(evaluated) and not set(items.item_ids) & set(alignment_pool("mmlu").ids)
    assert len({evaluated[i].subject for i in items.item_ids}) == 57  # round-robin: every subject before a second
    for item_id, prompt, label in zip(items.item_ids, items.prompts, items.labels):
        assert prompt == as_sample(evaluated[item_id], with_answer=False).prompt
        assert label == evaluated[item_id].doc["answer"]
    arc = probe_items("arc_easy", 30)
    assert arc.prompts[0].startswith("Question: ") and "\n A. " in arc.prompts[0] and arc.prompts[0].endswith("Answer:")
    assert probe_items("mmlu", 120).digest == items.digest != probe_items("mmlu", 119).digest


def test_generation_tasks_data_runs_and_zero_items_have_a_reason_and_choice_tasks_none():
    for task in ("gsm8k", "humaneval", "mbpp"):
        assert "generation task" in skip_reason(task, None, 300)
    assert "--data run" in skip_reason(None, "pairs.jsonl", 300)
    assert "switched off" in skip_reason("mmlu", None, 0)
    assert all(skip_reason(task, None, 300) is None for task in ("mmlu", "arc_easy", "arc_challenge"))
    for count in (-1, 5):
        with pytest.raises(TransferConfigError, match="linear_probe_items must be 0 .off. or at least 20"):
            TransferConfig(source="a", target="b", task="mmlu", linear_probe_items=count)


def _reference_last_token_states(loaded, prompts, max_tokens) -> dict[int, np.ndarray]:
    """Hugging Face's own hidden states, one unpadded prompt at a time; the last block's output (which
    hidden_states gives after the final norm) from a forward hook of this test's own."""
    layers = loaded.adapter.num_layers
    rows: dict[int, list[np.ndarray]] = {layer: [] for layer in range(layers)}
    captured = {}
    handle = loaded.adapter.decoder_layers()[-1].register_forward_hook(
        lambda module, args, output: captured.update(last=(output[0] if isinstance(output, tuple) else output)))
    try:
        with torch.no_grad():
            for prompt in prompts:
                ids = loaded.tokenizer(prompt)["input_ids"][-max_tokens:]
                hidden = loaded.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
                for layer in range(layers - 1):
                    rows[layer].append(hidden[layer + 1][0, -1].numpy())
                rows[layers - 1].append(captured["last"][0, -1].numpy())
    finally:
        handle.remove()
    return {layer: np.stack(values) for layer, values in rows.items()}


def test_states_are_each_blocks_output_at_the_last_prompt_token_and_cut_from_the_left():
    source, _ = make_pair()
    prompts = ["1+2=", "a much longer prompt than the others, " * 4 + "Answer:", "x", "Question: 2+2?\nAnswer:"]
    states, truncated = last_token_states(source, prompts, max_tokens=48)
    assert truncated == 1
    expected = _reference_last_token_states(source, prompts, 48)
    for layer in range(source.adapter.num_layers):
        np.testing.assert_allclose(states[layer].numpy(), expected[layer], atol=1e-5, rtol=1e-5)


def test_the_state_cache_serves_a_second_call_and_never_a_changed_request(isolated_pkt_home):
    source, _ = make_pair()
    items = probe_items("mmlu", 12)
    first = probe_states(source, items, MAX_TOKENS)
    second = probe_states(source, items, MAX_TOKENS)
    assert (first.cache, second.cache) == ("miss", "hit")
    assert all(torch.equal(first.layers[l], second.layers[l]) for l in first.layers)
    assert probe_states(source, items, MAX_TOKENS - 1).cache == "miss"  # another prompt budget, another key
    assert probe_states(source, probe_items("mmlu", 13), MAX_TOKENS).cache == "miss"
    files = sorted(state_cache_dir().glob("*.safetensors"))
    assert len(files) == 3
    for path in files:  # a damaged file is captured again, not trusted
        path.write_bytes(path.read_bytes()[:100])
    again = probe_states(source, items, MAX_TOKENS)
    assert again.cache == "miss" and all(torch.equal(first.layers[l], again.layers[l]) for l in first.layers)
    off = probe_states(source, probe_items("mmlu", 14), MAX_TOKENS, use_cache=False)
    assert off.cache == "off" and len(list(state_cache_dir().glob("*.safetensors"))) == 3


# -- the run stages -----------------------------------------------------------------------------


def _config(**changes) -> TransferConfig:
    base = {"source": "tiny-source", "target": "tiny-target", "variant": "v1", "task": "mmlu", "align_samples": 4,
            "probe_samples": 4, "steps_per_stage": 2, "batch_size": 4, "learning_rate": 5e-3, "max_tokens": MAX_TOKENS,
            "stages": [0, 1], "fidelity": False, "similarity_measures": ["linear_cka"],
            "linear_probe_items": PROBE_ITEMS}
    return TransferConfig(**{**base, **changes})


def _reference_rows(loaded, items, seed: int) -> tuple[list[float], list[float]]:
    """Per layer, the out-of-fold accuracy and log loss from Hugging Face's hidden states and scikit-learn's
    own cross-validated pipeline."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    states = _reference_last_token_states(loaded, items.prompts, MAX_TOKENS)
    accuracies, losses = [], []
    for layer in sorted(states):
        pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=INVERSE_REGULARISATION, max_iter=MAX_ITERATIONS))
        probabilities = cross_val_predict(pipeline, states[layer].astype(np.float64), items.labels,
                                          method="predict_proba", cv=StratifiedKFold(5, shuffle=True, random_state=seed))
        accuracies.append(float((probabilities.argmax(axis=1) == items.labels).mean()))
        losses.append(float(log_loss(items.labels, probabilities)))
    return accuracies, losses


@pytest.fixture(scope="module")
def probed_runs(tmp_path_factory):
    """Two tiny SemAlign runs on MMLU with fresh copies of the same pair: the second finds the
    source's and the untouched target's states in the cache."""
    home = tmp_path_factory.mktemp("probe_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PKT_HOME", str(home))
        folders = []
        for name in ("first", "second"):
            source, target = make_pair()
            folders.append(run_transfer(_config(), out_dir=home / "runs" / name, source=source, target=target))
    return folders


def test_a_tiny_mmlu_run_probes_every_layer_of_source_and_target_before_and_after(probed_runs):
    run = open_run(probed_runs[0])
    table = run.linear_probe()
    TABLES["linear_probe"].check(pa.Table.from_pandas(table).schema, LINEAR_PROBE_FILE)
    assert LINEAR_PROBE_FILE in run.manifest.artefacts
    layers = {role: sorted(table[table["model"] == role]["layer"]) for role in ("source", "target_before", "target_after")}
    assert layers == {"source": [0, 1, 2, 3], "target_before": [0, 1, 2], "target_after": [0, 1, 2]}
    assert (table["n_items"] == PROBE_ITEMS).all() and (table["folds"] == 5).all()
    record = run.manifest.linear_probe
    assert record.status == "computed" and record.items == PROBE_ITEMS and record.task == "mmlu"
    assert {role: r.cache for role, r in record.roles.items()} == {"source": "miss", "target_before": "miss",
                                                                   "target_after": "off"}
    assert {"linear_probe_before", "linear_probe_after"} <= set(run.manifest.stages)
    items = probe_items("mmlu", PROBE_ITEMS)
    assert record.items_digest == items.digest and table["chance"].iloc[0] == pytest.approx(majority_share(items.labels))
    # Every row against Hugging Face's hidden states and scikit-learn's pipeline: the source and the
    # untouched target, and the trained target rebuilt from the run's own weight delta. Padded and unpadded
    # forwards differ in the last bits: log losses agree to 1e-4, and at most one of the 40 out-of-fold
    # predictions may differ.
    source, target = make_pair()
    models = {"source": source, "target_before": target}
    for role in ("source", "target_before", "target_after"):
        if role == "target_after":
            apply_run_to_model(target.model, run)
        rows = table[table["model"] == role].sort_values("layer")
        accuracies, losses = _reference_rows(models.get(role, target), items, 0)
        np.testing.assert_allclose(rows["log_loss"], losses, rtol=1e-4)
        np.testing.assert_allclose(rows["accuracy"], accuracies, atol=1 / PROBE_ITEMS + 1e-9)
    # The trained target was captured afresh, not read from the untouched target's cached states.
    before, after = (table[table["model"] == role].sort_values("layer")["log_loss"].to_numpy()
                     for role in ("target_before", "target_after"))
    assert np.all(np.abs(after - before) > 1e-6)


def test_a_second_run_on_the_same_pair_captures_only_the_trained_target(probed_runs):
    first, second = (open_run(folder) for folder in probed_runs)
    roles = second.manifest.linear_probe.roles
    assert (roles["source"].cache, roles["target_before"].cache, roles["target_after"].cache) == ("hit", "hit", "off")
    columns = ["model", "layer", "accuracy", "ci_low", "ci_high", "log_loss"]
    a, b = first.linear_probe()[columns], second.linear_probe()[columns]
    np.testing.assert_allclose(a.drop(columns="model").to_numpy(), b.drop(columns="model").to_numpy())


def test_a_resumed_run_keeps_the_probe_of_the_untouched_pair_and_adds_the_trained_target(tmp_path, monkeypatch,
                                                                                           probed_runs):
    from pkt_core.transfer import linear_probe_stage
    from pkt_core.transfer.stages import TransferCancelled

    source, target = make_pair()
    with pytest.raises(TransferCancelled):
        run_transfer(_config(), out_dir=tmp_path / "run", source=source, target=target,
                     should_cancel=lambda: (tmp_path / "run.partial" / LINEAR_PROBE_FILE).is_file())
    calls = []
    original = linear_probe_stage.probe_states
    monkeypatch.setattr(linear_probe_stage, "probe_states",
                        lambda loaded, *args, **kwargs: calls.append(kwargs.get("use_cache")) or original(loaded, *args, **kwargs))
    source, target = make_pair()
    resumed = open_run(run_transfer(_config(), out_dir=tmp_path / "run", resume=True, source=source, target=target))
    assert calls == [False]  # only the trained target was captured on resume
    reference = open_run(probed_runs[0]).linear_probe()
    np.testing.assert_allclose(resumed.linear_probe()["accuracy"], reference["accuracy"])
    assert set(resumed.manifest.linear_probe.roles) == {"source", "target_before", "target_after"}


@pytest.mark.parametrize("method", ["semalign", "finetune"])
def test_a_generation_task_run_and_a_data_run_record_why_they_have_no_probe(tmp_path, method):
    samples = (addition_samples(8, seed=1), addition_samples(4, seed=2), "synthetic addition")
    for name, changes in (("humaneval", {"task": "humaneval"}), ("data", {"task": None, "data_file": "pairs.jsonl"})):
        source, target = make_pair()
        config = _config(method=method, variant="" if method != "semalign" else "v1", stages=[0], steps_per_stage=1,
                         **changes)
        run = open_run(run_transfer(config, out_dir=tmp_path / name, source=source, target=target, samples=samples))
        record = run.manifest.linear_probe
        assert record.status == "skipped" and run.linear_probe() is None
        assert ("generation task" if name == "humaneval" else "--data run") in record.reason
        assert "linear_probe_before" not in run.manifest.stages


def test_the_table_reads_back_through_the_schema_and_draws_and_exports(tmp_path):
    from run_builders import base_manifest, write_full_run

    from pkt_core.figures.alignment_page import LINEAR_PROBE_CHANCE, linear_probe_lines, linear_probe_summary
    from pkt_core.figures.export import export_figure
    from pkt_core.runs.schema import RunFormatError
    from pkt_core.runs.writer import RunWriter

    folder, written = write_full_run(tmp_path / "full")
    run = open_run(folder)
    table = run.linear_probe()
    np.testing.assert_allclose(table["accuracy"], [row["accuracy"] for row in written["linear_probe"]])
    spec = linear_probe_lines(run)
    drawn = spec.data[spec.data["model"] != LINEAR_PROBE_CHANCE]
    np.testing.assert_allclose(drawn["relative_depth"], table["layer"] / (table["n_layers"] - 1))
    assert spec.encoding["reference"] == [LINEAR_PROBE_CHANCE]
    assert export_figure(spec, "svg").startswith(b"<?xml") and export_figure(spec, "pdf").startswith(b"%PDF")
    summary = linear_probe_summary(run).set_index("model")
    for role in ("source", "target_before", "target_after"):
        assert summary.loc[role, "best accuracy"] == pytest.approx(table[table["model"] == role]["accuracy"].max(),
                                                                   abs=5e-4)
    writer = RunWriter(tmp_path / "bad", base_manifest("bad"))
    with pytest.raises(RunFormatError, match="column 'ci_low' is missing"):
        writer.save_table(LINEAR_PROBE_FILE, [{k: v for k, v in written["linear_probe"][0].items() if k != "ci_low"}])
