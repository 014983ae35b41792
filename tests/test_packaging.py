"""The conda environment and pyproject.toml pin the same versions, and torch is installed at its pin."""

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        specs += extra
    return dict(_split(s) for s in specs)


def _environment_pins() -> dict[str, str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    return dict(_split(m.group(1)) for line in lines if (m := re.match(r"\s*-\s+([A-Za-z0-9_.\-]+==\S+)", line)))


def _split(spec: str) -> tuple[str, str]:
    name, _, version = spec.partition("==")
    assert version, f"{spec!r} is not pinned with =="
    return name.strip().lower(), version.strip()


def test_environment_yml_pins_what_pyproject_pins():
    assert _environment_pins() == _pyproject_pins()


def _public(version: str) -> str:
    """The version without its local part (a CUDA wheel reports 2.14.1+cu130 in torch.__version__)."""
    return version.split("+", 1)[0]


@pytest.mark.parametrize("package", ["torch", "torchvision"])
def test_the_pinned_torch_pair_is_the_one_installed(package):
    assert _public(importlib.metadata.version(package)) == _public(_pyproject_pins()[package])
