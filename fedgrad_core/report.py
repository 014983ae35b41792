"""Tidy tables from RunResults, for notebooks and the book (no plotting here)."""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import pandas as pd

from fedgrad_core.results import RunResult


def tidy(runs: Mapping[str, Sequence[RunResult]]) -> pd.DataFrame:
    """One row per (label, seed, round) with the history's scalar columns."""
    frames = []
    for label, results in runs.items():
        for result in results:
            frame = result.to_frame()[["round", "main_acc", "backdoor_acc", "tpr", "fpr", "aggregation_seconds"]]
            frames.append(frame.assign(label=label, seed=result.config.seed))
    return pd.concat(frames, ignore_index=True)


def summary_table(runs: Mapping[str, Sequence[RunResult]], *, last: int = 5) -> pd.DataFrame:
    """Per label: main accuracy at the end, backdoor accuracy averaged over the ``last`` evaluated
    rounds (one round is noisy when attackers come and go), mean TPR / FPR over the rounds where
    they are defined, and the mean aggregation time; mean and spread over seeds."""
    rows = []
    for label, results in runs.items():
        per_seed = []
        for r in results:
            f = r.to_frame()
            evaluated = f.dropna(subset=["main_acc"])
            per_seed.append({
                "main_acc": evaluated["main_acc"].iloc[-1],
                "backdoor_acc": evaluated["backdoor_acc"].tail(last).mean(),
                "tpr": f["tpr"].dropna().mean(),
                "fpr": f["fpr"].dropna().mean(),
                "seconds": f["aggregation_seconds"].mean(),
            })
        table = pd.DataFrame(per_seed)
        row = {"label": label, "seeds": len(results)}
        for col in table:
            row[col] = table[col].mean()
            if len(results) > 1:
                row[f"{col}_std"] = table[col].std()
        rows.append(row)
    return pd.DataFrame(rows).set_index("label")


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
