"""Tables from RunResults, for notebooks and the book (no plotting here).

Three layers: ``tidy`` (one row per label, seed and round, for figures), ``summary_table`` (one
row per label: every metric of ``RunResult.summary`` as a mean over seeds with its range over
seeds) and ``reader_table`` (the same for readers: human column names, "95.3 [94.1–96.0]" cells:
mean [min–max] over seeds, best marked).  ``with_paper`` puts the paper's numbers beside ours,
labelled as the paper's.

Paired differences: the seeds are shared across the rows of a page (same seed, same partition,
attacker pool and sampled clients), so ``paired_differences`` / ``paired_long`` pair each row's run
with the baseline's run *of the same seed* and ``paired_table`` shows the differences as
"mean [min–max]" in percentage points.  ``over_rounds`` gives per-seed curves smoothed over the
evaluated rounds; ``seed_range_table`` formats any per-seed numbers as "mean [min–max]";
``trust_clearing`` counts whom FedGrad's trust score cleared, per run.

No Student-t interval is shown on the pages: over 2-5 seeds it says little (t = 12.7 for two).
``ci95_half_width`` stays for callers with many seeds.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping, Optional, Sequence

import pandas as pd

from fedgrad_core.results import RunResult

#: The metrics of ``RunResult.summary`` that ``summary_table`` averages over seeds.
METRICS = (
    "best_main_acc",
    "best_backdoor_acc",
    "mean_main_acc_last",
    "mean_backdoor_acc_last",
    "final_main_acc",
    "final_backdoor_acc",
    "mean_tpr",
    "mean_fpr",
    "mean_aggregation_seconds",
)

#: Accuracies: shown in percent by ``reader_table``; TPR / FPR stay fractions as in the paper's Table 4.
ACCURACIES = frozenset(m for m in METRICS if m.endswith("_acc") or m.endswith("_acc_last"))

#: What ``reader_table`` shows by default: the paper's metric and the robust one, then detection.
READER_METRICS = (
    "best_main_acc",
    "best_backdoor_acc",
    "mean_main_acc_last",
    "mean_backdoor_acc_last",
    "mean_tpr",
    "mean_fpr",
)

#: Which way is better, per metric (for marking the best value of each column).
BEST = {
    "best_main_acc": "max",
    "best_backdoor_acc": "min",
    "mean_main_acc_last": "max",
    "mean_backdoor_acc_last": "min",
    "final_main_acc": "max",
    "final_backdoor_acc": "min",
    "mean_tpr": "max",
    "mean_fpr": "min",
    "mean_aggregation_seconds": "min",
}

#: Decimals of the metrics that are not shown in percent.
_DECIMALS = {"mean_tpr": 2, "mean_fpr": 2}

_MARKUP = {"markdown": ("**", "**"), "html": ("<b>", "</b>"), "none": ("", "")}


def tidy(runs: Mapping[str, Sequence[RunResult]]) -> pd.DataFrame:
    """One row per (label, seed, round) with the history's scalar columns."""
    frames = []
    for label, results in runs.items():
        for result in results:
            frame = result.to_frame()[["round", "main_acc", "backdoor_acc", "tpr", "fpr", "aggregation_seconds"]]
            frames.append(frame.assign(label=label, seed=result.config.seed))
    return pd.concat(frames, ignore_index=True)


def ci95_half_width(values: Sequence[float]) -> float:
    """Half-width of the 95% confidence interval of the mean of ``values`` (Student t, n - 1
    degrees of freedom): ``t_{0.975, n-1} * s / sqrt(n)`` with the sample standard deviation ``s``.
    NaN for fewer than two values (one seed says nothing about the spread).  Assumes the seeds'
    results are independent draws from one distribution."""
    from scipy.stats import t

    n = len(values)
    if n < 2:
        return math.nan
    mean = sum(values) / n
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return float(t.ppf(0.975, n - 1)) * s / math.sqrt(n)


def summary_table(runs: Mapping[str, Sequence[RunResult]], *, window: int = 5) -> pd.DataFrame:
    """One row per label (index ``label``): for each metric of ``RunResult.summary(window)`` the mean
    over seeds (column ``<metric>``), the smallest and largest value over seeds (``<metric>_min``,
    ``<metric>_max``), how many seeds define it (``<metric>_n``) and, for callers with many seeds,
    the half-width of the Student-t 95% interval (``<metric>_ci95``, NaN for one seed; the pages
    do not show it); ``seeds`` (how many runs), ``rounds`` (the fewest rounds any of them ran;
    equal in a complete set) and ``window``.

    A metric undefined in some runs (None: no backdoor set, no attacker) is averaged over the runs
    where it is defined; NaN where it is defined in none.  Accuracies stay fractions in [0, 1].
    """
    if not runs:
        raise ValueError("summary_table needs at least one label with runs")
    rows = []
    for label, results in runs.items():
        if not results:
            raise ValueError(f"label {label!r} has no runs")
        summaries = [r.summary(window) for r in results]
        row: dict[str, object] = {
            "label": label,
            "seeds": len(results),
            "rounds": min(s["rounds"] for s in summaries),
            "window": window,
        }
        for metric in METRICS:
            values = [s[metric] for s in summaries if s[metric] is not None]
            row[metric] = sum(values) / len(values) if values else math.nan
            row[f"{metric}_min"] = min(values) if values else math.nan
            row[f"{metric}_max"] = max(values) if values else math.nan
            row[f"{metric}_n"] = len(values)
            row[f"{metric}_ci95"] = ci95_half_width(values)
        rows.append(row)
    return pd.DataFrame(rows).set_index("label")


def column_name(metric: str, window: int = 5, *, percent: bool = True) -> str:
    """The human name of a summary metric, e.g. "Backdoor accuracy, mean of last 5 rounds (%)"."""
    unit = " (%)" if percent else ""
    names = {
        "best_main_acc": f"Main accuracy, best{unit}",
        "best_backdoor_acc": f"Backdoor accuracy, best{unit}",
        "mean_main_acc_last": f"Main accuracy, mean of last {window} rounds{unit}",
        "mean_backdoor_acc_last": f"Backdoor accuracy, mean of last {window} rounds{unit}",
        "final_main_acc": f"Main accuracy, final round{unit}",
        "final_backdoor_acc": f"Backdoor accuracy, final round{unit}",
        "mean_tpr": "TPR",
        "mean_fpr": "FPR",
        "mean_aggregation_seconds": "Aggregation time (s)",
    }
    if metric not in names:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    return names[metric]


def reader_table(
    summary: pd.DataFrame,
    *,
    metrics: Sequence[str] = READER_METRICS,
    percent: bool = True,
    best: Optional[Mapping[str, str]] = None,
    exclude_from_best: Iterable[str] = (),
    markup: str = "markdown",
) -> pd.DataFrame:
    """The table for readers, from ``summary_table``'s output: one column per metric with its human
    name (``column_name``), each cell "mean [min–max]" over the seeds ("95.3 [94.1–96.0]"; only
    the mean where one seed defines the metric; "–" where none does), the best mean of each column
    marked in bold.

    ``percent``: accuracies in percent with one decimal (else fractions with three); TPR and FPR
    stay fractions with two decimals, as in the paper's Table 4; seconds have three.  ``best``: metric -> "min" or
    "max" (default ``BEST``; a metric absent from it is not marked); the best is taken over the
    rounded values shown, so ties are all marked.  ``exclude_from_best``: labels not competing
    (a reference row such as "fedavg, no attack").  ``markup``: "markdown" ("**95.3** [94.1–96.0]"),
    "html" ("<b>95.3</b> [94.1–96.0]") or "none".  A summary without ``<metric>_min`` /
    ``<metric>_max`` columns shows the means alone.  Cells are strings; show the table with
    ``to_markdown`` (or ``DataFrame.to_html(escape=False)``).  The index (labels) keeps no name,
    to keep the header short.
    """
    if markup not in _MARKUP:
        raise ValueError(f"markup must be one of {sorted(_MARKUP)}, got {markup!r}")
    best = BEST if best is None else best
    for metric, direction in best.items():
        if direction not in ("min", "max"):
            raise ValueError(f"best[{metric!r}] must be 'min' or 'max', got {direction!r}")
    missing = [m for m in metrics if m not in summary.columns]
    if missing:
        raise ValueError(f"metrics {missing} are not columns of the summary table")
    window = int(summary["window"].iloc[0]) if "window" in summary.columns and len(summary) else 5
    excluded = set(exclude_from_best)
    opening, closing = _MARKUP[markup]
    out = pd.DataFrame(index=summary.index)
    for metric in metrics:
        scale, decimals = (100.0, 1) if percent and metric in ACCURACIES else (1.0, _DECIMALS.get(metric, 3))
        means = summary[metric].astype(float) * scale
        shown = means.round(decimals)
        nan = pd.Series(math.nan, summary.index)
        lows = summary[f"{metric}_min"].astype(float) * scale if f"{metric}_min" in summary else nan
        highs = summary[f"{metric}_max"].astype(float) * scale if f"{metric}_max" in summary else nan
        counts = summary[f"{metric}_n"] if f"{metric}_n" in summary else pd.Series(2, summary.index)
        competing = shown[[label not in excluded for label in shown.index]].dropna()
        target = None
        if metric in best and len(competing):
            target = competing.max() if best[metric] == "max" else competing.min()
        cells = []
        for label in summary.index:
            if math.isnan(means[label]):
                cells.append("–")
                continue
            text = f"{means[label]:.{decimals}f}"
            if target is not None and label not in excluded and shown[label] == target:
                text = f"{opening}{text}{closing}"
            if counts[label] > 1 and not (math.isnan(lows[label]) or math.isnan(highs[label])):
                text += f" [{lows[label]:.{decimals}f}–{highs[label]:.{decimals}f}]"
            cells.append(text)
        out[column_name(metric, window, percent=percent and metric in ACCURACIES)] = cells
    out.index.name = None
    return out


#: Rows whose "(paper)" numbers the paper only quotes from another paper: section 5.2, "It is
#: reported that DeepSight ... can also reduce the BA to 7.14% with the MA of 80.54%", and its
#: footnote 2: the authors could not reproduce DeepSight (no public code at the time).
REPORTED_IN_PAPER = ("DeepSight",)

#: What ``with_paper`` appends to such a number in a text table.
REPORTED_MARK = " (reported)"


def with_paper(
    ours: pd.DataFrame,
    paper: Mapping[str, Mapping[str, object]],
    *,
    percent: bool = True,
    reported: Sequence[str] = REPORTED_IN_PAPER,
) -> pd.DataFrame:
    """``ours`` with the paper's numbers beside it: after each of our columns for which ``paper``
    gives a number, a column of the same name plus " (paper)".

    ``paper``: our row label -> {summary metric ("best_main_acc", ...) -> the paper's value}.  The
    value goes in as given: pass it as the paper prints it ("84.32", or 84.32) for a
    ``reader_table`` in percent (``percent`` must match the one it was built with, to find the
    column names), or as a fraction for a numeric ``summary_table``.  Labels without a paper
    number get "–" (a string table) or NaN (a numeric one).  The paper prints one number per cell,
    with no interval, and does not say how many runs or seeds each comes from.  In a string table
    the numbers of the rows in ``reported`` (default: DeepSight, whose numbers the paper quotes
    from DeepSight's authors and did not run) carry " (reported)".
    """
    out = ours.copy()
    unknown = [label for label in paper if label not in ours.index]
    if unknown:
        raise ValueError(f"paper numbers for labels {unknown} that are not rows of the table")
    given = {k for row in paper.values() for k in row}
    if given - set(METRICS):
        raise ValueError(
            f"unknown metrics {sorted(given - set(METRICS))} in the paper's numbers; choose from {', '.join(METRICS)}"
        )
    for metric in (m for m in METRICS if m in given):
        column = _find_column(ours, metric, percent=percent and metric in ACCURACIES)
        textual = ours[column].dtype == object or pd.api.types.is_string_dtype(ours[column])
        missing = "–" if textual else math.nan
        values = [paper.get(label, {}).get(metric, missing) for label in ours.index]
        if textual:
            values = [v if isinstance(v, str) else f"{v:g}" for v in values]
            values = [
                f"{v}{REPORTED_MARK}" if label in reported and label in paper and v != missing else v
                for label, v in zip(ours.index, values)
            ]
        out.insert(out.columns.get_loc(column) + 1, f"{column} (paper)", values)
    return out


def _find_column(table: pd.DataFrame, metric: str, *, percent: bool) -> str:
    """The column of ``table`` holding ``metric``: its key (summary table) or its human name with
    any window (reader table)."""
    if metric in table.columns:
        return metric
    pattern = re.escape(column_name(metric, 987654321, percent=percent)).replace("987654321", r"\d+")
    found = [c for c in table.columns if isinstance(c, str) and re.fullmatch(pattern, c)]
    if len(found) != 1:
        raise ValueError(f"the table has {'no' if not found else 'more than one'} column for {metric!r}: {found}")
    return found[0]


def to_markdown(table: pd.DataFrame) -> str:
    """A Markdown pipe table of ``table`` (index as the first, unnamed column), for
    ``IPython.display.Markdown``: bold marks from ``reader_table`` render in Jupyter and the book."""

    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = [cell(table.index.name or "")] + [cell(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] + [" ---: "] * len(table.columns)) + "|"]
    for label, row in table.iterrows():
        lines.append("| " + " | ".join([cell(label)] + [cell(v) for v in row]) + " |")
    return "\n".join(lines)


def provenance_line(results: Iterable[RunResult], profile: str) -> str:
    """'profile smoke, seeds [0, 1], data: ..., hardware: ...' for captions."""
    results = list(results)
    seeds = sorted({r.config.seed for r in results})
    sources = sorted({r.meta.get("data_source", "?") for r in results})
    hardware = sorted({f"{r.meta.get('hardware', '?')} [{r.meta.get('device', '?')}]" for r in results})
    commits = sorted({(r.meta.get("git_commit") or "?")[:8] for r in results})
    return (
        f"Measured: profile {profile}, seeds {seeds}, data {'; '.join(sources)}, "
        f"hardware {'; '.join(hardware)}, commit {', '.join(commits)}."
    )


# --------------------------------------------------------------------------- seeds, pairs, curves

#: Short names of the differences ``paired_table`` shows (accuracies in percentage points).
DELTA_NAMES = {
    "best_main_acc": "Δ main, best",
    "best_backdoor_acc": "Δ backdoor, best",
    "mean_main_acc_last": "Δ main, last rounds",
    "mean_backdoor_acc_last": "Δ backdoor, last rounds",
    "final_main_acc": "Δ main, final",
    "final_backdoor_acc": "Δ backdoor, final",
    "mean_tpr": "Δ TPR",
    "mean_fpr": "Δ FPR",
    "mean_aggregation_seconds": "Δ seconds",
}


def _signed(value: float, decimals: int) -> str:
    """'+3.1', '−2.0' (a true minus sign), '0.0'."""
    text = f"{value:+.{decimals}f}"
    if float(text) == 0:
        text = f"{0:.{decimals}f}"
    return text.replace("-", "−")


def seed_mean(values: Iterable[float]) -> float:
    """The mean of ``values``, kept inside their range.

    Float rounding can put the mean of equal values one unit in the last place outside them (the
    mean of three 0.29s is 0.29000000000000004); seaborn's min-max error bars then have a negative
    length, which matplotlib refuses.  Use as the estimator beside ``errorbar=("pi", 100)``.
    """
    array = [float(v) for v in values]
    if not array:
        raise ValueError("seed_mean of no values")
    return min(max(math.fsum(array) / len(array), min(array)), max(array))


def format_range(mean: float, low: float, high: float, decimals: int = 1, *, n: int = 2, signed: bool = False) -> str:
    """One cell: "7.2 [5.0–9.1]" (mean [min–max]), or with ``signed`` "−3.1 [−5.0–+1.2]" (a
    difference: every sign shown, a true minus sign); only the mean when ``n`` (the number of seeds
    behind it) is 1; "–" when the mean is NaN.  The range always has its en dash: the book's
    fedgrad.js keeps such a "[lo–hi]" on one line."""
    if mean is None or math.isnan(mean):
        return "–"
    if signed:
        text = _signed(mean, decimals)
        return text if n < 2 else f"{text} [{_signed(low, decimals)}–{_signed(high, decimals)}]"
    text = f"{mean:.{decimals}f}"
    return text if n < 2 else f"{text} [{low:.{decimals}f}–{high:.{decimals}f}]"


def _by_seed(label: str, results: Sequence[RunResult]) -> dict[int, RunResult]:
    out: dict[int, RunResult] = {}
    for r in results:
        if r.config.seed in out:
            raise ValueError(f"label {label!r} has two runs with seed {r.config.seed}: one run per seed is expected")
        out[r.config.seed] = r
    return out


def paired_differences(
    runs_by_label: Mapping[str, Sequence[RunResult]], *, baseline: str, metric: str, window: int = 5
) -> pd.DataFrame:
    """Per label and seed: ``metric`` of the label's run minus that of the baseline's run *with the
    same seed* (same partition, attacker pool and sampled clients).

    Returns one row per (label, seed), labels in the order given (the baseline left out), seeds
    ascending, with columns ``label``, ``seed``, ``value``, ``baseline`` (the baseline's value) and
    ``difference`` (value minus baseline; fractions for accuracies, as ``RunResult.summary``).  A
    metric undefined in either run (None) gives NaN.  Raises ValueError when the baseline is
    missing, the metric unknown, a label has two runs of one seed, or a label's seeds differ from
    the baseline's (the error names both sets): differences are only paired on the same seeds.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    if baseline not in runs_by_label:
        raise ValueError(f"baseline {baseline!r} is not a label of the runs ({', '.join(map(str, runs_by_label))})")
    base = _by_seed(baseline, runs_by_label[baseline])
    rows = []
    for label, results in runs_by_label.items():
        if label == baseline:
            continue
        mine = _by_seed(label, results)
        if set(mine) != set(base):
            raise ValueError(
                f"label {label!r} has seeds {sorted(mine)} but the baseline {baseline!r} has seeds {sorted(base)}: "
                "paired differences need the same seeds on both sides"
            )
        for seed in sorted(mine):
            value = mine[seed].summary(window)[metric]
            reference = base[seed].summary(window)[metric]
            value = math.nan if value is None else float(value)
            reference = math.nan if reference is None else float(reference)
            rows.append(
                {"label": label, "seed": seed, "value": value, "baseline": reference, "difference": value - reference}
            )
    return pd.DataFrame(rows, columns=["label", "seed", "value", "baseline", "difference"])


def paired_long(
    groups: Mapping[str, Mapping[str, Sequence[RunResult]]],
    *,
    baseline: str,
    metrics: Sequence[str] = ("best_backdoor_acc", "best_main_acc"),
    window: int = 5,
) -> pd.DataFrame:
    """``paired_differences`` for every group (e.g. one per attack) and metric, in one long frame
    with the extra columns ``group`` and ``metric`` (the per-seed numbers behind ``paired_table``;
    save it as CSV)."""
    frames = []
    for g, runs in groups.items():
        for m in metrics:
            frame = paired_differences(runs, baseline=baseline, metric=m, window=window)
            frame["group"] = [g] * len(frame)  # a list: a tuple group stays one value
            frame["metric"] = m
            frames.append(frame)
    columns = ["group", "metric", "label", "seed", "value", "baseline", "difference"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def paired_table(long: pd.DataFrame, *, layout: str = "columns", percent: bool = True) -> pd.DataFrame:
    """The reader's table of ``paired_long``'s differences: cells "mean [min–max]" over the seeds
    of (label minus baseline), signed; accuracies in percentage points with one decimal (``percent``),
    TPR / FPR with two decimals; only the mean for one seed.

    ``layout="columns"``: one row per label, one column per group and metric ("black-box: Δ
    backdoor, best (pp)"), for a table of defenses against attacks.  ``layout="rows"``: one row
    per group (per "group, label" when there are several labels), one column per metric.
    """
    if layout not in ("columns", "rows"):
        raise ValueError(f"layout must be 'columns' or 'rows', got {layout!r}")
    groups = list(dict.fromkeys(long["group"]))
    labels = list(dict.fromkeys(long["label"]))
    metrics = list(dict.fromkeys(long["metric"]))

    def header(metric: str) -> str:
        accuracy = metric in ACCURACIES
        unit = " (pp)" if accuracy and percent else ""
        return f"{DELTA_NAMES[metric]}{unit}"

    def cell(frame: pd.DataFrame, metric: str) -> str:
        values = frame["difference"].dropna()
        if values.empty:
            return "–"
        scale, decimals = (100.0, 1) if percent and metric in ACCURACIES else (1.0, _DECIMALS.get(metric, 3))
        values = values * scale
        return format_range(values.mean(), values.min(), values.max(), decimals, n=len(values), signed=True)

    table: dict[str, dict[str, str]] = {}
    for (group, metric, label), frame in long.groupby(["group", "metric", "label"], sort=False):
        if layout == "columns":
            row, column = label, f"{group}: {header(metric)}"
        else:
            row, column = (group if len(labels) == 1 else f"{group}, {label}"), header(metric)
        table.setdefault(column, {})[row] = cell(frame, metric)
    if layout == "columns":
        order_rows = labels
        order_columns = [f"{g}: {header(m)}" for g in groups for m in metrics]
    else:
        order_rows = [g if len(labels) == 1 else f"{g}, {lab}" for g in groups for lab in labels]
        order_columns = [header(m) for m in metrics]
    out = pd.DataFrame(table).reindex(index=order_rows, columns=order_columns).fillna("–")
    out.index.name = None
    return out


def seed_range_table(
    per_seed: pd.DataFrame, *, by: str, columns: Mapping[str, str], decimals: int = 1, scale: float = 1.0
) -> pd.DataFrame:
    """Per-seed numbers (one row per run) as "mean [min–max]" cells: one row per value of ``by``
    (in order of appearance), one column per entry of ``columns`` ({column of ``per_seed``: its
    title}); values multiplied by ``scale``; only the mean for one seed."""
    out: dict[str, dict[Any, str]] = {title: {} for title in columns.values()}
    for key, frame in per_seed.groupby(by, sort=False):
        for column, title in columns.items():
            v = frame[column].dropna().astype(float) * scale
            out[title][key] = "–" if v.empty else format_range(v.mean(), v.min(), v.max(), decimals, n=len(v))
    table = pd.DataFrame(out)
    table.index.name = None
    return table


def over_rounds(
    runs: Mapping[str, Sequence[RunResult]], *, column: str = "backdoor_acc", smooth: int = 1
) -> pd.DataFrame:
    """Per-seed curves for figures: one row per (label, seed, evaluated round) with ``value``, the
    run's ``column`` smoothed by a trailing moving average over the last ``smooth`` *evaluated*
    rounds of that run (the paper's Figure 6 smooths each curve over 20 rounds; fewer at the
    start, ``min_periods=1``).  Rounds where ``column`` is None (not evaluated) are left out
    before smoothing.  Average over seeds afterwards, so a mean curve is the mean of smoothed runs."""
    if isinstance(smooth, bool) or not isinstance(smooth, int) or smooth < 1:
        raise ValueError(f"smooth (evaluated rounds in the moving average) must be an integer >= 1, got {smooth!r}")
    frames = []
    for label, results in runs.items():
        for r in results:
            points = [(rec["round"], rec[column]) for rec in r.history if rec.get(column) is not None]
            frame = pd.DataFrame(points, columns=["round", "raw"])
            frame["value"] = frame["raw"].astype(float).rolling(smooth, min_periods=1).mean()
            frame["label"] = [label] * len(frame)  # a list: a tuple label (d, a, defense) stays one value
            frame["seed"] = r.config.seed
            frames.append(frame)
    columns = ["label", "seed", "round", "raw", "value"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def trust_clearing(runs: Mapping[str, Sequence[RunResult]]) -> pd.DataFrame:
    """Whom FedGrad's trust score cleared, per run: one row per (label, seed) from the per-round
    diagnostics ``record["defense"]["cleared"]`` (clients the trust score took out of the
    suspicious set) and ``record["attackers"]``.

    Columns: ``suspicious benign`` (benign client-rounds the filters flagged before the trust
    score: flagged or cleared, not attackers), ``benign cleared`` (benign client-rounds cleared),
    ``benign clients cleared`` (distinct benign clients cleared at least once), ``attackers
    cleared`` (attacker client-rounds cleared: the trust score's mistakes) and ``attacker rounds``
    (attacker client-rounds in all).  A run without the diagnostics (trust off, another defense)
    counts zero clearings.
    """
    rows = []
    for label, results in runs.items():
        for r in results:
            suspicious_benign = benign_cleared = attackers_cleared = attacker_rounds = 0
            clients: set[int] = set()
            for record in r.history:
                attackers = set(record.get("attackers") or [])
                cleared = set((record.get("defense") or {}).get("cleared") or [])
                flagged = set(record.get("flagged") or [])
                suspicious_benign += len((flagged | cleared) - attackers)
                benign_cleared += len(cleared - attackers)
                attackers_cleared += len(cleared & attackers)
                attacker_rounds += len(attackers)
                clients |= cleared - attackers
            rows.append(
                {
                    "label": label,
                    "seed": r.config.seed,
                    "suspicious benign": suspicious_benign,
                    "benign cleared": benign_cleared,
                    "benign clients cleared": len(clients),
                    "attackers cleared": attackers_cleared,
                    "attacker rounds": attacker_rounds,
                }
            )
    return pd.DataFrame(rows)


def closeness_leaders(runs: Mapping[str, Sequence[RunResult]]) -> pd.DataFrame:
    """Whether an attacker held the highest closeness score of its round, per run: one row per
    (label, seed) from the per-round diagnostics ``record["defense"]["closeness"]`` (client id ->
    FedGrad's closeness score, present in the rounds that computed it) and ``record["attackers"]``.

    Columns: ``rounds`` (rounds with at least one attacker and a closeness score) and ``attacker
    highest`` (those of them whose highest score, ties included, is an attacker's).  A run without
    the diagnostics counts zero rounds.
    """
    rows = []
    for label, results in runs.items():
        for r in results:
            rounds = highest = 0
            for record in r.history:
                attackers = {str(c) for c in record.get("attackers") or []}
                scores = (record.get("defense") or {}).get("closeness") or {}
                if not attackers or not scores:
                    continue
                rounds += 1
                top = max(scores.values())
                highest += any(scores.get(c) == top for c in attackers)
            rows.append({"label": label, "seed": r.config.seed, "rounds": rounds, "attacker highest": highest})
    return pd.DataFrame(rows)
