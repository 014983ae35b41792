"""Execute every notebook in notebooks/ with papermill on one profile; outputs go into book/.

    python book/run_notebooks.py --profile smoke [--only quickstart]

A profile (notebooks/profiles.json) gives the values of each notebook's ``parameters`` cell; the
notebook turns them into an ``ExperimentConfig``.  The executed copies land in
book/experiments/, which the book renders as they are (the book does not execute them again).
"""

from __future__ import annotations

import argparse
import json
import logging
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
        print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
