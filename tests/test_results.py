"""RunResult.summary(): one definition of every reported number, checked by hand."""

import pytest

from fedgrad_core.config import ExperimentConfig
from fedgrad_core.results import RunResult


def _record(round_idx, main=None, backdoor=None, tpr=None, fpr=None, seconds=0.1):
    return {
        "round": round_idx, "main_acc": main, "backdoor_acc": backdoor, "tpr": tpr, "fpr": fpr,
        "attackers": [], "flagged": [], "selected": [], "aggregation_seconds": seconds, "lr": 0.02,
    }


def _run():
    # Evaluated in rounds 2, 4, 5, 6, 8 (rounds 1, 3, 7 not: None).  The backdoor peaks in round 4,
    # then a defense pulls it down; TPR is undefined in round 2 (no attacker selected).
    history = [
        _record(1, tpr=1.0, fpr=0.0, seconds=0.1),
        _record(2, main=0.50, backdoor=0.30, tpr=None, fpr=0.25, seconds=0.2),
        _record(3, tpr=0.5, fpr=0.5, seconds=0.3),
        _record(4, main=0.70, backdoor=0.90, tpr=0.0, fpr=0.0, seconds=0.4),
        _record(5, main=0.80, backdoor=0.60, tpr=1.0, fpr=0.0, seconds=0.5),
        _record(6, main=0.75, backdoor=0.20, tpr=0.5, fpr=0.25, seconds=0.6),
        _record(7, tpr=1.0, fpr=0.0, seconds=0.7),
        _record(8, main=0.78, backdoor=0.10, tpr=1.0, fpr=0.0, seconds=0.8),
    ]
    return RunResult(ExperimentConfig(rounds=8), history)


def test_summary_reports_best_last_window_mean_and_final_of_the_evaluated_rounds():
    # Execute
    s = _run().summary(window=3)
    # Assert: every key by hand; the window counts evaluated rounds (6, 5, 4 before 8: 8, 6, 5)
    assert s["rounds"] == 8 and s["window"] == 3
    assert s["best_main_acc"] == pytest.approx(0.80)  # round 5, not the last
    assert s["best_backdoor_acc"] == pytest.approx(0.90)  # round 4: the attacker's best
    assert s["mean_main_acc_last"] == pytest.approx((0.80 + 0.75 + 0.78) / 3)
    assert s["mean_backdoor_acc_last"] == pytest.approx((0.60 + 0.20 + 0.10) / 3)
    assert s["final_main_acc"] == pytest.approx(0.78)
    assert s["final_backdoor_acc"] == pytest.approx(0.10)
    assert s["mean_tpr"] == pytest.approx((1.0 + 0.5 + 0.0 + 1.0 + 0.5 + 1.0 + 1.0) / 7)  # 7 defined rounds
    assert s["mean_fpr"] == pytest.approx((0.0 + 0.25 + 0.5 + 0.0 + 0.0 + 0.25 + 0.0 + 0.0) / 8)
    assert s["mean_aggregation_seconds"] == pytest.approx(0.45)
    assert list(s) == [
        "rounds", "window", "best_main_acc", "best_backdoor_acc", "mean_main_acc_last",
        "mean_backdoor_acc_last", "final_main_acc", "final_backdoor_acc", "mean_tpr", "mean_fpr",
        "mean_aggregation_seconds",
    ]


def test_summary_default_window_is_five_and_a_window_longer_than_the_run_takes_every_evaluated_round():
    run = _run()
    assert run.summary()["window"] == 5
    assert run.summary()["mean_backdoor_acc_last"] == pytest.approx((0.30 + 0.90 + 0.60 + 0.20 + 0.10) / 5)
    assert run.summary(window=100)["mean_main_acc_last"] == pytest.approx((0.50 + 0.70 + 0.80 + 0.75 + 0.78) / 5)
    assert run.summary(window=1)["mean_backdoor_acc_last"] == run.summary()["final_backdoor_acc"]


def test_summary_of_a_run_without_backdoor_set_or_attackers_gives_none_for_those_metrics():
    history = [_record(1, main=0.6, fpr=0.0), _record(2, main=0.7, fpr=0.1)]
    s = RunResult(ExperimentConfig(rounds=2), history).summary()
    assert s["best_main_acc"] == pytest.approx(0.7) and s["mean_main_acc_last"] == pytest.approx(0.65)
    for key in ("best_backdoor_acc", "mean_backdoor_acc_last", "final_backdoor_acc", "mean_tpr"):
        assert s[key] is None
    assert s["mean_fpr"] == pytest.approx(0.05)


@pytest.mark.parametrize("window", [0, -1, 2.5, True])
def test_summary_rejects_a_window_below_one_or_not_an_integer(window):
    with pytest.raises(ValueError, match="window"):
        _run().summary(window=window)


def test_summary_survives_a_save_and_load(tmp_path):
    run = _run()
    assert RunResult.load(run.save(tmp_path / "r.json")).summary(window=2) == run.summary(window=2)
