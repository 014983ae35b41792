"""RunResult.load on a damaged file: an error naming the file and what is wrong, never a bare
JSONDecodeError or KeyError."""

from __future__ import annotations

import json
import re

import pytest

from fedgrad_core.config import ExperimentConfig
from fedgrad_core.results import ResultFileError, RunResult


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "run.json"
    RunResult(ExperimentConfig(rounds=2), [{"round": 1, "main_acc": 0.5}], {"device": "cpu"}).save(path)
    return path


def test_a_saved_result_loads(saved):
    result = RunResult.load(saved)
    assert result.config == ExperimentConfig(rounds=2) and result.history == [{"round": 1, "main_acc": 0.5}]


def test_a_truncated_file_names_the_file_and_the_position(saved):
    text = saved.read_text()
    saved.write_text(text[: len(text) // 2])
    with pytest.raises(ResultFileError) as err:
        RunResult.load(saved)
    message = str(err.value)
    assert message.startswith(f"result file {saved} is not valid JSON (")
    assert re.search(r": line \d+, column \d+\); a truncated or hand-edited file\?$", message)
    assert isinstance(err.value, ValueError) and err.value.__cause__ is None


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[1, 2]", "holds a JSON list, not a result object"),
        ('{"history": []}', "is not a run result: it has no config"),
        ('{"meta": {}}', "is not a run result: it has no config or history"),
        ('{"config": [], "history": []}', "config is a list, not an object"),
        ('{"config": {}, "history": {}}', "history must be a list of per-round objects"),
        ('{"config": {}, "history": [1]}', "history must be a list of per-round objects"),
        ('{"config": {}, "history": [], "meta": 3}', "meta is a int, not an object"),
        ('{"config": {"rounds": 2, "colour": 1}, "history": []}',
         "has a configuration this version cannot read: unknown configuration field(s) ['colour']"),
    ],
)
def test_a_file_that_is_not_a_result_names_the_file_and_why(tmp_path, content, expected):
    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(ResultFileError) as err:
        RunResult.load(path)
    assert str(err.value).startswith(f"result file {path}")
    assert expected in str(err.value)


def test_binary_garbage_is_named_as_not_text(tmp_path):
    path = tmp_path / "r.json"
    path.write_bytes(b'{"config": \xff\xfe}')
    with pytest.raises(ResultFileError, match=r"is not text \(byte 11 is not UTF-8\)"):
        RunResult.load(path)


def test_a_missing_file_is_still_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        RunResult.load(tmp_path / "absent.json")


def test_the_run_cache_treats_a_damaged_result_as_absent(tmp_path, caplog):
    from fedgrad_core.runs import cache_path, load_cached

    config = ExperimentConfig(rounds=2)
    path = cache_path(config, tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"config": config.to_dict()})[:-5])
    assert load_cached(config, tmp_path) is None
    assert "ignoring unreadable cached run" in caplog.text and "is not valid JSON" in caplog.text
