import json

import numpy as np
import pytest
import torch
from transfer_fixtures import addition_samples, make_pair

from pkt_core.runs.catalogue import list_runs
from pkt_core.runs.reader import RunReadError, open_run
from pkt_core.transfer.config import TransferConfig
from pkt_core.transfer.pipeline import apply_run_to_model, run_transfer
from pkt_core.transfer.stages import TransferCancelled


def _config(**changes):
    base = {"source": "tiny-source", "target": "tiny-target", "variant": "v1", "data_file": "synthetic.jsonl",
            "align_samples": 12, "probe_samples": 8, "steps_per_stage": 2, "batch_size": 4, "learning_rate": 1e-3}
    base.update(changes)
    return TransferConfig(**base)


def _samples():
    return addition_samples(12, seed=5), addition_samples(8, seed=6), "synthetic addition"


@pytest.mark.parametrize("variant", ["v1", "v2-relation", "acl-fisher"])
def test_complete_run_holds_every_artefact(tmp_path, variant):
    source, target = make_pair()
    untouched = {k: v.clone() for k, v in target.model.state_dict().items()}
    folder = run_transfer(_config(variant=variant), out_dir=tmp_path / "run", source=source, target=target,
                          samples=_samples())
    run = open_run(folder)
    manifest = run.manifest
    assert manifest.status == "complete" and manifest.variant == variant
    assert manifest.paper_version.startswith("v1" if variant == "v1" else "v2")
    assert manifest.data.alignment_ids == [s.sample_id for s in _samples()[0]]
    assert set(manifest.stages) >= {"bases", "attribution", "supervision", "stage-000", "stage-002", "probe_after"}
    assert all(record.wall_seconds >= 0 and record.peak_rss_mib > 0 for record in manifest.stages.values())
    assert manifest.source.fingerprint and manifest.environment["torch"]
    assert manifest.trainable_parameters > 0
    attribution = run.table("attribution.parquet")
    assert len(attribution) == 4 and all(row["abs"] >= abs(row["signed"]) - 1e-9 for row in attribution)
    mappings = run.layer_maps
    assert mappings.chosen == manifest.config["mapping"]
    assert set(mappings.mappings) == {"depth", "depth+critical", "interpolated", "attribution-monotone", "cka-monotone"}
    fidelity = run.table("fidelity.parquet")
    assert {(r["model"], r["bases"]) for r in fidelity} == {(m, b) for m in ("source", "target") for b in ("output", "input")}
    assert run.similarity("linear_cka", "target_source_before").values.shape == (3, 4)
    before_after = run.similarity("linear_cka", "target_before_after").values
    assert before_after.shape == (3, 3) and np.all(np.diag(before_after) > 0.5)
    losses = run.table("stage_losses.parquet")
    assert len(losses) == 3 * 2
    probes = run.tensors("probe_activations.safetensors")
    assert probes["target_after.layer.2"].shape == (8, 32) and probes["source.layer.3"].shape == (8, 64)
    # The saved delta turns the untouched target into the trained one.
    fresh = type(target.model)(target.model.config)
    fresh.load_state_dict(untouched)
    apply_run_to_model(fresh, run)
    for name, value in target.model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], value, atol=1e-6, rtol=1e-6)
    assert not (tmp_path / "run.partial").exists()


def test_cancelled_run_is_never_complete_and_resumes_to_the_same_result(tmp_path):
    reference_source, reference_target = make_pair()
    reference = run_transfer(_config(), out_dir=tmp_path / "reference", source=reference_source,
                             target=reference_target, samples=_samples())
    calls = {"steps": 0}

    def cancel_in_stage_one(stage, step, loss):
        if stage == "stage 1":
            calls["steps"] += 1

    source, target = make_pair()
    with pytest.raises(TransferCancelled):
        run_transfer(_config(), out_dir=tmp_path / "run", source=source, target=target, samples=_samples(),
                     on_progress=cancel_in_stage_one, should_cancel=lambda: calls["steps"] >= 1)
    assert not (tmp_path / "run").exists()
    partial = tmp_path / "run.partial"
    assert json.loads((partial / "manifest.json").read_text())["status"] == "cancelled"
    listing = {l.path.name: l for l in list_runs([tmp_path])}["run.partial"]
    assert not listing.complete
    with pytest.raises(RunReadError, match="not a complete run"):
        open_run(partial)
    # Resume with fresh models: finished stages are replayed from checkpoints, the rest trained.
    source, target = make_pair()
    resumed = run_transfer(_config(), out_dir=tmp_path / "run", resume=True, source=source, target=target,
                           samples=_samples())
    manifest = open_run(resumed).manifest
    assert manifest.resumes == 1
    delta = open_run(resumed).weight_delta()
    expected = open_run(reference).weight_delta()
    assert delta.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(delta[key], expected[key], atol=1e-6, rtol=1e-5)


def test_resume_with_another_config_is_refused(tmp_path):
    source, target = make_pair()
    with pytest.raises(TransferCancelled):
        run_transfer(_config(), out_dir=tmp_path / "run", source=source, target=target, samples=_samples(),
                     should_cancel=lambda: True)
    from pkt_core.runs.writer import RunStoreError

    with pytest.raises(RunStoreError, match="differs in: learning_rate"):
        run_transfer(_config(learning_rate=5e-4), out_dir=tmp_path / "run", resume=True, source=source,
                     target=target, samples=_samples())


def test_bad_configs_are_refused():
    from pkt_core.transfer.config import TransferConfigError

    with pytest.raises(TransferConfigError, match="unknown SemAlign variant"):
        _config(variant="v9")
    with pytest.raises(TransferConfigError, match="exactly one of a task"):
        _config(task="mmlu")
    with pytest.raises(TransferConfigError, match="unknown losses"):
        _config(losses={"mse": 1.0})


def test_finished_run_is_not_overwritten(tmp_path):
    from pkt_core.runs.writer import RunStoreError

    source, target = make_pair()
    run_transfer(_config(steps_per_stage=1, stages=[0]), out_dir=tmp_path / "r", source=source, target=target,
                 samples=_samples())
    with pytest.raises(RunStoreError, match="already holds a finished run"):
        run_transfer(_config(steps_per_stage=1, stages=[0]), out_dir=tmp_path / "r", source=source, target=target,
                     samples=_samples())


def test_run_with_evaluation_scores_source_and_target_before_and_after(tmp_path):
    from pkt_core.evaluation.records import read_items, read_summary

    source, target = make_pair()
    folder = run_transfer(_config(eval_tasks=["mmlu"], eval_limit=1, stages=[0], steps_per_stage=1), out_dir=tmp_path / "run",
                          source=source, target=target, samples=_samples())
    run = open_run(folder)
    evaluation = run.manifest.evaluation["mmlu"]
    assert all(evaluation.role(role) is not None for role in ("source", "target_before", "target_after"))
    for role in ("source", "target_before", "target_after"):
        items = read_items(folder / "evaluation" / "mmlu" / role)
        assert len(items) == 57  # one item per subject
        summary = read_summary(folder / "evaluation" / "mmlu" / role)
        assert summary["metrics"]["acc"]["mean"] == pytest.approx(items["score"].mean())
    # The trained target is scored afresh, never served from the untouched target's cache entries.
    after = read_summary(folder / "evaluation" / "mmlu" / "target_after")
    assert after["counts"]["from_cache"] == 0 and after["counts"]["scored"] == after["counts"]["rotations"] >= 57
    before_items = read_items(folder / "evaluation" / "mmlu" / "target_before").set_index("item_id")
    after_items = read_items(folder / "evaluation" / "mmlu" / "target_after").set_index("item_id")
    flips = int(((before_items["score"] == 1) & (after_items["score"] == 0)).sum())
    assert evaluation.comparison_target_before_after.right_to_wrong == flips
    assert run.comparison("mmlu").right_to_wrong == flips


def test_one_task_in_two_formulations_is_two_evaluations_each_under_its_own_key(tmp_path):
    """--eval arc_easy@4,arc_easy+circular@3 scores ARC's cloze default and CircularEval letters for all
    three models, each in its own folder and manifest key, and the Runs table reads the first one's gain
    by the metric its items are scored by."""
    from pkt_core.evaluation.records import read_items, read_summary
    from pkt_core.figures.runs_page import run_gains, runs_table

    source, target = make_pair()
    config = _config(stages=[0], steps_per_stage=1, similarity_measures=["linear_cka"],
                     eval_tasks=["arc_easy@4", "arc_easy+circular@3"])
    assert config.eval_tasks == ["arc_easy@4", "arc_easy:mc+circular@3"]  # stored canonical
    folder = run_transfer(config, out_dir=tmp_path / "run", source=source, target=target, samples=_samples())
    run = open_run(folder)
    manifest = run.manifest
    assert list(manifest.evaluation) == ["arc_easy", "arc_easy-mc-circular"]
    assert run.evaluated_tasks() == {key: ["source", "target_before", "target_after"] for key in manifest.evaluation}
    assert {f"eval-{key}-{role}" for key in manifest.evaluation for role in ("source", "target_before", "target_after")
            } <= set(manifest.stages)
    cloze, circular = manifest.evaluation["arc_easy"], manifest.evaluation["arc_easy-mc-circular"]
    assert cloze.spec == "arc_easy@4" and circular.spec == "arc_easy:mc+circular@3"
    for role in ("source", "target_before", "target_after"):
        assert cloze.role(role).formulation["name"] == "rc" and cloze.role(role).items == 4
        assert circular.role(role).formulation == {**circular.role(role).formulation, "name": "mc", "circular": True}
        assert circular.role(role).items == 3
        assert read_summary(folder / "evaluation" / "arc_easy-mc-circular" / role)["formulation"]["circular"] is True
    items = {(key, role): read_items(folder / "evaluation" / key / role) for key in manifest.evaluation
             for role in ("target_before", "target_after")}
    # Cloze items are scored by acc_norm: the gain shown is the items' mean score after minus before.
    row = runs_table(list_runs([folder.parent])).iloc[0]
    expected = items[("arc_easy", "target_after")]["score"].mean() - items[("arc_easy", "target_before")]["score"].mean()
    assert row["gain"] == pytest.approx(expected, abs=1e-12) and row["gain_of"] == "arc_easy acc_norm (cloze)"
    # CircularEval is read by acc_circular: right under every rotation, from each item's rotations.
    gains = {gain.task: gain for gain in run_gains(manifest)}
    assert gains["arc_easy-mc-circular"].metric == "acc_circular"

    def circular_mean(frame):
        details = [json.loads(d) if isinstance(d, str) else d for d in frame["details"]]
        return np.mean([float(all(p == t for p in d["circular_predictions"])) for d, t in zip(details, frame["target"])])

    assert gains["arc_easy-mc-circular"].gain == pytest.approx(
        circular_mean(items[("arc_easy-mc-circular", "target_after")])
        - circular_mean(items[("arc_easy-mc-circular", "target_before")]), abs=1e-12)
    for key in manifest.evaluation:
        before = items[(key, "target_before")].set_index("item_id")["score"]
        after = items[(key, "target_after")].set_index("item_id")["score"]
        assert run.comparison(key).right_to_wrong == int(((before == 1) & (after.loc[before.index] == 0)).sum())


@pytest.mark.parametrize("variant", ["v1", "acl-fisher"])  # without and with the source's answer log-probs
def test_a_second_run_reads_its_set_up_from_the_cache_and_gives_the_same_numbers(tmp_path, variant):
    """The first run shares the attribution's source pass with the supervision; the second finds bases,
    operators, probe states and attribution in the per-model cache and runs the source for the
    supervision itself. Every artefact is bit for bit the same."""
    runs = []
    for name in ("cold", "warm"):
        source, target = make_pair()
        runs.append(open_run(run_transfer(_config(variant=variant), out_dir=tmp_path / name, source=source,
                                          target=target, samples=_samples())))
    cold, warm = (run.manifest.setup_reuse for run in runs)
    assert cold["supervision source states"] == "attribution pass" and warm["supervision source states"] == "computed"
    assert all(cold[what] == "computed" for what in ("attribution", "probe states source", "probe states target",
                                                     "cross-model map", "fidelity source output operator"))
    assert all(how == "cache" for what, how in warm.items() if what != "supervision source states")
    assert runs[0].manifest.fidelity["scope"] == "sample" and runs[0].manifest.fidelity["rule"]
    for table in ("attribution.parquet", "fidelity.parquet", "stage_losses.parquet"):
        timeless = [[{k: v for k, v in row.items() if k != "seconds"} for row in run.table(table)] for run in runs]
        assert timeless[0] == timeless[1], table
    for file in ("probe_activations.safetensors", "cross_map.safetensors", "target_delta.safetensors"):
        first, second = runs[0].tensors(file), runs[1].tensors(file)
        assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first), file
    for measure in ("linear_cka", "rbf_cka"):
        for view in ("target_source_before", "target_source_after", "target_before_after"):
            assert np.array_equal(runs[0].similarity(measure, view).values, runs[1].similarity(measure, view).values)


def test_attribution_is_cached_per_source_precision_and_samples():
    import copy

    from pkt_core.models.loading import wrap_loaded_model
    from pkt_core.transfer.alignment_data import tokenise_samples
    from pkt_core.transfer.attribution import layer_gradient_x_activation
    from pkt_core.transfer.pipeline import ATTRIBUTION_BATCH_SIZE, cached_attribution

    source, _ = make_pair()
    samples = tokenise_samples(source.tokenizer, _samples()[0], 64)
    reference = layer_gradient_x_activation(source, samples, ATTRIBUTION_BATCH_SIZE)
    first, status = cached_attribution(source, samples, None)
    assert status == "computed" and np.array_equal(first.abs_scores, reference.abs_scores)
    again, status = cached_attribution(source, samples, None)
    assert status == "cache" and np.array_equal(again.signed_scores, reference.signed_scores)
    autocast = wrap_loaded_model(copy.deepcopy(source.model), source.tokenizer, "tiny-source", precision="bf16")
    assert cached_attribution(autocast, samples, None)[1] == "computed"
    assert cached_attribution(source, samples.select([0, 1, 2]), None)[1] == "computed"
    assert cached_attribution(make_pair(seed=3)[0], samples, None)[1] == "computed"
