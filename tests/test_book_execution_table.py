"""book/execution_table.py: the reproducibility page's environment and execution table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("execution_table", ROOT / "book" / "execution_table.py")
execution_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(execution_table)


def _executed(folder: Path, name: str, profile: str, duration: float, **params) -> None:
    meta = {"papermill": {"parameters": {"profile": profile, **params}, "duration": duration,
                          "end_time": "2026-11-25T20:30:05.123456", "exception": None}}
    (folder / f"{name}.ipynb").write_text(json.dumps({"cells": [], "metadata": meta}))


def test_rows_prefer_the_runners_timing_of_the_same_profile(tmp_path):
    # Prepare: two executed notebooks; the runner timed one of them on the same profile, and a
    # third on another profile
    _executed(tmp_path, "b_fig", "smoke", 12.4, repetitions=30)
    _executed(tmp_path, "a_table", "smoke", 100.0)
    (tmp_path / "timings.json").write_text(json.dumps({"profile": "smoke", "seconds": {"a_table": 101.5}}))
    # Execute
    rows = execution_table.executions(tmp_path)
    text = execution_table.render(rows, [("torch", "2.14.1")], "Some CPU (2 cores)")
    # Assert
    assert [r["notebook"] for r in rows] == ["a_table", "b_fig"]
    assert [r["seconds"] for r in rows] == [101.5, 12.4]
    assert rows[1]["parameters"] == {"repetitions": 30} and rows[1]["finished"] == "2026-11-25 20:30:05"
    assert "| `a_table` | smoke | 102 s | 2026-11-25 20:30:05 | ok |" in text
    assert "| `b_fig` | smoke | 12 s |" in text
    assert "python book/run_notebooks.py --profile smoke --only b_fig" in text
    assert "`repetitions=30`" in text and "Hardware: Some CPU (2 cores)." in text
    assert "| torch | 2.14.1 |" in text


def test_other_profiles_timing_is_not_used_and_empty_folder_says_so(tmp_path):
    _executed(tmp_path, "nb", "quick", 50.0)
    (tmp_path / "timings.json").write_text(json.dumps({"profile": "smoke", "seconds": {"nb": 5.0}}))
    assert execution_table.executions(tmp_path)[0]["seconds"] == 50.0
    # a notebook papermill has not finished (no end time) is not reported as ok
    meta = {"papermill": {"parameters": {"profile": "smoke"}, "duration": None, "end_time": None}}
    (tmp_path / "running.ipynb").write_text(json.dumps({"cells": [], "metadata": meta}))
    assert [r["status"] for r in execution_table.executions(tmp_path)] == ["ok", "incomplete"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "No executed notebooks" in execution_table.render(execution_table.executions(empty), [], "cpu")
