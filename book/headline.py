"""Write book/_generated/headline.md: the reproduction at a glance, included by the intro.

    python book/headline.py

Per data set and attack of Table 2: FedAvg and FedGrad, main and backdoor accuracy (best over the
rounds, the paper's metric), ours beside the paper's.  Computed from what the book renders, so
after ``make book`` and ``make site`` alike: the Table 2 summary that book/record.py staged
(book/experiments/results/table2_edge_case/table2_summary.csv), the paper's numbers from the
``PAPER`` cell of the executed Table 2 notebook, and the run's profile, seeds and commit from
book/experiments/manifest.json.  Without them the file says how to produce them.
"""

from __future__ import annotations

import ast
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXECUTED = ROOT / "book" / "experiments"
OUT = ROOT / "book" / "_generated" / "headline.md"
NOTEBOOK = "table2_edge_case"
SUMMARY = Path("results") / NOTEBOOK / "table2_summary.csv"
DEFENSES = ("fedavg", "fedgrad")
PAGE = f"experiments/{NOTEBOOK}"


def paper_numbers(notebook: dict) -> dict[str, Any]:
    """The literal ``PAPER = {...}`` of the notebook (dataset -> attack -> defense -> (MA, BA) in %),
    with the aliases assigned after it (``PAPER["emnist"] = PAPER["mnist"]``)."""
    for cell in notebook["cells"]:
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] != "code" or "PAPER" not in source:
            continue
        try:
            body = ast.parse(source).body
        except SyntaxError:
            continue
        paper = None
        for node in body:
            if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
                continue
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id == "PAPER":
                try:
                    paper = ast.literal_eval(node.value)
                except ValueError:
                    paper = None
            elif (paper is not None and isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name)
                  and target.value.id == "PAPER" and isinstance(node.value, ast.Subscript)):
                try:
                    paper[ast.literal_eval(target.slice)] = paper[ast.literal_eval(node.value.slice)]
                except (ValueError, KeyError):
                    pass
        if paper is not None:
            return paper
    return {}


def _names() -> dict[str, str]:
    try:
        from fedgrad_core.pages import display_name
    except ImportError:  # the package is installed by make; plain keys otherwise
        return {}
    keys = ["cifar10", "mnist", "emnist", "digits", "blackbox", "pgd", "pgd_mr", *DEFENSES]
    return {k: display_name(k) for k in keys}


def _float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _pair(ma: float, ba: float) -> str:
    return "--" if math.isnan(ma) and math.isnan(ba) else f"{ma:.1f} / {ba:.1f}"


def rows(summary: list[dict[str, str]], paper: dict[str, Any], names: dict[str, str]) -> list[dict[str, Any]]:
    """One row per (data set, attack) in the summary's order, for FedAvg and FedGrad."""
    name = lambda key: names.get(key, key)  # noqa: E731
    found: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}
    by_label = {**{d: d for d in DEFENSES}, **{name(d): d for d in DEFENSES}}  # the display name or the key
    for r in summary:
        defense = by_label.get(r.get("label", ""))
        if defense is None:
            continue
        key = (r["dataset"], r["attack"])
        pair = (100 * _float(r.get("best_main_acc")), 100 * _float(r.get("best_backdoor_acc")))
        found.setdefault(key, {})[defense] = pair
    out = []
    for (dataset, attack), ours in found.items():
        theirs = paper.get(dataset, {}).get(attack, {})
        row = {"dataset": dataset, "attack": attack}
        for defense in DEFENSES:
            row[defense] = ours.get(defense, (math.nan, math.nan))
            row[f"{defense} (paper)"] = tuple(theirs[defense]) if defense in theirs else (math.nan, math.nan)
        out.append(row)
    return out


def _seeds(seeds: list | None) -> str:
    if not seeds:
        return "?"
    return f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))})"


def render(table: list[dict[str, Any]], entry: dict[str, Any], names: dict[str, str]) -> str:
    name = lambda key: names.get(key, key)  # noqa: E731
    if not table:
        return ("The headline table appears here once Table 2 has run: `make book` (or `make site` with a "
                "committed record).\n")
    commit = (entry.get("commit") or "unknown")[:10]
    lines = [
        "| Data set | Attack | FedAvg | FedAvg (paper) | FedGrad | FedGrad (paper) |",
        "|---|---|---|---|---|---|",
    ]
    for r in table:
        dataset = name(r["dataset"]) + (" (paper: EMNIST)" if r["dataset"] == "mnist" else "")
        cells = [_pair(*r[k]) for k in ("fedavg", "fedavg (paper)", "fedgrad", "fedgrad (paper)")]
        lines.append(f"| {{doc}}`{dataset} <{PAGE}>` | {name(r['attack'])} | " + " | ".join(cells) + " |")
    no_paper = sorted({name(r["dataset"]) for r in table
                       if all(math.isnan(v) for k in ("fedavg (paper)", "fedgrad (paper)") for v in r[k])})
    lines += [
        "",
        "Main / backdoor accuracy in %, the best over the rounds (the paper's metric), ours the mean over "
        f"{_seeds(entry.get('seeds'))} of the **{entry.get('profile') or '?'}** profile "
        f"(commit `{commit}`); \"(paper)\" is the paper's Table 2"
        + (" (for MNIST its EMNIST numbers)." if any(r["dataset"] == "mnist" for r in table) else ".")
        + (f"  The paper has no numbers for {', '.join(no_paper)}." if no_paper else "")
        + f"  Every defense, more metrics and the spread over seeds: {{doc}}`{PAGE}`; over the rounds: "
        "{doc}`experiments/fig6_ba_over_rounds`.",
    ]
    return "\n".join(lines) + "\n"


def main(folder: Path = EXECUTED, out: Path = OUT) -> int:
    summary_path = folder / SUMMARY
    notebook_path = folder / f"{NOTEBOOK}.ipynb"
    manifest_path = folder / "manifest.json"
    table: list[dict[str, Any]] = []
    entry: dict[str, Any] = {}
    names = _names()
    if summary_path.exists() and notebook_path.exists():
        with summary_path.open(newline="") as fh:
            summary = list(csv.DictReader(fh))
        table = rows(summary, paper_numbers(json.loads(notebook_path.read_text())), names)
        if manifest_path.exists():
            entry = json.loads(manifest_path.read_text())["notebooks"].get(NOTEBOOK, {})
    else:
        print(f"note: no {summary_path.relative_to(ROOT) if summary_path.is_relative_to(ROOT) else summary_path}: "
              "the headline says how to produce it", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(table, entry, names))
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} ({len(table)} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
