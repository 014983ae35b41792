"""Check mutmut's mutants in one Python process: a faster ``mutmut run`` for this project.

    mutmut run 'fedgrad_core.defenses.krum*'       # once: generates mutants/ and the test map (stop it after)
    python tools/mutants_in_process.py mutants/ krum.jsonl 'fedgrad_core.defenses.krum.*' [--shard 0/2]
    python tools/mutants_in_process.py mutants/ krum.jsonl --summary
    python tools/mutants_in_process.py mutants/ again.jsonl NAME... --tests tests/test_krum.py   # after new tests

``mutmut run`` starts a fresh pytest for every mutant (its ``forkserver`` isolation: torch is not
fork-safe), and on the 2-core machine importing torch, scikit-learn and the test files costs about
13 of the 20 seconds a FedGrad mutant takes.  mutmut's trampolines read ``MUTANT_UNDER_TEST`` at
every call, so one process can import everything once and run ``pytest.main`` per mutant over the
tests that cover its function (``mutants/mutmut-stats.json``, written by ``mutmut run``), about
2 s a mutant.  Statuses as mutmut's: ``killed`` (a test failed), ``survived``, ``timeout``
(300 s), ``no tests``.  After each mutant the server's workspace is released, and every 50 mutants
the unmutated code must pass the same tests again, so a mutant that left state behind stops the
run instead of faking kills (on base.py that check stopped a run; the workspace is the one piece of
state the package keeps between calls).  Results are appended to a JSON-lines file, so a stopped
run resumes where it was.  Its first version (the same per-mutant run, before the workspace release,
the ``--tests`` option and the listing from the mutated sources) was checked against ``mutmut run``
on 52 FedGrad mutants (27 survivors, 25 killed): the same status for every one.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

PYTEST_ARGS = ["-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", "--no-header", "--tb=no", "-W", "ignore"]
TIMEOUT_S = 300
BASELINE_EVERY = 50
MUTANT_DEF = re.compile(r"^\s*def (x\S*?__mutmut_\d+)\(", re.MULTILINE)


class MutantTimeout(BaseException):
    """Raised by SIGALRM inside a test: BaseException, so no ``except Exception`` swallows it."""


def _alarm(*_: Any) -> None:
    raise MutantTimeout()


def run_tests(name: str, tests: list[str]) -> str:
    """``killed`` / ``survived`` / ``timeout`` for mutant ``name`` ('' for the unmutated code)."""
    import pytest

    os.environ["MUTANT_UNDER_TEST"] = name
    signal.alarm(TIMEOUT_S)
    try:
        rc = pytest.main([*PYTEST_ARGS, *tests])
    except MutantTimeout:
        return "timeout"
    finally:
        signal.alarm(0)
        os.environ["MUTANT_UNDER_TEST"] = ""
        reset_state()
    return "survived" if rc == 0 else "killed"


def reset_state() -> None:
    """Drop what the package keeps between calls (the server's workspace), which a mutant may
    have left in a state the unmutated code would then reuse."""
    from fedgrad_core.defenses import base

    base.release_workspace()


def summary(out: Path) -> None:
    """Counts by module and status, and the survivors by name."""
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    by_module = Counter((r["name"].split(".")[2], r["status"]) for r in rows)
    for module in sorted({m for m, _ in by_module}):
        print(module, {status: n for (m, status), n in sorted(by_module.items()) if m == module})
    for r in rows:
        if r["status"] != "killed":
            print(r["status"], r["name"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mutants_dir", type=Path, help="mutmut's mutants/ folder")
    parser.add_argument("out", type=Path, help="results, one JSON object a line (appended; a rerun resumes)")
    parser.add_argument("patterns", nargs="*", help="mutant names or fnmatch patterns (default: all)")
    parser.add_argument("--shard", default="0/1", help="i/n: every n-th mutant from the i-th (parallel runs)")
    parser.add_argument("--summary", action="store_true", help="print the counts of OUT and stop")
    parser.add_argument(
        "--tests", nargs="+", help="run these test files for every mutant, not the map's (tests added since the map)"
    )
    args = parser.parse_args(argv)
    if args.summary:
        summary(args.out)
        return 0
    mutants_dir = args.mutants_dir.resolve()
    stats_file = mutants_dir / "mutmut-stats.json"
    if not stats_file.exists():
        print(f"error: {stats_file} not found: run `mutmut run` once to generate the mutants", file=sys.stderr)
        return 2
    index, _, count = args.shard.partition("/")
    os.chdir(mutants_dir)
    sys.path.insert(0, str(mutants_dir))
    os.environ["MUTANT_UNDER_TEST"] = ""
    import fedgrad_core

    if not str(fedgrad_core.__file__).startswith(str(mutants_dir)):
        print(f"error: fedgrad_core imported from {fedgrad_core.__file__}, not from {mutants_dir}", file=sys.stderr)
        return 2
    tests_by_function: dict[str, list[str]] = json.loads(stats_file.read_text())["tests_by_mangled_function_name"]
    names = all_mutants(mutants_dir)
    names = [n for n in names if not args.patterns or any(fnmatch.fnmatchcase(n, p) for p in args.patterns)]
    names = names[int(index) :: int(count or 1)]
    done = {json.loads(line)["name"] for line in args.out.read_text().splitlines()} if args.out.exists() else set()
    signal.signal(signal.SIGALRM, _alarm)
    with args.out.open("a") as out:
        for i, name in enumerate(names):
            if name in done:
                continue
            tests = args.tests or sorted(tests_by_function.get(name.rsplit("__mutmut_", 1)[0], []))
            started = time.perf_counter()
            status = run_tests(name, tests) if tests else "no tests"
            out.write(json.dumps({"name": name, "status": status, "s": round(time.perf_counter() - started, 2)}) + "\n")
            out.flush()
            if tests and i % BASELINE_EVERY == 0 and run_tests("", tests) != "survived":
                print(f"error: the unmutated code fails its tests after {name}: state leaked", file=sys.stderr)
                return 2
    return 0


def all_mutants(mutants_dir: Path) -> list[str]:
    """Every mutant of the mutated files, named as mutmut names them (``module.function__mutmut_n``)."""
    names = []
    for path in sorted((mutants_dir / "fedgrad_core").rglob("*.py")):
        module = ".".join(path.relative_to(mutants_dir).with_suffix("").parts)
        names += [f"{module}.{m}" for m in MUTANT_DEF.findall(path.read_text())]
    return names


if __name__ == "__main__":
    raise SystemExit(main())
