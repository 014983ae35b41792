"""Tables from RunResults, for notebooks and the book (no plotting here).

Three layers: ``tidy`` (one row per label, seed and round, for figures), ``summary_table`` (one
row per label: every metric of ``RunResult.summary`` as a mean over seeds with its 95% interval)
and ``reader_table`` (the same for readers: human column names, "95.3 ± 1.2" cells, best marked).
``with_paper`` puts the paper's numbers beside ours, labelled as the paper's.
"""

from __future__ import annotations

import math
import re
from typing import Iterable, Mapping, Optional, Sequence

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
    over seeds (column ``<metric>``) and the half-width of its 95% interval (``<metric>_ci95``,
    Student t over seeds, NaN for one seed); ``seeds`` (how many runs), ``rounds`` (the fewest
    rounds any of them ran; equal in a complete set) and ``window``.

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
    name (``column_name``), each cell "mean ± half-width of the 95% interval" ("95.3 ± 1.2"; only
    the mean for one seed; "–" where undefined), the best mean of each column marked in bold.

    ``percent``: accuracies in percent with one decimal (else fractions with three); TPR and FPR
    stay fractions with two decimals, as in the paper's Table 4; seconds have three.  ``best``: metric -> "min" or
    "max" (default ``BEST``; a metric absent from it is not marked); the best is taken over the
    rounded values shown, so ties are all marked.  ``exclude_from_best``: labels not competing
    (a reference row such as "fedavg, no attack").  ``markup``: "markdown" ("**95.3** ± 1.2"),
    "html" ("<b>95.3</b> ± 1.2") or "none".  Cells are strings; show the table with
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
        ci_column = f"{metric}_ci95"
        cis = summary[ci_column].astype(float) * scale if ci_column in summary else pd.Series(math.nan, summary.index)
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
            if not math.isnan(cis[label]):
                text += f" ± {cis[label]:.{decimals}f}"
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
