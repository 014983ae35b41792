"""Execute every notebook in notebooks/ with papermill on one profile; outputs go into book/.

    python book/run_notebooks.py --profile smoke [--only quickstart table2_edge_case]

A profile (notebooks/profiles.json) gives the values of each notebook's ``parameters`` cell; the
notebook turns them into an ``ExperimentConfig``.  The executed copies land in
book/experiments/, which the book renders as they are (the book does not execute them again).
The cell papermill injects with those values is collapsed in the book (``hide-input``), like the
parameters cell itself.  Finished runs are cached (``fedgrad_core.runs``, under
``$FEDGRAD_CACHE/runs``), so a second build, and a notebook that shares runs with another (Figure 6
with Table 2), reuses them.  The wall time of every notebook and of the whole build is printed and
written to book/experiments/timings.json, with what made each notebook's outputs: the git commit,
the uncommitted changes to the package, the notebooks and pyproject.toml (``dirty``), the package's
code fingerprint and the hardware (book/record.py puts them on the pages and into the record).
Run progress bars are off in the executed notebooks (``FEDGRAD_PROGRESS=0``): a page shows results,
not a log.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
EXECUTED = ROOT / "book" / "experiments"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--only", nargs="*", help="notebook names (without .ipynb)")
    parser.add_argument("--kernel", default="fedgrad")
    args = parser.parse_args(argv)
    import papermill

    profiles = json.loads((NOTEBOOKS / "profiles.json").read_text())
    if args.profile not in profiles:
        print(f"unknown profile {args.profile!r}; choose one of {sorted(profiles)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    EXECUTED.mkdir(parents=True, exist_ok=True)
    os.environ["FEDGRAD_PROGRESS"] = "0"  # the kernels inherit it: no progress bars on the pages
    made_by = provenance()
    timings: dict[str, float] = {}
    build_started = time.perf_counter()
    for source in sorted(NOTEBOOKS.glob("*.ipynb")):
        if args.only and source.stem not in args.only:
            continue
        params = {"profile": args.profile, **profiles[args.profile].get(source.stem, {})}
        target = EXECUTED / source.name
        started = time.perf_counter()
        print(f"running {source.name} ({args.profile}) -> {target.relative_to(ROOT)}", flush=True)
        papermill.execute_notebook(
            str(source), str(target), parameters=params, kernel_name=args.kernel, cwd=str(ROOT), progress_bar=False,
        )
        collapse_injected_parameters(target)
        timings[source.stem] = round(time.perf_counter() - started, 1)
        print(f"  done in {timings[source.stem]:.0f} s", flush=True)
    total = time.perf_counter() - build_started
    print(f"all notebooks ({args.profile}) in {total:.0f} s", flush=True)
    runs = {name: made_by for name in timings}
    record = {"profile": args.profile, "seconds": timings, "total_seconds": round(total, 1), "runs": runs}
    previous = EXECUTED / "timings.json"
    if args.only and previous.exists():  # a partial rerun keeps the other notebooks' times of this profile
        old = json.loads(previous.read_text())
        if old.get("profile") == args.profile:
            record["seconds"] = {**old.get("seconds", {}), **timings}
            record["runs"] = {**old.get("runs", {}), **runs}
            record["total_seconds"] = round(sum(record["seconds"].values()), 1)
    previous.write_text(json.dumps(record, indent=1) + "\n")
    return 0


def provenance() -> dict[str, object]:
    """The commit, the uncommitted changes that can change a result, the package's code fingerprint
    and the hardware of this build (git's answers are None outside a checkout)."""
    from execution_table import hardware  # book/ is on the path when this script runs

    from fedgrad_core.results import code_fingerprint

    def git(*words: str) -> str | None:
        try:
            done = subprocess.run(["git", *words], cwd=ROOT, capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError):
            return None
        return done.stdout

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", "fedgrad_core", "notebooks", "pyproject.toml")
    return {
        "commit": commit.strip() if commit else None,
        "dirty": None if status is None else sorted(line[3:] for line in status.splitlines() if line.strip()),
        "code_fingerprint": code_fingerprint(),
        "hardware": hardware(),
    }


def collapse_injected_parameters(path: Path) -> None:
    """Tag papermill's injected-parameters cell ``hide-input``: the book shows it collapsed."""
    notebook = json.loads(path.read_text())
    changed = False
    for cell in notebook["cells"]:
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags and "hide-input" not in tags:
            cell["metadata"]["tags"] = [*tags, "hide-input"]
            changed = True
    if changed:
        path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
