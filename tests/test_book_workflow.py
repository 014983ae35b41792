"""The publishing workflow builds the site from the committed record (make site, which CI builds too),
checks it in the browser and deploys that HTML; CI also builds the smoke book from scratch."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML comes with the book extra: pip install -e '.[book]'")

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"


def _commands(script: str) -> list[str]:
    """Shell commands of a script, one per logical line (continuations joined, comments dropped)."""
    joined = re.sub(r"\s*\\\n\s*", " ", script)
    lines = (line.split("#", 1)[0].strip() for line in joined.splitlines())
    return [line for line in lines if line]


def _make_book(commands: list[str]) -> list[list[str]]:
    """Every `make book ...` invocation, as its words."""
    return [shlex.split(c) for c in commands if shlex.split(c)[:2] == ["make", "book"]]


def _steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def test_commands_parsing_by_hand():
    script = "set -e\n# make book PROFILE=paper\nmake book PROFILE=smoke  # the book\nFOO=1 \\\n  make test\n"
    assert _commands(script) == ["set -e", "make book PROFILE=smoke", "FOO=1 make test"]
    assert _make_book(_commands(script)) == [["make", "book", "PROFILE=smoke"]]


def _make(commands: list[str], target: str) -> list[list[str]]:
    """Every `make <target> ...` invocation, as its words."""
    return [shlex.split(c) for c in commands if shlex.split(c)[:2] == ["make", target]]


def test_workflow_publishes_the_site_from_the_record_and_deploys_it():
    # Prepare
    workflow = yaml.safe_load(WORKFLOW.read_text())
    steps = _steps(workflow)
    runs = [cmd for step in steps if "run" in step for cmd in _commands(step["run"])]
    # Assert: the workflow builds the site from the record (no data, no runs), never the book
    assert _make(runs, "site") == [["make", "site"]], f"the workflow should run make site once: {runs}"
    assert _make_book(runs) == [], "the workflow must not run the experiments (make book)"
    # the browser test runs after the build, on the built book, and that same folder is published
    browser = [i for i, cmd in enumerate(runs) if "tests/test_book_browser.py" in cmd]
    assert browser and browser[0] > runs.index("make site")
    assert all("FEDGRAD_REQUIRE_BROWSER=1" in runs[i] for i in browser)
    uploads = [s for s in steps if s.get("uses", "").startswith("actions/upload-pages-artifact@")]
    assert [s["with"]["path"] for s in uploads] == ["book/_build/html"]
    assert any(s.get("uses", "").startswith("actions/deploy-pages@") for s in steps)
    assert workflow["permissions"]["pages"] == "write" and workflow["permissions"]["id-token"] == "write"
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the key `on` as True
    assert "main" in triggers["push"]["branches"]


def test_ci_builds_the_smoke_book_and_the_site_each_checked_in_the_browser():
    commands = _commands((ROOT / ".ci" / "run").read_text())
    assert _make_book(commands) == [["make", "book", "PROFILE=smoke"]], "CI builds the smoke book once"
    assert _make(commands, "site") == [["make", "site"]], "CI builds the site from the record once"
    book, site = commands.index("make book PROFILE=smoke"), commands.index("make site")
    browser = [i for i, cmd in enumerate(commands) if "tests/test_book_browser.py" in cmd]
    assert any(book < i < site for i in browser), "the smoke book is opened in the browser before make site"
    assert any(i > site for i in browser), "the site is opened in the browser after make site"


def test_make_book_and_make_site_fail_on_warnings():
    # The make targets are where "no warnings" is enforced, for CI and the workflow alike.
    makefile = (ROOT / "Makefile").read_text()
    for target in ("book", "site"):
        recipe = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", makefile, flags=re.M)
        assert recipe, f"the Makefile has no {target} target"
        assert "jupyter-book build -W --keep-going book" in recipe.group(1)
    site = re.search(r"^site:.*\n((?:\t.*\n)+)", makefile, flags=re.M).group(1)
    assert "record.py restore" in site and "run_notebooks.py" not in site, "make site renders the record, runs nothing"
