"""The publishing workflow builds the book with the make target CI uses, and deploys that HTML."""

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


def test_workflow_builds_with_the_ci_make_target_and_deploys_it():
    # Prepare
    ci = _make_book(_commands((ROOT / ".ci" / "run").read_text()))
    workflow = yaml.safe_load(WORKFLOW.read_text())
    steps = _steps(workflow)
    runs = [cmd for step in steps if "run" in step for cmd in _commands(step["run"])]
    # Assert: CI builds the book once, and the workflow runs exactly that command
    assert len(ci) == 1, f".ci/run should build the book once with make book, found {ci}"
    assert _make_book(runs) == ci, f"workflow runs {_make_book(runs)}, CI runs {ci}"
    # the browser test runs on the built book, and that same folder is published
    assert any("tests/test_book_browser.py" in cmd for cmd in runs)
    uploads = [s for s in steps if s.get("uses", "").startswith("actions/upload-pages-artifact@")]
    assert [s["with"]["path"] for s in uploads] == ["book/_build/html"]
    assert any(s.get("uses", "").startswith("actions/deploy-pages@") for s in steps)
    assert workflow["permissions"]["pages"] == "write" and workflow["permissions"]["id-token"] == "write"
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the key `on` as True
    assert "main" in triggers["push"]["branches"]


def test_make_book_fails_on_warnings():
    # The make target is where "no warnings" is enforced, for CI and the workflow alike.
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^book:.*\n((?:\t.*\n)+)", makefile, flags=re.M)
    assert recipe, "the Makefile has no book target"
    assert "jupyter-book build -W --keep-going book" in recipe.group(1)
