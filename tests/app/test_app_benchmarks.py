"""Benchmarks page: per-role metrics with intervals from each summary, per subject, and the item flips."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("streamlit")

from app_fixtures import chart, decode, edit_manifest, remove_artefacts, texts  # noqa: E402
from run_builders import evaluation_folder

ROLES = ("source", "target_before", "target_after")


def _summary(run, role):
    return json.loads((evaluation_folder(run, "mmlu", role) / "summary.json").read_text())


def _scores(run, role):
    table = pq.read_table(evaluation_folder(run, "mmlu", role) / "items.parquet").to_pydict()
    return dict(zip(table["item_id"], table["score"]))


def test_metrics_per_role_with_intervals(app_test, app_run):
    at = app_test("views/benchmarks.py")
    assert at.selectbox(key="benchmarks_task").value == "mmlu"
    assert at.selectbox(key="benchmarks_metric").value == "acc"
    bars = chart(at, "benchmarks-bars")["data"]
    drawn = {trace["name"]: (decode(trace["y"])[0], trace["error_y"]) for trace in bars}
    for role in ROLES:
        summary = _summary(app_run, role)["metrics"]["acc"]
        scores = _scores(app_run, role)
        assert summary["mean"] == pytest.approx(np.mean(list(scores.values())))  # the summary is the items' mean
        mean, error = drawn[role.replace("_", " ")]
        assert mean == pytest.approx(summary["mean"])
        assert decode(error["array"])[0] == pytest.approx(summary["high"] - summary["mean"])
        assert decode(error["arrayminus"])[0] == pytest.approx(summary["mean"] - summary["low"])
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["target after"] == f"{_summary(app_run, 'target_after')['metrics']['acc']['mean']:.3f}"
    at.selectbox(key="benchmarks_metric").set_value("acc_norm").run()
    bars = chart(at, "benchmarks-bars")["data"]
    for trace in bars:
        role = trace["name"].replace(" ", "_")
        assert decode(trace["y"])[0] == pytest.approx(_summary(app_run, role)["metrics"]["acc_norm"]["mean"])


def test_per_subject_breakdown(app_test, app_run):
    at = app_test("views/benchmarks.py")
    subjects = at.multiselect(key="benchmarks_subjects").value
    assert len(subjects) == 12
    figure = chart(at, "benchmarks-subjects")
    for trace in figure["data"]:
        role = trace["name"].replace(" ", "_")
        per_subject = {row["subject"]: row["acc"] for row in _summary(app_run, role)["per_subject"]}
        assert list(trace["x"]) == subjects
        np.testing.assert_allclose(decode(trace["y"]), [per_subject[s] for s in subjects])
    table = next(frame.value for frame in at.dataframe if "subject" in frame.value.columns
                 and "after - before" in frame.value.columns)
    assert list(table.columns) == ["subject", "source", "target_before", "target_after", "after - before"]
    at.multiselect(key="benchmarks_subjects").set_value(subjects[:2]).run()
    assert all(list(trace["x"]) == subjects[:2] for trace in chart(at, "benchmarks-subjects")["data"])


def test_paired_items_show_which_items_flipped(app_test, app_run):
    at = app_test("views/benchmarks.py")
    before, after = _scores(app_run, "target_before"), _scores(app_run, "target_after")
    gained = sorted(i for i in before if before[i] == 0 and after[i] == 1)
    lost = sorted(i for i in before if before[i] == 1 and after[i] == 0)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["gained (wrong -> right)"] == str(len(gained))
    assert metrics["lost (right -> wrong)"] == str(len(lost))
    for flip, expected in (("gained", gained), ("lost", lost)):
        at.radio(key="benchmarks_flip").set_value(flip).run()
        table = next(frame.value for frame in at.dataframe if "flip" in frame.value.columns)
        assert sorted(table["item_id"]) == expected
        assert set(table.columns) >= {"gold", "prediction_source", "prediction_target_before",
                                      "prediction_target_after", "outcome_target_after"}
    at.radio(key="benchmarks_flip").set_value("all").run()
    item = at.selectbox(key="benchmarks_item").value
    items = pq.read_table(evaluation_folder(app_run, "mmlu", "target_after") / "items.parquet").to_pandas()
    row = items[items["item_id"] == item].iloc[0]
    shown = texts(at)
    assert f"**Gold:** `{row['target']}`" in shown
    assert any(code.value == row["prompt"] for code in at.code)


def test_run_without_evaluation_says_so(app_test, app_run):
    remove_artefacts(app_run, "evaluation")
    edit_manifest(app_run, lambda manifest: setattr(manifest, "evaluation", {}))
    at = app_test("views/benchmarks.py")
    assert "holds no evaluation" in at.info[0].value


def test_manifest_only_evaluation_is_shown_without_item_views(app_test, app_run):
    remove_artefacts(app_run, "evaluation")
    at = app_test("views/benchmarks.py")
    manifest = json.loads((app_run / "manifest.json").read_text())
    bars = chart(at, "benchmarks-bars")["data"]
    for trace in bars:
        role = trace["name"].replace(" ", "_")
        assert decode(trace["y"])[0] == pytest.approx(manifest["evaluation"]["mmlu"][role]["metrics"]["acc"]["mean"])
    assert "per-subject and per-item views need the evaluation folders" in texts(at)


def test_continuous_measures_are_the_paired_means_of_the_stored_items(app_test, app_run):
    """after - before and the gap closed of the gold answer's log-probability, recomputed here from
    the three items.parquet files with plain numpy, against what the page shows."""
    import pyarrow.parquet as pq

    from pkt_core.figures.benchmarks_page import continuous_measures
    from pkt_core.runs.reader import open_run

    items = {role: pq.read_table(evaluation_folder(app_run, "mmlu", role) / "items.parquet").to_pandas()
             .set_index("item_id")["gold_logprob"].astype(float) for role in ("source", "target_before", "target_after")}
    common = items["target_before"].index
    b, a, s = (items[r].loc[common].to_numpy() for r in ("target_before", "target_after", "source"))
    table = continuous_measures(open_run(app_run), "mmlu").set_index("measure")
    row = table.loc["gold answer log-probability"]
    assert row["after - before"] == pytest.approx((a - b).mean(), rel=1e-9)
    assert row["source - before"] == pytest.approx((s - b).mean(), rel=1e-9)
    assert row["gap closed"] == pytest.approx((a.mean() - b.mean()) / (s.mean() - b.mean()), rel=1e-9)
    at = app_test("views/benchmarks.py")
    assert not at.exception
    shown = next(frame.value for frame in at.dataframe if "after - before" in frame.value.columns)
    assert shown.set_index("measure").loc["gold answer log-probability", "after - before"] == \
        pytest.approx(row["after - before"])


# -- a run holding one task in two formulations -------------------------------------------------


def _open(run, page="views/benchmarks.py"):
    from app_fixtures import APP
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state["current_run"] = str(run)
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def _items(run, key, role):
    return pq.read_table(evaluation_folder(run, key, role) / "items.parquet").to_pandas()


def test_a_formulation_picker_offers_each_evaluation_of_the_task_first_one_first(formulations_run):
    at = _open(formulations_run)
    picker = at.radio(key="benchmarks_formulation")
    assert picker.options == ["letters", "cloze"] and picker.value == "mmlu"  # the first the run asked for
    assert at.selectbox(key="benchmarks_metric").value == "acc"
    assert at.selectbox(key="benchmarks_task").options == ["mmlu"]  # one task, not one entry per formulation
    for trace in chart(at, "benchmarks-bars")["data"]:
        role = trace["name"].replace(" ", "_")
        assert decode(trace["y"])[0] == pytest.approx(_items(formulations_run, "mmlu", role)["score"].mean())


def test_the_cloze_evaluation_shows_its_own_scores_letters_measures_and_items(formulations_run):
    at = _open(formulations_run)
    at.radio(key="benchmarks_formulation").set_value("mmlu-rc").run()
    assert not at.exception, at.exception
    # Cloze is read by acc_norm (argmax per character): the items' score; the bars are those means.
    assert at.selectbox(key="benchmarks_metric").value == "acc_norm"
    items = {role: _items(formulations_run, "mmlu-rc", role) for role in ROLES}
    assert all(len(frame) == 12 for frame in items.values())
    for trace in chart(at, "benchmarks-bars")["data"]:
        role = trace["name"].replace(" ", "_")
        details = [json.loads(d) for d in items[role]["details"]]
        assert decode(trace["y"])[0] == pytest.approx(np.mean([d["acc_norm"] for d in details]))
        assert decode(trace["y"])[0] == pytest.approx(items[role]["score"].mean())
    # The answer-format panel counts the cloze predictions of the three models next to the gold answers.
    letters = chart(at, "benchmarks-letters")["data"]
    drawn = {trace["name"]: dict(zip(trace["x"], decode(trace["y"]))) for trace in letters}
    for role in ROLES:
        counted = items[role]["prediction"].value_counts()
        assert {k: v for k, v in drawn[role.replace("_", " ")].items() if v} == counted.to_dict()
    gold = items["target_before"]["target"].value_counts().to_dict()
    assert {k: v for k, v in drawn["gold answers"].items() if v} == gold
    # Continuous measures of this evaluation, recomputed from its items with plain numpy.
    lp = {role: items[role].set_index("item_id")["gold_logprob"].astype(float) for role in ROLES}
    b, a, s = (lp[r].loc[lp["target_before"].index].to_numpy() for r in ("target_before", "target_after", "source"))
    shown = next(frame.value for frame in at.dataframe if "after - before" in frame.value.columns)
    row = shown.set_index("measure").loc["gold answer log-probability"]
    assert row["after - before"] == pytest.approx((a - b).mean(), rel=1e-9)
    assert row["gap closed"] == pytest.approx((a.mean() - b.mean()) / (s.mean() - b.mean()), rel=1e-9)
    # Items sorted by the gold answer's change, and the paired flips, of the cloze items.
    moved = next(frame.value for frame in at.dataframe if "change" in frame.value.columns)
    change = (lp["target_after"] - lp["target_before"]).sort_values(ascending=False)
    np.testing.assert_allclose(moved["change"].to_numpy(), change.to_numpy(), rtol=1e-12)
    before = items["target_before"].set_index("item_id")["score"]
    after = items["target_after"].set_index("item_id")["score"].loc[before.index]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["gained (wrong -> right)"] == str(int(((before == 0) & (after == 1)).sum()))
    assert metrics["lost (right -> wrong)"] == str(int(((before == 1) & (after == 0)).sum()))
    # Per subject, cloze reads acc_norm.
    assert "Per-subject acc_norm." in texts(at)


def test_the_runs_table_names_the_evaluation_its_gain_shows(formulations_run):
    at = _open(formulations_run, "views/runs.py")
    table = next(frame.value for frame in at.dataframe if "gains" in frame.value.columns)
    row = table.iloc[0]
    letters = {role: _items(formulations_run, "mmlu", role)["score"].mean() for role in ("target_before", "target_after")}
    assert row["gain"] == pytest.approx(letters["target_after"] - letters["target_before"], abs=1e-12)
    assert row["gain_of"] == "mmlu acc (letters)"
    assert "mmlu-rc acc_norm" in row["gains"]
