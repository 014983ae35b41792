"""Sphinx extension for this book: every script tag once per page.

sphinx-thebe and sphinx-togglebutton register their inline set-up scripts twice under Jupyter
Book 1.0.4 (one ``const THEBE_JS_URL`` per registration), and the second ``const`` is a
JavaScript SyntaxError on every page.  Dropping repeated script entries (same file, same
attributes, same inline body) before the page is written removes the error without touching the
extensions.  tests/test_book_browser.py fails on any console error, so a regression shows.
"""

from __future__ import annotations

from typing import Any


def _key(script: Any) -> tuple:
    filename = getattr(script, "filename", script) or ""  # inline scripts: None or ""
    attributes = getattr(script, "attributes", {}) or {}
    return (str(filename), tuple(sorted((str(k), str(v)) for k, v in attributes.items())))


def dedupe_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple] = set()
    unique = []
    for script in scripts:
        key = _key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
