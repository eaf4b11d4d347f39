"""New run: the job queue (one heavy job at a time, queue message, cancel, dead workers) with a real
worker process running real transfers of a tiny pair, and the page that submits and follows them."""

import json
import subprocess
import sys
import time

import pytest

pytest.importorskip("streamlit")

from app_fixtures import APP, addition_file, save_pair, texts  # noqa: E402

from pkt_core.jobs import queue as job_queue  # noqa: E402
from pkt_core.jobs import worker as job_worker
from pkt_core.runs.reader import open_run  # noqa: E402


def _wait(condition, timeout=240.0, every=0.25, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}; jobs: "
                         + json.dumps([(j.id, j.state, j.status.get("error")) for j in job_queue.list_jobs()]))


def _config(models, data, **changes):
    source, target = models
    config = {"source": str(source), "target": str(target), "variant": "v1", "data_file": str(data),
              "align_samples": 8, "probe_samples": 4, "steps_per_stage": 1, "batch_size": 4,
              "learning_rate": 1e-3, "max_tokens": 16}
    config.update(changes)
    return config


@pytest.fixture
def pair_and_data(tmp_path):
    return save_pair(tmp_path), addition_file(tmp_path / "addition.jsonl")


@pytest.fixture
def reap(monkeypatch):
    """Workers leave 1 s after their last job; every worker a test started is gone when it ends."""
    monkeypatch.setenv("PKT_JOBS_IDLE_EXIT", "1")
    started = []
    yield started
    _wait(lambda: not job_queue.worker_alive(), timeout=120, what="the worker to leave")
    for process in started:
        if process is not None:
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_bad_requests_are_refused_when_submitted(pair_and_data):
    from pkt_core.models.registry import UnknownModelError
    from pkt_core.transfer.config import TransferConfigError

    models, data = pair_and_data
    with pytest.raises(TransferConfigError, match="unknown SemAlign variant"):
        job_queue.submit("transfer", {"config": _config(models, data, variant="v9")})
    with pytest.raises(UnknownModelError, match="unknown model"):
        job_queue.submit("fetch", {"name": "no-such-model"})
    with pytest.raises(job_queue.JobError, match="unknown job kind"):
        job_queue.submit("train", {})
    assert job_queue.list_jobs() == []


def test_one_job_at_a_time_the_second_queues_and_a_cancelled_run_stays_resumable(pair_and_data, tmp_path, reap):
    models, data = pair_and_data
    long_run = job_queue.submit("transfer", {"config": _config(models, data, steps_per_stage=100_000),
                                        "out": str(tmp_path / "runs" / "long")})
    short_run = job_queue.submit("transfer", {"config": _config(models, data), "out": str(tmp_path / "runs" / "short")})
    reap.append(job_queue.ensure_worker())

    def training_first_stage():
        job = job_queue.get_job(long_run.id)
        stage = next((s for s in job.stages if s["name"] == "stage-000"), None)
        return stage is not None and stage["done"] >= 2 and job

    job = _wait(training_first_stage, what="the long run to train")
    assert job.state == "running" and [s["name"] for s in job.stages][:2] == ["load_source", "load_target"]
    pre_training = ["bases", "probe_before", "fidelity", "similarity_before", "attribution", "supervision"]
    assert [s["state"] for s in job.stages if s["name"] in pre_training] == ["done"] * 6
    assert isinstance(next(s for s in job.stages if s["name"] == "stage-000")["loss"], float)
    # The second job waits, and says for what.
    assert job_queue.get_job(short_run.id).state == "queued"
    assert "waiting for transfer v1 addition.jsonl" in job_queue.queue_message(job_queue.get_job(short_run.id))
    # A second worker finds the lock taken and leaves at once, running nothing.
    second = subprocess.run([sys.executable, "-m", "pkt_core.jobs", "worker", "--idle-exit", "0"],
                            capture_output=True, text=True, timeout=120)
    assert "ran 0 job(s)" in second.stdout, second.stderr
    assert job_queue.worker_alive()

    job_queue.cancel(long_run.id)
    cancelled = _wait(lambda: job_queue.get_job(long_run.id).state == "cancelled" and job_queue.get_job(long_run.id),
                      what="the cancel")
    assert "cancelled" in cancelled.status["error"].lower()
    partial = json.loads((tmp_path / "runs" / "long.partial" / "manifest.json").read_text())
    assert partial["status"] == "cancelled" and not (tmp_path / "runs" / "long").exists()

    done = _wait(lambda: job_queue.get_job(short_run.id).finished and job_queue.get_job(short_run.id), what="the short run")
    assert done.state == "done", done.status.get("error")
    run = open_run(done.status["result"])
    assert run.manifest.status == "complete" and run.manifest.config["data_file"] == str(data)
    assert all(stage["state"] == "done" and stage["done"] == stage["total"] for stage in done.stages)
    assert [s["name"] for s in done.stages][-1] == "probe_after"


def test_a_queued_job_cancelled_never_starts_and_a_dead_worker_is_noticed(pair_and_data):
    models, data = pair_and_data
    job = job_queue.submit("transfer", {"config": _config(models, data)})
    assert job_queue.cancel(job.id).state == "cancelled"
    assert job_worker.run_job(job_queue.get_job(job.id)).state == "cancelled"  # the worker skips it
    orphan = job_queue.submit("transfer", {"config": _config(models, data)})
    status = {**orphan.status, "state": "running", "pid": 2 ** 22 + 12345}  # no such process
    (orphan.folder / "status.json").write_text(json.dumps(status))
    read = job_queue.get_job(orphan.id)
    assert read.state == "failed" and "ended without finishing" in read.status["error"]
    with pytest.raises(job_queue.JobError, match="no job"):
        job_queue.get_job("missing")


def test_new_run_page_submits_to_the_worker_follows_progress_and_the_run_appears(pair_and_data, isolated_pkt_home,
                                                                                 reap):
    from streamlit.testing.v1 import AppTest

    (source, target), data = pair_and_data
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("views/new_run.py").run()
    assert not at.exception
    # The registered pair is not cached here: the page says so and offers the fetch.
    assert "Not in the model cache" in at.warning[0].value
    assert any(button.key == "new_fetch" for button in at.button)

    at.radio(key="new_who").set_value("your own models").run()
    at.text_input(key="new_source").set_value(str(source))
    at.text_input(key="new_target").set_value(str(target))
    at.radio(key="new_data_kind").set_value("data file").run()
    at.text_input(key="new_data_file").set_value(str(data))
    at.number_input(key="new_align").set_value(8)
    at.number_input(key="new_probes").set_value(4)
    at.number_input(key="new_steps").set_value(1)
    at.number_input(key="new_max_tokens").set_value(16)
    at.text_input(key="new_stages").set_value("0-1")
    at.multiselect(key="new_eval_tasks").set_value([]).run()  # this test follows training, not scoring
    assert "No evaluation" in texts(at)
    at.button(key="new_submit").click().run()
    assert not at.exception
    assert "Submitted" in at.success[0].value
    [job] = job_queue.list_jobs()
    assert job.params["config"]["eval_tasks"] == [] and job.params["config"]["eval_limit"] is None
    assert job.params["config"]["stages"] == [0, 1] and job.params["config"]["steps_per_stage"] == 1
    reap.append(job_queue.ensure_worker())  # the page started one already: this finds it working
    done = _wait(lambda: job_queue.get_job(job.id).finished and job_queue.get_job(job.id), what="the page's run")
    assert done.state == "done", done.status.get("error")

    at.run()
    assert not at.exception
    assert f"Run written to `{done.status['result']}`" in texts(at)
    progress = [bar.proto.text for bar in at.get("progress")]
    assert any("frontier stage: target layer 1: done" in text for text in progress)
    assert not any("target layer 2" in text for text in progress)  # stages 0-1 only
    at.button(key=f"explore-{job.id}").click().run()
    assert at.session_state["current_run"] == done.status["result"]
    at.switch_page("views/runs.py").run()
    table = next(frame.value for frame in at.dataframe if "gains" in frame.value.columns)
    assert done.status["result"] in list(table["folder"])


def test_peer_methods_are_offered_with_their_own_budget_and_submitted(pair_and_data, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from pkt_core.transfer.config import TransferConfig

    monkeypatch.setattr(job_queue, "ensure_worker", lambda *a, **k: None)  # the submission is what is tested

    (source, target), data = pair_and_data
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("views/new_run.py").run()
    at.radio(key="new_who").set_value("your own models").run()
    at.text_input(key="new_source").set_value(str(source))
    at.text_input(key="new_target").set_value(str(target))
    at.radio(key="new_data_kind").set_value("data file").run()
    at.text_input(key="new_data_file").set_value(str(data))
    at.selectbox(key="new_method").set_value("laten").run()
    assert not at.exception
    keys = {widget.key for widget in at.number_input}
    assert "new_epochs_laten" in keys and "new_steps" not in keys  # LaTen trains by epochs, not frontier stages
    assert at.number_input(key="new_batch_laten").value == 16  # the paper's examples per step
    assert not [box for box in at.selectbox if box.key == "new_variant"]
    at.number_input(key="new_epochs_laten").set_value(2)
    at.multiselect(key="new_eval_tasks").set_value([]).run()
    at.button(key="new_submit").click().run()
    assert not at.exception and "Submitted" in at.success[0].value
    [job] = job_queue.list_jobs()
    assert job.params["config"]["method"] == "laten" and job.params["config"]["epochs"] == 2
    assert job.params["config"]["dtype"] == "auto"  # the precision policy, resolved (and recorded) by the run
    plan = [name for name, _, _ in job_worker.transfer_plan(TransferConfig(**job.params["config"]), 3)]
    assert plan[-2:] == ["hypernetworks", "probe_after"] and "location" in plan and "stage-000" not in plan


def test_the_page_lists_the_models_the_worker_holds_and_unloads_them(pair_and_data, monkeypatch):
    from streamlit.testing.v1 import AppTest

    models, data = pair_and_data
    job_queue.submit("transfer", {"config": _config(models, data)})
    record = {"pid": 1, "models": [{"name": "qwen-coder-1.5b", "dtype": "fp32", "device": "cpu",
                                    "weight_mib": 6790.0, "reference": "qwen-coder-1.5b", "uses": 2}]}
    (job_queue.jobs_dir() / job_queue.WORKER_RECORD).write_text(json.dumps(record))
    monkeypatch.setattr(job_queue, "worker_alive", lambda: True)
    monkeypatch.setattr(job_queue, "ensure_worker", lambda *a, **k: None)
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("views/new_run.py").run()
    assert not at.exception
    assert any("Loaded in the worker" in c.value and "qwen-coder-1.5b" in c.value for c in at.caption)
    at.button(key="unload_models").click().run()
    assert (job_queue.jobs_dir() / job_queue.UNLOAD).exists()


def test_new_run_asks_for_an_evaluation_and_estimates_its_cost_from_measured_rates(pair_and_data, monkeypatch,
                                                                                    isolated_pkt_home):
    """The evaluation the run will do (tasks, items) goes into the job; the page's estimate is the
    items times the seconds per item an earlier run of the same models measured."""
    from streamlit.testing.v1 import AppTest

    from pkt_core.runs.schema import StageCost

    monkeypatch.setattr(job_queue, "ensure_worker", lambda *a, **k: None)
    (source, target), data = pair_and_data
    # An earlier run of this pair that scored MMLU: 57 items per role at 2, 1 and 1 s per item.
    from run_builders import write_full_run

    earlier, _ = write_full_run(isolated_pkt_home / "runs" / "earlier")
    from app_fixtures import edit_manifest

    def measured(manifest) -> None:
        manifest.source.name, manifest.target.name = str(source), str(target)
        evaluation = manifest.evaluation["mmlu"]
        for role, seconds in (("source", 114.0), ("target_before", 57.0), ("target_after", 57.0)):
            manifest.stages[f"eval-mmlu-{role}"] = StageCost(wall_seconds=seconds)
            setattr(evaluation, role, getattr(evaluation, role).model_copy(update={"items": 57}))

    edit_manifest(earlier, measured)
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("views/new_run.py").run()
    at.radio(key="new_who").set_value("your own models").run()
    at.text_input(key="new_source").set_value(str(source))
    at.text_input(key="new_target").set_value(str(target)).run()
    assert at.multiselect(key="new_eval_tasks").value == ["mmlu"]
    at.number_input(key="new_eval_limit").set_value(2).run()  # 2 per subject: 114 items
    # 114 items x (2 + 1 + 1) s = 456 s.
    assert "**mmlu**: 114 items, about 7 min 36 s for the three models" in texts(at)
    at.button(key="new_submit").click().run()
    [job] = job_queue.list_jobs()
    assert job.params["config"]["eval_tasks"] == ["mmlu"] and job.params["config"]["eval_limit"] == 2


def test_new_run_asks_for_a_choice_task_in_several_formulations(pair_and_data, monkeypatch, isolated_pkt_home):
    """Letters and cloze of MMLU (and HumanEval once) go into the job as specs, each with its own estimate
    line; the worker plans one evaluation stage per spec and role."""
    from streamlit.testing.v1 import AppTest

    from pkt_core.transfer.config import TransferConfig

    monkeypatch.setattr(job_queue, "ensure_worker", lambda *a, **k: None)
    (source, target), _ = pair_and_data
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("views/new_run.py").run()
    at.radio(key="new_who").set_value("your own models").run()
    at.text_input(key="new_source").set_value(str(source))
    at.text_input(key="new_target").set_value(str(target)).run()
    at.multiselect(key="new_eval_tasks").set_value(["mmlu", "humaneval"]).run()
    at.number_input(key="new_eval_limit").set_value(1).run()
    at.multiselect(key="new_eval_formulations").set_value(["mc", "rc"]).run()
    assert not at.exception
    shown = texts(at)
    for spec, items in (("mmlu", 57), ("mmlu:rc", 57), ("humaneval", 1)):
        assert f"**{spec}**: {items} items, no estimate (no earlier run measured" in shown
    at.button(key="new_submit").click().run()
    [job] = job_queue.list_jobs()
    assert job.params["config"]["eval_tasks"] == ["mmlu", "mmlu:rc", "humaneval"]
    plan = [name for name, _, _ in job_worker.transfer_plan(TransferConfig(**job.params["config"]), 3)]
    evaluations = [name for name in plan if name.startswith("eval-")]
    assert evaluations == ["eval-mmlu-source", "eval-mmlu-target_before", "eval-mmlu-rc-source",
                           "eval-mmlu-rc-target_before", "eval-humaneval-source", "eval-humaneval-target_before",
                           "eval-mmlu-target_after", "eval-mmlu-rc-target_after", "eval-humaneval-target_after"]
