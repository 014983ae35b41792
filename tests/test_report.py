"""report: the summary table over seeds (mean, min, max), the reader's table, the paper's numbers, paired
differences from a baseline by seed, per-seed curves and the trust score's clearings."""

import math

import pandas as pd
import pytest

from fedgrad_core.config import ExperimentConfig
from fedgrad_core.report import (
    REPORTED_IN_PAPER,
    ci95_half_width,
    column_name,
    format_range,
    over_rounds,
    paired_differences,
    paired_long,
    paired_table,
    reader_table,
    seed_range_table,
    summary_table,
    tidy,
    to_markdown,
    closeness_leaders,
    trust_clearing,
    with_paper,
)
from fedgrad_core.results import RunResult

T_975_2 = 4.302652729911275  # Student t, 97.5% quantile, 2 degrees of freedom (printed tables: 4.303)


def _run(seed, main, backdoor, tpr=(1.0, 0.5), fpr=(0.0, 0.2)):
    """Two rounds, both evaluated: main / backdoor are (round 1, round 2) pairs."""
    history = [
        {"round": i + 1, "main_acc": main[i], "backdoor_acc": backdoor[i], "tpr": tpr[i], "fpr": fpr[i],
         "attackers": [], "flagged": [], "selected": [], "aggregation_seconds": 0.01 * (i + 1), "lr": 0.02}
        for i in range(2)
    ]
    return RunResult(ExperimentConfig(rounds=2, seed=seed), history)


@pytest.fixture
def runs():
    # Best main accuracy per seed 0.80, 0.90, 0.85 (mean 0.85, s = 0.05); the backdoor peaks in
    # round 1 for fedavg (0.6, 0.7, 0.8) and stays low for the defense; one seed only for "solo".
    return {
        "fedavg": [_run(0, (0.80, 0.70), (0.6, 0.5)), _run(1, (0.90, 0.88), (0.7, 0.4)),
                   _run(2, (0.85, 0.84), (0.8, 0.3))],
        "defense": [_run(0, (0.70, 0.82), (0.1, 0.0)), _run(1, (0.75, 0.83), (0.2, 0.1)),
                    _run(2, (0.80, 0.84), (0.0, 0.0), tpr=(None, None))],
        "solo": [_run(5, (0.60, 0.65), (0.5, 0.5))],
    }


def test_ci95_half_width_is_students_t_times_the_standard_error():
    assert ci95_half_width([0.80, 0.90, 0.85]) == pytest.approx(T_975_2 * 0.05 / math.sqrt(3))
    assert ci95_half_width([1.0, 3.0]) == pytest.approx(12.706204736174698 * math.sqrt(2) / math.sqrt(2))
    assert math.isnan(ci95_half_width([0.5])) and math.isnan(ci95_half_width([]))


def test_summary_table_gives_the_mean_over_seeds_and_the_t_interval_of_every_metric(runs):
    # Execute
    table = summary_table(runs, window=1)
    # Assert: one row per label, the mean and interval by hand
    assert list(table.index) == ["fedavg", "defense", "solo"]
    fedavg = table.loc["fedavg"]
    assert (fedavg["seeds"], fedavg["rounds"], fedavg["window"]) == (3, 2, 1)
    assert fedavg["best_main_acc"] == pytest.approx(0.85)
    assert fedavg["best_main_acc_ci95"] == pytest.approx(T_975_2 * 0.05 / math.sqrt(3))
    assert fedavg["best_backdoor_acc"] == pytest.approx(0.7)  # (0.6 + 0.7 + 0.8) / 3, s = 0.1
    assert fedavg["best_backdoor_acc_ci95"] == pytest.approx(T_975_2 * 0.1 / math.sqrt(3))
    assert fedavg["mean_backdoor_acc_last"] == pytest.approx(0.4)  # window 1: round 2 of each seed
    assert fedavg["final_main_acc"] == pytest.approx((0.70 + 0.88 + 0.84) / 3)
    assert fedavg["mean_tpr"] == pytest.approx(0.75) and fedavg["mean_tpr_ci95"] == pytest.approx(0.0)
    assert fedavg["mean_aggregation_seconds"] == pytest.approx(0.015)
    # a metric undefined in one seed is averaged over the others (two seeds: t with 1 d.o.f.)
    assert table.loc["defense", "mean_tpr"] == pytest.approx(0.75)
    assert table.loc["defense", "mean_tpr_ci95"] == pytest.approx(0.0)
    # one seed: the mean, no interval
    assert table.loc["solo", "best_main_acc"] == pytest.approx(0.65)
    assert math.isnan(table.loc["solo", "best_main_acc_ci95"])


def test_summary_table_window_changes_the_robust_metric_only(runs):
    wide, narrow = summary_table(runs, window=5), summary_table(runs, window=1)
    assert wide.loc["fedavg", "mean_backdoor_acc_last"] == pytest.approx((0.55 + 0.55 + 0.55) / 3)
    assert wide.loc["fedavg", "best_backdoor_acc"] == narrow.loc["fedavg", "best_backdoor_acc"]
    with pytest.raises(ValueError, match="window"):
        summary_table(runs, window=0)
    with pytest.raises(ValueError, match="no runs"):
        summary_table({"empty": []})


def test_summary_table_gives_the_range_over_seeds(runs):
    table = summary_table(runs, window=1)
    # best main accuracy per seed 0.80, 0.90, 0.85; best backdoor 0.6, 0.7, 0.8
    assert table.loc["fedavg", "best_main_acc_min"] == pytest.approx(0.80)
    assert table.loc["fedavg", "best_main_acc_max"] == pytest.approx(0.90)
    assert table.loc["fedavg", "best_backdoor_acc_n"] == 3
    # the defense's TPR is undefined in seed 2: two seeds define it
    assert table.loc["defense", "mean_tpr_n"] == 2
    assert table.loc["solo", "best_main_acc_min"] == table.loc["solo", "best_main_acc_max"] == pytest.approx(0.65)


def test_reader_table_has_human_columns_mean_and_range_in_one_cell_and_bold_best(runs):
    # Execute
    table = reader_table(summary_table(runs, window=1))
    # Assert
    assert list(table.columns) == [
        "Main accuracy, best (%)", "Backdoor accuracy, best (%)", "Main accuracy, mean of last 1 rounds (%)",
        "Backdoor accuracy, mean of last 1 rounds (%)", "TPR", "FPR",
    ]
    assert table.loc["fedavg", "Main accuracy, best (%)"] == "**85.0** [80.0–90.0]"  # highest; mean [min–max]
    assert table.loc["solo", "Main accuracy, best (%)"] == "65.0"  # one seed: the mean alone
    # the lowest backdoor accuracy is the best: the defense's 10.0 (seeds 0.1, 0.2, 0.0)
    assert table.loc["defense", "Backdoor accuracy, best (%)"] == "**10.0** [0.0–20.0]"
    assert table.loc["fedavg", "Backdoor accuracy, best (%)"] == "70.0 [60.0–80.0]"
    assert table.loc["fedavg", "TPR"] == "**0.75** [0.75–0.75]"  # a tie with the defense: both marked
    assert table.loc["defense", "TPR"] == "**0.75** [0.75–0.75]"  # two seeds define it
    assert "±" not in "".join(table.to_numpy().ravel())
    assert table.index.name is None


def test_reader_table_options(runs):
    summary = summary_table(runs, window=1)
    # a reference row does not compete; fractions; html marks; no marks
    table = reader_table(summary, metrics=["best_main_acc"], percent=False, exclude_from_best=["fedavg"],
                         markup="html")
    assert list(table.columns) == ["Main accuracy, best"]
    assert table.loc["fedavg", "Main accuracy, best"] == "0.850 [0.800–0.900]"
    assert table.loc["defense", "Main accuracy, best"] == "<b>0.830</b> [0.820–0.840]"
    # a summary without the range columns shows the means alone
    bare = summary.drop(columns=[c for c in summary.columns if c.endswith(("_min", "_max", "_n"))])
    assert reader_table(bare, metrics=["best_main_acc"]).loc["fedavg", "Main accuracy, best (%)"] == "**85.0**"
    plain = reader_table(summary, metrics=["best_backdoor_acc"], best={})
    assert "**" not in "".join(plain.iloc[:, 0])
    # an undefined metric shows a dash
    summary.loc["solo", "mean_tpr"] = float("nan")
    assert reader_table(summary, metrics=["mean_tpr"]).loc["solo", "TPR"] == "–"
    with pytest.raises(ValueError, match="markup"):
        reader_table(summary, markup="latex")
    with pytest.raises(ValueError, match="'min' or 'max'"):
        reader_table(summary, best={"best_main_acc": "highest"})
    with pytest.raises(ValueError, match="not columns"):
        reader_table(summary, metrics=["accuracy"])


def test_with_paper_adds_labelled_paper_columns_beside_ours(runs):
    # Prepare: Table 2's CIFAR-10 black-box numbers for FedAvg and FedGrad, as printed
    ours = reader_table(summary_table(runs, window=3), metrics=["best_main_acc", "best_backdoor_acc", "mean_tpr"])
    paper = {"fedavg": {"best_main_acc": "84.32", "best_backdoor_acc": 71.43},
             "defense": {"best_main_acc": "84.62", "best_backdoor_acc": "5.10"}}
    # Execute
    table = with_paper(ours, paper)
    # Assert: each paper column right after ours, "–" where the paper has no number
    assert list(table.columns) == [
        "Main accuracy, best (%)", "Main accuracy, best (%) (paper)",
        "Backdoor accuracy, best (%)", "Backdoor accuracy, best (%) (paper)", "TPR",
    ]
    assert table["Main accuracy, best (%) (paper)"].tolist() == ["84.32", "84.62", "–"]
    assert table["Backdoor accuracy, best (%) (paper)"].tolist() == ["71.43", "5.10", "–"]
    assert table["Main accuracy, best (%)"].equals(ours["Main accuracy, best (%)"])


def test_with_paper_labels_the_numbers_the_paper_only_quotes_as_reported(runs):
    # the paper quotes DeepSight's CIFAR-10 black-box numbers from DeepSight's authors (section
    # 5.2, footnote 2: it could not run DeepSight); the row named in `reported` says so
    ours = reader_table(summary_table(runs, window=3), metrics=["best_main_acc"])
    paper = {"fedavg": {"best_main_acc": "84.32"}, "defense": {"best_main_acc": 80.54}}
    table = with_paper(ours, paper, reported=["defense"])
    assert table["Main accuracy, best (%) (paper)"].tolist() == ["84.32", "80.54 (reported)", "–"]
    assert "DeepSight" in REPORTED_IN_PAPER
    assert with_paper(ours, paper)["Main accuracy, best (%) (paper)"].tolist() == ["84.32", "80.54", "–"]


def test_with_paper_on_the_numeric_summary_and_its_errors(runs):
    summary = summary_table(runs, window=1)
    table = with_paper(summary, {"fedavg": {"best_main_acc": 0.8432}})
    assert table.columns.get_loc("best_main_acc (paper)") == summary.columns.get_loc("best_main_acc") + 1
    assert table.loc["fedavg", "best_main_acc (paper)"] == pytest.approx(0.8432)
    assert math.isnan(table.loc["solo", "best_main_acc (paper)"])
    # the robust metric's column is found whatever its window
    reader = reader_table(summary, metrics=["mean_backdoor_acc_last"])
    assert "Backdoor accuracy, mean of last 1 rounds (%) (paper)" in with_paper(
        reader, {"fedavg": {"mean_backdoor_acc_last": "1.0"}}).columns
    with pytest.raises(ValueError, match="krum"):
        with_paper(summary, {"krum": {"best_main_acc": 0.8}})
    with pytest.raises(ValueError, match="unknown metrics"):
        with_paper(summary, {"fedavg": {"MA": 0.8}})
    with pytest.raises(ValueError, match="no column"):
        with_paper(reader, {"fedavg": {"best_main_acc": "84.32"}})


def test_column_names_name_the_window():
    assert column_name("mean_backdoor_acc_last", 10) == "Backdoor accuracy, mean of last 10 rounds (%)"
    assert column_name("best_main_acc", percent=False) == "Main accuracy, best"
    with pytest.raises(ValueError, match="unknown metric"):
        column_name("accuracy")


def test_to_markdown_renders_a_pipe_table():
    table = pd.DataFrame({"A (%)": ["**1.0** ± 0.1", "2|3"]}, index=["x", "y"])
    assert to_markdown(table).splitlines() == [
        "|  | A (%) |", "| --- | ---: |", "| x | **1.0** ± 0.1 |", "| y | 2\\|3 |",
    ]


def test_tidy_has_one_row_per_label_seed_and_round(runs):
    frame = tidy(runs)
    assert len(frame) == 7 * 2
    assert set(frame.columns) >= {"label", "seed", "round", "main_acc", "backdoor_acc"}
    assert frame[(frame.label == "fedavg") & (frame.seed == 1) & (frame["round"] == 1)].main_acc.item() == 0.90


# --------------------------------------------------------------------------- paired differences


def _shuffled(runs):
    """The defense's runs in seed order 2, 0, 1: pairing by position instead of seed would differ."""
    d = runs["defense"]
    return {"fedavg": runs["fedavg"], "defense": [d[2], d[0], d[1]]}


def test_paired_differences_pair_by_seed_and_subtract_the_baseline(runs):
    # Prepare: best backdoor per seed fedavg 0.6, 0.7, 0.8 / defense 0.1, 0.2, 0.0; best main
    # fedavg 0.80, 0.90, 0.85 / defense 0.82, 0.83, 0.84; the defense's list is not in seed order
    paired = _shuffled(runs)
    # Execute
    backdoor = paired_differences(paired, baseline="fedavg", metric="best_backdoor_acc", window=1)
    main = paired_differences(paired, baseline="fedavg", metric="best_main_acc", window=1)
    # Assert: defense minus FedAvg, seed by seed (by position it would be -0.6, -0.6, -0.6)
    assert list(backdoor.columns) == ["label", "seed", "value", "baseline", "difference"]
    assert backdoor["label"].tolist() == ["defense"] * 3 and backdoor["seed"].tolist() == [0, 1, 2]
    assert backdoor["difference"].tolist() == pytest.approx([-0.5, -0.5, -0.8])
    assert backdoor["baseline"].tolist() == pytest.approx([0.6, 0.7, 0.8])
    assert main["difference"].tolist() == pytest.approx([0.02, -0.07, -0.01])
    # a metric undefined in a run (the defense's TPR in seed 2) gives NaN
    tpr = paired_differences(paired, baseline="fedavg", metric="mean_tpr", window=1)
    assert tpr["difference"].iloc[:2].tolist() == pytest.approx([0.0, 0.0]) and math.isnan(tpr["difference"].iloc[2])


def test_paired_differences_refuse_unpaired_seeds(runs):
    fedavg = runs["fedavg"]
    expected = r"'defense' has seeds \[0, 1\] but the baseline 'fedavg' has seeds \[0, 1, 2\]"
    with pytest.raises(ValueError, match=expected):
        paired_differences({"fedavg": fedavg, "defense": runs["defense"][:2]}, baseline="fedavg",
                           metric="best_main_acc")
    # the same number of runs on other seeds is refused too
    other = [_run(0, (0.7, 0.7), (0.1, 0.1)), _run(1, (0.7, 0.7), (0.1, 0.1)), _run(5, (0.7, 0.7), (0.1, 0.1))]
    with pytest.raises(ValueError, match=r"seeds \[0, 1, 5\]"):
        paired_differences({"fedavg": fedavg, "defense": other}, baseline="fedavg", metric="best_main_acc")
    with pytest.raises(ValueError, match="two runs with seed 0"):
        paired_differences({"fedavg": fedavg, "defense": [fedavg[0], fedavg[0], fedavg[1]]},
                           baseline="fedavg", metric="best_main_acc")
    with pytest.raises(ValueError, match="baseline 'krum'"):
        paired_differences(runs, baseline="krum", metric="best_main_acc")
    with pytest.raises(ValueError, match="unknown metric"):
        paired_differences(runs, baseline="fedavg", metric="BA")


def test_paired_table_shows_mean_and_range_of_the_differences_in_points(runs):
    # Prepare: two groups (attacks), the second with the defense's runs shuffled
    paired = _shuffled(runs)
    long = paired_long({"black-box": paired, "PGD": paired}, baseline="fedavg",
                       metrics=["best_backdoor_acc", "best_main_acc"], window=1)
    # Execute
    table = paired_table(long)
    rows = paired_table(long[long["group"] == "PGD"], layout="rows")
    # Assert: backdoor -50, -50, -80 -> mean -60; main +2, -7, -1 -> mean -2
    assert len(long) == 2 * 2 * 3 and set(long.columns) >= {"group", "metric", "seed", "difference"}
    assert list(table.columns) == ["black-box: Δ backdoor, best (pp)", "black-box: Δ main, best (pp)",
                                   "PGD: Δ backdoor, best (pp)", "PGD: Δ main, best (pp)"]
    assert list(table.index) == ["defense"]
    assert table.loc["defense", "black-box: Δ backdoor, best (pp)"] == "−60.0 [−80.0–−50.0]"
    assert table.loc["defense", "PGD: Δ main, best (pp)"] == "−2.0 [−7.0–+2.0]"
    assert rows.loc["PGD", "Δ backdoor, best (pp)"] == "−60.0 [−80.0–−50.0]"
    assert paired_long({("d", "a"): paired}, baseline="fedavg", metrics=["best_main_acc"])["group"].tolist() == [
        ("d", "a")] * 3
    # TPR / FPR: two decimals, no unit; one seed: the mean alone
    one = {"fedavg": runs["fedavg"][:1], "defense": runs["defense"][:1]}
    single = paired_table(paired_long({"g": one}, baseline="fedavg", metrics=["mean_fpr"], window=1))
    assert single.loc["defense", "g: Δ FPR"] == "0.00"
    with pytest.raises(ValueError, match="layout"):
        paired_table(long, layout="wide")


def test_format_range_and_seed_range_table():
    assert format_range(7.25, 5.0, 9.1) == "7.2 [5.0–9.1]"
    assert format_range(7.25, 7.25, 7.25, n=1) == "7.2"  # one seed: min = max = mean
    assert format_range(-3.14, -5.0, 1.2, signed=True) == "−3.1 [−5.0–+1.2]"
    assert format_range(-0.01, -0.02, 0.0, signed=True) == "0.0 [0.0–0.0]"  # no "−0.0"
    assert format_range(float("nan"), 0, 0) == "–"
    per_seed = pd.DataFrame({"variant": ["a", "a", "a", "b"], "x": [0.1, 0.3, 0.2, 0.5]})
    table = seed_range_table(per_seed, by="variant", columns={"x": "X (%)"}, scale=100)
    assert table.to_dict() == {"X (%)": {"a": "20.0 [10.0–30.0]", "b": "50.0"}}


def test_over_rounds_smooths_each_run_over_its_evaluated_rounds():
    history = [{"round": i, "backdoor_acc": v} for i, v in [(1, None), (2, 0.2), (3, None), (4, 0.6), (5, 0.1)]]
    runs = {"x": [RunResult(ExperimentConfig(rounds=5, seed=3), history)]}
    curves = over_rounds(runs, smooth=2)
    assert curves["round"].tolist() == [2, 4, 5]  # not evaluated: left out
    assert curves["value"].tolist() == pytest.approx([0.2, 0.4, 0.35])  # trailing means of 2 evaluated rounds
    assert curves["raw"].tolist() == pytest.approx([0.2, 0.6, 0.1]) and set(curves["seed"]) == {3}
    assert over_rounds(runs)["value"].tolist() == pytest.approx([0.2, 0.6, 0.1])
    # a tuple label (data set, attack, defense) stays one value
    assert over_rounds({("d", "a", "x"): runs["x"]})["label"].tolist() == [("d", "a", "x")] * 3
    with pytest.raises(ValueError, match="smooth"):
        over_rounds(runs, smooth=0)


def test_trust_clearing_counts_benign_and_attacker_clearings_per_run():
    # Prepare: round 1 attacker 3; flagged 3, 5; the trust score cleared benign 7.  Round 2 attackers
    # 3, 4; flagged 4; cleared attacker 3 and benign 7, 8.  Round 3: no diagnostics.
    history = [
        {"round": 1, "attackers": [3], "flagged": [3, 5], "defense": {"cleared": [7]}},
        {"round": 2, "attackers": [3, 4], "flagged": [4], "defense": {"cleared": [3, 7, 8]}},
        {"round": 3, "attackers": [], "flagged": [9]},
    ]
    runs = {"FedGrad": [RunResult(ExperimentConfig(rounds=3, seed=1), history)]}
    # Execute
    row = trust_clearing(runs).iloc[0].to_dict()
    # Assert: suspicious benign {5, 7} + {7, 8} + {9} = 5 client-rounds; cleared benign 1 + 2
    assert row == {"label": "FedGrad", "seed": 1, "suspicious benign": 5, "benign cleared": 3,
                   "benign clients cleared": 2, "attackers cleared": 1, "attacker rounds": 3}


def test_closeness_leaders_count_the_rounds_an_attacker_scored_highest():
    # Prepare: round 1 attacker 3 scores highest; round 2 benign 5 does (attacker 4 second); round 3
    # attacker 4 ties benign 6 at the top; round 4 has no closeness score; round 5 no attacker
    history = [
        {"round": 1, "attackers": [3], "defense": {"closeness": {"3": 9.5, "5": 2.0, "6": 1.0}}},
        {"round": 2, "attackers": [4], "defense": {"closeness": {"4": 3.0, "5": 7.25, "6": 1.0}}},
        {"round": 3, "attackers": [3, 4], "defense": {"closeness": {"3": 0.5, "4": 4.0, "6": 4.0}}},
        {"round": 4, "attackers": [3], "defense": {"closeness": {}}},
        {"round": 5, "attackers": [], "defense": {"closeness": {"5": 1.0, "6": 2.0}}},
    ]
    runs = {"FedGrad": [RunResult(ExperimentConfig(rounds=5, seed=2), history)],
            "FedAvg": [RunResult(ExperimentConfig(rounds=5, seed=2), [{"round": 1, "attackers": [3]}])]}
    # Execute
    table = closeness_leaders(runs)
    # Assert: rounds 1-3 count; the attacker is highest in rounds 1 and 3
    assert table.to_dict("records") == [
        {"label": "FedGrad", "seed": 2, "rounds": 3, "attacker highest": 2},
        {"label": "FedAvg", "seed": 2, "rounds": 0, "attacker highest": 0},
    ]


def test_seed_mean_stays_inside_the_range_of_equal_values_and_is_the_mean_otherwise():
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    from fedgrad_core.report import seed_mean

    # Prepare: three equal values whose float mean lies one ulp above them, and distinct values
    equal, below = [0.1, 0.1, 0.1], [0.7, 0.7, 0.7]
    assert sum(equal) / 3 > 0.1 and sum(below) / 3 < 0.7  # the rounding the estimator guards against

    # Execute / Assert
    assert seed_mean(equal) == 0.1 and seed_mean(below) == 0.7
    assert seed_mean([0.1, 0.4, 0.7]) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="no values"):
        seed_mean([])
    data = pd.DataFrame({"x": [0, 0, 0, 1, 1, 1, 2, 2, 2], "y": equal + below + [0.1, 0.4, 0.7]})
    sns.lineplot(data=data, x="x", y="y", estimator=seed_mean, errorbar=("pi", 100), err_style="bars")
