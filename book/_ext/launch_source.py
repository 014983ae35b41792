"""Sphinx extension for this book: launch buttons open the source notebook in notebooks/.

sphinx-book-theme builds a page's Colab (or Binder) link from ``repository.path_to_book`` and the
page's own path, i.e. ``book/experiments/<name>.ipynb``: the executed copy, which is generated
(book/run_notebooks.py, book/record.py restore) and not in the repository.  A reader who wants to
rerun a page on a free GPU wants the parameterised notebook ``notebooks/<name>.ipynb``, whose first
code cell installs fedgrad_core when it is missing.  This handler runs after the theme's
(priority 501) and points every launch link of an experiment page there.
"""

from __future__ import annotations

from typing import Any

#: Pages rendered from executed notebooks, and where their sources live in the repository.
EXECUTED_PREFIX = "experiments/"
SOURCE_FOLDER = "notebooks"


def retarget(buttons: Any, old: str, new: str) -> int:
    """Replace ``old`` by ``new`` in every ``url`` of the (nested) header buttons; the count."""
    count = 0
    if isinstance(buttons, list):
        return sum(retarget(b, old, new) for b in buttons)
    if isinstance(buttons, dict):
        url = buttons.get("url")
        if isinstance(url, str) and old in url:
            buttons["url"] = url.replace(old, new)
            count += 1
        count += retarget(buttons.get("buttons"), old, new)
    return count


def launch_from_source(app, pagename, templatename, context, doctree) -> None:
    if not pagename.startswith(EXECUTED_PREFIX):
        return
    book = app.config.html_theme_options.get("path_to_docs", "").strip("/")
    old = f"{book}/{pagename}.ipynb" if book else f"{pagename}.ipynb"
    new = f"{SOURCE_FOLDER}/{pagename[len(EXECUTED_PREFIX) :]}.ipynb"
    retarget(context.get("header_buttons"), old, new)


def setup(app) -> dict[str, Any]:
    app.connect("html-page-context", launch_from_source, priority=502)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
