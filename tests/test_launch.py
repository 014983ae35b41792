"""Rerun a page on a free GPU: the book's Colab launch buttons, and each notebook's set-up cell,
which installs fedgrad_core from the repository only where it is missing (no network used here)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML comes with the book extra: pip install -e '.[book]'")

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SETUP_TAG = "fedgrad-setup"

sys.path.insert(0, str(BOOK / "_ext"))
import launch_source  # noqa: E402  (book/_ext, the book's local Sphinx extensions)


def _config() -> dict:
    return yaml.safe_load((BOOK / "_config.yml").read_text())


def _setup_cells(path: Path) -> list[dict]:
    cells = json.loads(path.read_text())["cells"]
    return [c for c in cells if SETUP_TAG in c.get("metadata", {}).get("tags", [])]


def _setup_source(path: Path) -> str:
    (cell,) = _setup_cells(path)
    return "".join(cell["source"])


def test_the_book_has_colab_launch_buttons_for_the_repository():
    config = _config()
    assert config["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    repository = config["repository"]
    assert repository["url"].startswith("https://github.com/") and repository["url"].endswith("/fedgrad-companion")
    assert repository["path_to_book"] == "book" and repository["branch"]
    assert config["sphinx"]["local_extensions"]["launch_source"] == "_ext"


def test_every_experiment_page_launches_its_committed_source_notebook():
    toc = (BOOK / "_toc.yml").read_text()
    pages = [line.split("file:")[1].strip() for line in toc.splitlines() if "file: experiments/" in line]
    assert pages, "no experiment pages in the table of contents"
    for page in pages:
        name = page[len(launch_source.EXECUTED_PREFIX) :]
        assert (ROOT / launch_source.SOURCE_FOLDER / f"{name}.ipynb").exists(), page


def _theme_buttons(path_rel_repo: str) -> list[dict]:
    """Header buttons shaped as sphinx-book-theme builds them (a launch group of links)."""
    return [
        {"type": "link", "url": "https://example.org/fullscreen"},
        {
            "type": "group",
            "tooltip": "Launch interactive content",
            "buttons": [
                {
                    "type": "link",
                    "text": "Colab",
                    "url": f"https://colab.research.google.com/github/o/fedgrad-companion/blob/main/{path_rel_repo}",
                }
            ],
        },
    ]


def test_launch_links_of_experiment_pages_point_at_notebooks():
    app = SimpleNamespace(config=SimpleNamespace(html_theme_options={"path_to_docs": "book"}))
    context = {"header_buttons": _theme_buttons("book/experiments/table2_edge_case.ipynb")}
    launch_source.launch_from_source(app, "experiments/table2_edge_case", "page.html", context, None)
    (colab,) = context["header_buttons"][1]["buttons"]
    assert (
        colab["url"]
        == "https://colab.research.google.com/github/o/fedgrad-companion/blob/main/notebooks/table2_edge_case.ipynb"
    )
    assert context["header_buttons"][0]["url"] == "https://example.org/fullscreen"

    other = {"header_buttons": _theme_buttons("book/method.md")}
    launch_source.launch_from_source(app, "method", "page.html", other, None)
    assert other["header_buttons"][1]["buttons"][0]["url"].endswith("/blob/main/book/method.md")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_notebook_has_one_hidden_setup_cell_before_its_code(path):
    cells = json.loads(path.read_text())["cells"]
    setup = _setup_cells(path)
    assert len(setup) == 1, f"{path.name}: {len(setup)} set-up cells"
    assert "remove-cell" in setup[0]["metadata"]["tags"] and not setup[0].get("outputs")
    first_code = next(c for c in cells if c["cell_type"] == "code")
    assert first_code == setup[0], f"{path.name}: the set-up cell must run before any other code"
    assert _setup_source(path) == _setup_source(NOTEBOOKS[0]), f"{path.name}: the set-up cells differ"


def _run_setup(source: str, monkeypatch, *, installed: bool) -> list:
    calls: list = []
    if not installed:
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fedgrad_core" else 1)
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: calls.append((args, kwargs)))
    exec(compile(source, "<setup cell>", "exec"), {"__name__": "__main__"})
    return calls


def test_the_setup_cell_does_nothing_where_fedgrad_core_is_installed(monkeypatch):
    assert importlib.util.find_spec("fedgrad_core") is not None
    assert _run_setup(_setup_source(NOTEBOOKS[0]), monkeypatch, installed=True) == []


def test_the_setup_cell_installs_from_the_books_repository_where_missing(monkeypatch):
    calls = _run_setup(_setup_source(NOTEBOOKS[0]), monkeypatch, installed=False)
    ((args, kwargs),) = calls
    command = args[0]
    assert command[:4] == [sys.executable, "-m", "pip", "install"] and kwargs == {"check": True}
    assert command[-1] == f"fedgrad-core @ git+{_config()['repository']['url']}"
