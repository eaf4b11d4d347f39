"""The worker's model pool: each model loaded once, changed models evicted, explicit unload, and the
worker really reusing the source across two transfer jobs while re-loading the trained target."""

import json

import pytest
import torch

from pkt_core.jobs import queue as job_queue
from pkt_core.jobs import worker as job_worker
from pkt_core.models.loading import load_model
from pkt_core.models.pool import ModelPool, pool_key, weights_state
from pkt_core.models.synthetic import (
    byte_level_tokenizer,
    random_model_from_config,
    tiny_config,
)


def _save(folder, layers, width, seed):
    model = random_model_from_config(tiny_config("qwen2", num_layers=layers, width=width), seed=seed)
    model.save_pretrained(folder)
    byte_level_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def pair(tmp_path):
    return _save(tmp_path / "source", 3, 64, 1), _save(tmp_path / "target", 2, 32, 2)


class CountingLoader:
    def __init__(self):
        self.calls = []

    def __call__(self, reference, dtype="fp32", device="cpu"):
        self.calls.append(str(reference))
        return load_model(reference, dtype=dtype, device=device)


def test_a_model_is_loaded_once_and_the_same_object_is_returned(pair):
    source, _ = pair
    loader = CountingLoader()
    pool = ModelPool(loader)
    first = pool.get(str(source))
    again = pool.get(str(source) + "/")  # the same folder spelled differently is the same model
    assert first is again and loader.calls == [str(source)] and len(pool) == 1
    assert pool.held()[0]["uses"] == 2 and pool.held()[0]["weight_mib"] > 0
    # Another dtype is another model.
    pool.get(str(source), dtype="bf16")
    assert len(loader.calls) == 2


def test_the_version_state_sees_every_kind_of_in_place_change(pair):
    model = load_model(str(pair[1])).model
    before = weights_state(model)
    assert weights_state(model) == before
    parameter = next(model.parameters())
    with torch.no_grad():
        parameter.add_(0.0)  # even a write of the same values counts: we cannot know it was a no-op
    assert weights_state(model) != before
    before = weights_state(model)
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    parameter.grad = torch.ones_like(parameter)
    optimizer.step()
    assert weights_state(model) != before
    before = weights_state(model)
    model.lm_head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=False)
    assert weights_state(model) != before


def test_after_a_job_changed_models_are_evicted_and_untouched_ones_kept(pair):
    source, target = pair
    loader = CountingLoader()
    pool = ModelPool(loader)
    source_model, target_model = pool.get_pair((str(source), "fp32", "cpu"), (str(target), "fp32", "cpu"))
    with torch.no_grad():
        next(target_model.model.parameters()).mul_(2.0)
    assert pool.after_job() == [target_model.name]
    assert pool_key(str(source), "fp32", "cpu") in pool and pool_key(str(target), "fp32", "cpu") not in pool
    # The next job gets the same source object and a freshly loaded, untouched target.
    source_again, target_again = pool.get_pair((str(source), "fp32", "cpu"), (str(target), "fp32", "cpu"))
    assert source_again is source_model and target_again is not target_model
    fresh = load_model(str(target)).model.state_dict()
    assert all(torch.equal(fresh[k], v) for k, v in target_again.model.state_dict().items())
    assert loader.calls == [str(source), str(target), str(target)]
    assert sorted(pool.unload()) == sorted([source_model.name, target_again.name]) and len(pool) == 0


def test_a_job_on_another_pair_unloads_the_models_it_does_not_need(pair, tmp_path):
    source, target = pair
    other = _save(tmp_path / "other", 2, 32, 3)
    pool = ModelPool(CountingLoader())
    pool.get_pair((str(source), "fp32", "cpu"), (str(target), "fp32", "cpu"))
    pool.get_pair((str(other), "fp32", "cpu"), (str(target), "fp32", "cpu"))
    held = {model["reference"] for model in pool.held()}
    assert held == {str(other), str(target)}


def test_the_same_model_on_both_sides_gives_the_target_its_own_copy(pair):
    source, _ = pair
    loader = CountingLoader()
    pool = ModelPool(loader)
    as_source, as_target = pool.get_pair((str(source), "fp32", "cpu"), (str(source), "fp32", "cpu"))
    assert as_source is not as_target and len(pool) == 1 and len(loader.calls) == 2


def _config(source, target, data, **changes):
    config = {"source": str(source), "target": str(target), "variant": "v1", "data_file": str(data),
              "align_samples": 6, "probe_samples": 3, "steps_per_stage": 1, "batch_size": 3,
              "learning_rate": 1e-3, "max_tokens": 16}
    config.update(changes)
    return config


def _data(path):
    lines = [json.dumps({"id": f"s{i}", "prompt": f"{i}+1=", "answer": str((i + 1) % 10)}) for i in range(12)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_worker_keeps_the_source_loaded_across_jobs_and_unloads_on_request(pair, tmp_path):
    source, target = pair
    data = _data(tmp_path / "data.jsonl")
    first = job_queue.submit("transfer", {"config": _config(source, target, data), "out": str(tmp_path / "runs" / "a")})
    second = job_queue.submit("transfer", {"config": _config(source, target, data, method="kd", variant=""),
                                      "out": str(tmp_path / "runs" / "b")})
    loader = CountingLoader()
    pool = ModelPool(loader)
    assert job_worker.run_worker(idle_exit=0.0, poll_seconds=0.01, pool=pool) == 2
    assert [job_queue.get_job(j.id).state for j in (first, second)] == ["done", "done"]
    # Source loaded once; the target again for the second job, because the first one trained it.
    assert loader.calls == [str(source), str(target), str(target)]
    log = job_queue.get_job(second.id).log_tail(50)
    assert f"already loaded in the worker: {source}" in log
    # The KD job's plan is KD's stages, not SemAlign's, all finished.
    stages = [s["name"] for s in job_queue.get_job(second.id).stages]
    assert "source_logits" in stages and "bases" not in stages and "attribution" not in stages
    assert all(s["state"] == "done" for s in job_queue.get_job(second.id).stages)
    # An exiting worker frees everything and says so.
    record = json.loads((job_queue.jobs_dir() / job_queue.WORKER_RECORD).read_text())
    assert record["models"] == [] and record["ended_at"] and len(pool) == 0


def test_an_unload_request_empties_the_pool_between_jobs(pair, monkeypatch):
    source, _ = pair
    pool = ModelPool(CountingLoader())
    pool.get(str(source))
    job_queue.jobs_dir().mkdir(parents=True, exist_ok=True)
    assert not job_queue.request_unload()  # no worker: nothing loaded, nothing to ask
    with monkeypatch.context() as patch:
        patch.setattr(job_queue, "worker_alive", lambda: True)
        assert job_queue.request_unload()
    assert (job_queue.jobs_dir() / job_queue.UNLOAD).exists()
    job_worker.run_worker(idle_exit=0.0, poll_seconds=0.01, pool=pool)
    record = json.loads((job_queue.jobs_dir() / job_queue.WORKER_RECORD).read_text())
    assert record["last_unload"]["models"] == ["source"] and not (job_queue.jobs_dir() / job_queue.UNLOAD).exists()
    assert job_queue.held_models() == []  # no worker now
