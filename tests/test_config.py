import subprocess
import sys

import pytest

from fedgrad_core import ConfigError, ExperimentConfig
from fedgrad_core.cli import main
from fedgrad_core.config import validate


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"dataset": "imagenet"}, "unknown dataset 'imagenet'; choose one of"),
        ({"model": "gpt"}, "unknown model 'gpt'"),
        ({"defense": "magic"}, "unknown defense 'magic'; choose one of"),
        ({"attack": "nuke"}, "unknown attack 'nuke'; choose one of"),
        ({"clients_per_round": 30}, r"clients_per_round \(K=30\) is larger than num_clients \(N=20\)"),
        ({"rounds": 0}, "rounds must be a positive integer"),
        ({"poisoned_data_rate": 1.0}, r"poisoned_data_rate must be in \[0, 1\)"),
        ({"poisoned_data_rate": -0.1}, r"poisoned_data_rate must be in \[0, 1\)"),
        ({"attack": "blackbox", "attacker_fraction": 0.0}, "needs attackers"),
        ({"lr": 0.0}, "lr must be a positive number"),
        ({"partition": "zipf"}, "unknown partition"),
        ({"device": "tpu"}, "device must be"),
        ({"defense_params": {"bogus": 1}}, r"has no parameter\(s\) \['bogus'\]"),
    ],
)
def test_bad_configs_name_the_problem(changes, message):
    with pytest.raises(ConfigError, match=message):
        validate(ExperimentConfig(**changes))


def test_the_default_config_is_valid_and_frozen():
    config = ExperimentConfig()
    validate(config)

    with pytest.raises(AttributeError):
        config.rounds = 3  # type: ignore[misc]


def test_config_round_trips_through_a_dict():
    config = ExperimentConfig(attack="blackbox", attack_params={"num_edge": 10}, seed=4)

    assert ExperimentConfig.from_dict(config.to_dict()) == config


def test_cli_bad_input_exits_2_with_one_line_and_no_traceback(capsys):
    code = main(["run", "--clients-per-round", "50", "--quiet"])

    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "clients_per_round (K=50) is larger than num_clients (N=20)" in err
    assert "Traceback" not in err


def test_cli_every_config_field_is_a_flag():
    from fedgrad_core.cli import build_parser

    run = build_parser()._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    flags = {opt for action in run._actions for opt in action.option_strings}
    import dataclasses

    for f in dataclasses.fields(ExperimentConfig):
        assert "--" + f.name.replace("_", "-") in flags


@pytest.mark.slow
def test_cli_runs_and_writes_the_result(tmp_path):
    out = tmp_path / "run.json"
    proc = subprocess.run(
        [sys.executable, "-m", "fedgrad_core", "run", "--rounds", "2", "--quiet", "--out", str(out),
         "--defense-params", "{}", "--attack", "blackbox", "--attack-params", "num_edge=10"],
        capture_output=True, text=True, timeout=300,
    )

    assert proc.returncode == 0, proc.stderr
    assert "fedavg/blackbox on digits:" in proc.stdout and str(out) in proc.stdout
    assert out.exists()


def test_cli_summary_labels_the_best_and_the_mean_of_the_last_n_rounds():
    from fedgrad_core.cli import format_summary

    summary = {
        "rounds": 8, "window": 3, "best_main_acc": 0.8, "best_backdoor_acc": 0.9, "mean_main_acc_last": 0.7767,
        "mean_backdoor_acc_last": 0.3, "final_main_acc": 0.78, "final_backdoor_acc": 0.1, "mean_tpr": None,
        "mean_fpr": 0.125, "mean_aggregation_seconds": 0.45,
    }

    lines = format_summary(summary, "fedavg/blackbox on digits:", out="r.json").splitlines()

    assert lines[0] == "fedavg/blackbox on digits: 8 rounds -> r.json"
    assert "best 90.00% (paper's metric)" in lines[2] and "mean of last 3 evaluated rounds 30.00%" in lines[2]
    assert lines[2].lstrip().startswith("backdoor accuracy:") and "final 10.00%" in lines[2]
    assert "best 80.00%" in lines[1] and "mean of last 3 evaluated rounds 77.67%" in lines[1]
    assert "mean TPR n/a, mean FPR 0.12" in lines[3]


def test_cli_rejects_a_summary_window_below_one(capsys):
    assert main(["run", "--summary-window", "0", "--quiet"]) == 2
    assert "--summary-window must be >= 1" in capsys.readouterr().err
