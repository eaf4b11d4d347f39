import json

import numpy as np
import pytest
from tiny_models import SAMPLE_TEXTS

from pkt_core.capture.activation_store import open_activations
from pkt_core.cli.arguments import parse_layer_list
from pkt_core.cli.main import main


@pytest.fixture
def transfer_configs(monkeypatch) -> dict:
    """``pkt transfer`` stops right after building its config, before any model is loaded; the config
    lands in the returned dict under "config"."""
    from pkt_core.transfer import pipeline

    seen: dict = {}

    def fake_run(config, **kwargs):
        seen["config"] = config
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_transfer", fake_run)
    return seen

def test_models_list_json(capsys):
    assert main(["models", "list", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert {"qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "smollm2-135m"} <= rows.keys()
    assert rows["qwen2.5-coder-0.5b"]["cached"] is False  # a fresh PKT_HOME
    assert rows["qwen2.5-coder-1.5b"]["mirror"]["sha256"].startswith("cc324af0")


def test_models_list_table_names_the_default_pair(capsys):
    assert main(["models", "list"]) == 0
    assert "qwen-coder-1.5b-to-0.5b: qwen2.5-coder-1.5b -> qwen2.5-coder-0.5b (default)" in capsys.readouterr().out


def test_capture_command_writes_a_folder(tiny_model_folder, tmp_path, capsys):
    data = tmp_path / "prompts.txt"
    data.write_text("\n".join(text.replace("\n", " ") for text in SAMPLE_TEXTS))  # one prompt a line
    out = tmp_path / "acts"
    code = main(["capture", "--model", str(tiny_model_folder), "--data", str(data), "--out", str(out),
                 "--layers", "0-1", "--sites", "resid_post", "--tokens", "last", "--padding-side", "left"])
    assert code == 0
    result = open_activations(out)
    assert result.layers == [0, 1] and result.sites == ["resid_post"] and result.n_rows == len(SAMPLE_TEXTS)
    assert result.metadata["padding_side"] == "left"
    assert np.isfinite(result.layer(1)).all()


def test_bad_model_name_is_a_clear_error_and_exit_2(tmp_path, capsys):
    data = tmp_path / "p.txt"
    data.write_text("hello")
    code = main(["capture", "--model", "no-such-model", "--data", str(data), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "cannot find model 'no-such-model'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bad_data_is_a_clear_error(tiny_model_folder, tmp_path, capsys):
    data = tmp_path / "p.jsonl"
    data.write_text('{"prompt": "ok"}\n{broken\n')
    code = main(["capture", "--model", str(tiny_model_folder), "--data", str(data), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "p.jsonl:2 is not valid JSON" in capsys.readouterr().err


def test_layer_list_parsing():
    assert parse_layer_list("0,3,5-7") == (0, 3, 5, 6, 7)
    assert parse_layer_list("all") is None


def test_pkt_transfer_carries_the_evaluation_formulation_into_the_config(transfer_configs, tmp_path):
    """--eval-formulation / --eval-shots / --eval-circular reach the run's config (and so its manifest)."""
    seen = transfer_configs
    code = main(["transfer", "--source", "a", "--target", "b", "--task", "mmlu", "--eval", "mmlu,arc_easy",
                 "--eval-limit", "2", "--eval-formulation", "mc", "--eval-shots", "5", "--eval-circular",
                 "--out", str(tmp_path / "run")])
    assert code == 130
    config = seen["config"]
    assert config.eval_tasks == ["mmlu", "arc_easy"] and config.eval_limit == 2
    assert config.eval_settings["formulation"] == "mc" and config.eval_settings["shots"] == 5
    assert config.eval_settings["circular"] is True


def test_pkt_transfer_takes_several_formulations_of_a_task_as_evaluation_specs(transfer_configs, tmp_path, capsys):
    """--eval mmlu,mmlu:rc@1,arc_easy+circular: each spec reaches the config (canonical), a duplicate is
    refused with its reason, and --help shows the grammar."""
    seen = transfer_configs
    base = ["transfer", "--source", "a", "--target", "b", "--task", "arc_easy", "--out", str(tmp_path / "run")]
    assert main([*base, "--eval", "mmlu, mmlu:rc@1,arc_easy:mc+circular", "--eval-limit", "5"]) == 130
    assert seen["config"].eval_tasks == ["mmlu", "mmlu:rc@1", "arc_easy:mc+circular"]
    assert seen["config"].task == "arc_easy" and seen["config"].eval_limit == 5
    capsys.readouterr()
    assert main([*base, "--eval", "mmlu,mmlu:mc"]) != 0
    assert "mmlu and mmlu:mc both ask for mmlu (letters)" in capsys.readouterr().err
    import pytest

    with pytest.raises(SystemExit):
        main(["transfer", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "task[:mc|:rc][+circular][@N]" in shown and "task-formulation[-circular]" in shown


def test_pkt_transfer_similarity_chooses_the_measures_and_refuses_a_set_without_linear_cka(transfer_configs, tmp_path,
                                                                                            capsys):
    seen = transfer_configs
    base = ["transfer", "--source", "a", "--target", "b", "--task", "mmlu", "--out", str(tmp_path / "run")]
    assert main(base + ["--similarity", "linear_cka,svcca"]) == 130
    assert seen.pop("config").similarity_measures == ["linear_cka", "svcca"]
    assert main(base) == 130
    assert "procrustes" in seen.pop("config").similarity_measures  # the default: every measure
    assert main(base + ["--similarity", "svcca"]) != 0
    assert "must include linear_cka" in capsys.readouterr().err
