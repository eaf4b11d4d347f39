"""Every peer method writes a complete run of the shared format, selectable from Python and the CLI."""

import json

import pytest
import torch
from peer_pairs import addition_samples, fresh_copy, run_samples, state_copy, tiny_pair

from pkt_core.cli.main import main
from pkt_core.runs.reader import open_run
from pkt_core.transfer.pipeline import apply_run_to_model
from pkt_core.transfer.config import TransferConfig, TransferConfigError
from pkt_core.transfer.pipeline import run_transfer
from pkt_core.transfer.stages import TransferCancelled

PEERS = ("seeking", "laten", "kd", "finetune")
PAPER_VERSIONS = {"seeking": "Zhong et al. ICLR 2024", "laten": "Tan et al. ACL 2025", "kd": "control",
                  "finetune": "control"}
METHOD_TABLES = {"seeking": {"seeking_layers.parquet", "seeking_extraction.parquet"},
                 "laten": {"laten_locations.parquet", "laten_neurons.parquet"}, "kd": set(), "finetune": set()}


def _config(method, **changes):
    base = dict(source="tiny-source", target="tiny-target", method=method, data_file="synthetic.jsonl",
                align_samples=12, probe_samples=8, batch_size=4)
    base.update({"epochs": 1} if method in ("seeking", "laten") else {"steps_per_stage": 1})
    base.update(changes)
    return TransferConfig(**base)


@pytest.mark.parametrize("method", PEERS)
def test_complete_run_loads_back_and_its_delta_rebuilds_the_target_exactly(tmp_path, method):
    source, target = tiny_pair()
    untouched = state_copy(target)
    folder = run_transfer(_config(method), out_dir=tmp_path / "run", source=source, target=target, samples=run_samples())
    run = open_run(folder)
    manifest = run.manifest
    assert manifest.status == "complete" and manifest.method == method
    assert manifest.paper_version == PAPER_VERSIONS[method]
    assert manifest.config["method"] == method and manifest.method_details
    assert manifest.data.alignment_ids == [s.sample_id for s in run_samples()[0]]
    assert manifest.trainable_parameters > 0
    assert manifest.cost.trainable_parameters == manifest.trainable_parameters
    assert manifest.cost.peak_rss_mib > 0 and manifest.cost.wall_seconds >= 0
    assert all(r.wall_seconds >= 0 and r.peak_rss_mib > 0 for r in manifest.stages.values())
    assert {"probe_before", "similarity_before", "probe_after"} <= set(manifest.stages)
    assert set(manifest.losses) == set(manifest.config["losses"])
    # The shared artefacts, plus the method's own tables; no SemAlign-only files.
    from pkt_core.transfer.config import DEFAULT_SIMILARITY_MEASURES

    shared = {f"similarity_{measure}_{view}.json" for measure in DEFAULT_SIMILARITY_MEASURES
              for view in ("target_source_before", "target_source_after", "target_before_after")} | {
              "probe_activations.safetensors", "stage_losses.parquet", "target_delta.safetensors"}
    assert set(manifest.artefacts) == shared | METHOD_TABLES[method]
    assert not run.has("mappings.json") and not run.has("fidelity.parquet")
    assert run.similarity("linear_cka", "target_source_before").values.shape == (3, 4)
    assert run.similarity("linear_cka", "target_source_after").values.shape == (3, 4)
    assert run.similarity("linear_cka", "target_before_after").values.shape == (3, 3)
    assert run.layer_maps is None
    assert run.tensors("probe_activations.safetensors")["target_after.layer.2"].shape == (8, 32)
    losses = run.table("stage_losses.parquet")
    assert losses and {"stage_layer", "step", "loss", "seconds"} | {f"loss_{n}" for n in manifest.losses} == set(losses[0])
    if method in ("seeking", "laten"):
        assert {r["stage_layer"] for r in losses} == {-1} and len(losses) == 3  # 12 samples / 4 per step
    else:
        assert [r["stage_layer"] for r in losses] == [0, 1, 2]
    # The saved delta turns the untouched target into the trained one, bit for bit.
    rebuilt = fresh_copy(target, untouched)
    apply_run_to_model(rebuilt, run)
    trained = target.model.state_dict()
    assert any(not torch.equal(untouched[n], trained[n]) for n in untouched)
    for name, value in rebuilt.state_dict().items():
        assert torch.equal(value, trained[name]), name


LOSS_BUDGETS = {
    "seeking": dict(batch_size=12, epochs=8, learning_rate=1e-3, seeking_lora_dropout=0.0),
    "laten": dict(batch_size=12, epochs=8, learning_rate=3e-3),
    "kd": dict(stages=[1], steps_per_stage=8, learning_rate=1e-3),
    "finetune": dict(stages=[1], steps_per_stage=8, learning_rate=1e-3),
}


@pytest.mark.parametrize("method", PEERS)
def test_the_training_loss_decreases(tmp_path, method):
    source, target = tiny_pair()
    run = open_run(run_transfer(_config(method, **LOSS_BUDGETS[method]), out_dir=tmp_path / "run", source=source,
                                target=target, samples=run_samples()))
    losses = [row["loss"] for row in run.table("stage_losses.parquet")]
    assert len(losses) == 8
    assert losses[-1] < losses[0], losses
    if method == "laten":  # the LM term carries the decrease, not only the shrinking penalty
        rows = run.table("stage_losses.parquet")
        assert rows[-1]["loss_answer_ce"] < rows[0]["loss_answer_ce"]


@pytest.mark.parametrize("method,label", [("seeking", "seeking"), ("laten", "laten")])
def test_a_cancelled_run_resumes_to_the_uninterrupted_result(tmp_path, method, label):
    config = _config(method, epochs=2)
    source, target = tiny_pair()
    reference = open_run(run_transfer(config, out_dir=tmp_path / "reference", source=source, target=target,
                                      samples=run_samples()))
    steps = {"count": 0}

    def count(stage, step, loss):
        if stage == label:
            steps["count"] += 1

    source, target = tiny_pair()
    with pytest.raises(TransferCancelled):
        run_transfer(config, out_dir=tmp_path / "run", source=source, target=target, samples=run_samples(),
                     on_progress=count, should_cancel=lambda: steps["count"] >= 2)
    partial = json.loads((tmp_path / "run.partial" / "manifest.json").read_text())
    assert partial["status"] == "cancelled"
    source, target = tiny_pair()
    resumed = open_run(run_transfer(config, out_dir=tmp_path / "run", resume=True, source=source, target=target,
                                    samples=run_samples()))
    assert resumed.manifest.resumes == 1
    expected, delta = reference.weight_delta(), resumed.weight_delta()
    assert delta.keys() == expected.keys()
    assert all(torch.equal(delta[k], expected[k]) for k in expected)


def test_peer_configs_refuse_what_they_do_not_use():
    with pytest.raises(TransferConfigError, match="unknown transfer method"):
        _config("lora-distil")
    with pytest.raises(TransferConfigError, match="no loss layer_cosine"):
        _config("kd", losses={"layer_cosine": 1.0})
    with pytest.raises(TransferConfigError, match="layer map"):
        _config("laten", mapping="depth")
    with pytest.raises(TransferConfigError, match="not epochs"):
        _config("finetune", epochs=2)
    with pytest.raises(TransferConfigError, match="has no variant"):
        _config("seeking", variant="v1")
    assert _config("laten", losses={"delta_penalty": 10.0}).losses == {"answer_ce": 1.0, "delta_penalty": 10.0}
    assert _config("seeking", learning_rate=None).learning_rate == 3e-4


@pytest.mark.parametrize("method", PEERS)
def test_cli_selects_the_method(tmp_path, tiny_model_folder, method):
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"id": s.sample_id, "prompt": s.prompt, "answer": s.answer})
                              for s in addition_samples(9, seed=3)))
    budget = ["--epochs", "1"] if method in ("seeking", "laten") else ["--steps", "1", "--stages", "0"]
    out = tmp_path / "run"
    code = main(["transfer", "--source", str(tiny_model_folder), "--target", str(tiny_model_folder), "--data", str(data),
                 "--method", method, "--out", str(out), "--align-samples", "6", "--probe-samples", "3",
                 "--batch-size", "3", *budget])
    assert code == 0
    manifest = open_run(out).manifest
    assert manifest.method == method and manifest.config["align_samples"] == 6
    assert manifest.variant == ("paper" if method in ("seeking", "laten") else "control")
