"""Ranges for the library, a lock for the reproduction: pyproject.toml, requirements/lock.txt,
requirements/oldest.txt and environment.yml agree, and the built wheel requires no exact version."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import LOCK, ROOT, build_wheel, read_pins  # shared with test_wheel_install.py

OLDEST = ROOT / "requirements" / "oldest.txt"

#: Extras that drive this repository's own checks: pinned with ==, equal to the lock.
TOOLING_EXTRAS = ("test", "book", "dev")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements(extra: str | None = None) -> list[Requirement]:
    project = _project()
    specs = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return [Requirement(s) for s in specs]


def _all_requirements() -> list[Requirement]:
    out = _requirements()
    for extra in _project()["optional-dependencies"]:
        out += _requirements(extra)
    return out


def _environment_pins() -> dict[str, str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    found = [m for line in lines if (m := re.match(r"\s*-\s+([A-Za-z0-9_.\-]+)==(\S+)", line))]
    return {canonicalize_name(m.group(1)): m.group(2) for m in found}


def test_read_pins_refuses_what_is_not_a_pin():
    assert read_pins("# c\n\nNumPy==2.0  # why\n") == {"numpy": "2.0"}
    with pytest.raises(AssertionError, match="line 1 is not name==version"):
        read_pins("numpy>=2\n")
    with pytest.raises(AssertionError, match="numpy is locked twice"):
        read_pins("numpy==2\nnumpy==2.1\n")


def test_environment_yml_names_the_locked_versions():
    assert _environment_pins() == read_pins(LOCK.read_text())


def test_the_lock_covers_every_dependency_and_extra():
    locked = read_pins(LOCK.read_text())
    missing = sorted({canonicalize_name(r.name) for r in _all_requirements()} - set(locked))
    assert not missing, f"not in {LOCK.name}: {missing}"


@pytest.mark.parametrize("requirement", _all_requirements(), ids=str)
def test_every_range_admits_the_locked_version(requirement):
    locked = read_pins(LOCK.read_text())[canonicalize_name(requirement.name)]
    assert requirement.specifier.contains(locked, prereleases=True), f"{requirement} excludes the locked {locked}"


def test_runtime_and_user_extras_are_ranges_tooling_extras_are_the_lock():
    locked = read_pins(LOCK.read_text())
    user = _requirements() + _requirements("ray") + _requirements("flower")
    pinned = [str(r) for r in user if any(s.operator in ("==", "===") for s in r.specifier)]
    assert not pinned, f"exact versions where a range belongs: {pinned}"
    for extra in TOOLING_EXTRAS:
        for r in _requirements(extra):
            assert str(r.specifier) == f"=={locked[canonicalize_name(r.name)]}", f"extra {extra}: {r}"


def test_oldest_constraints_are_the_lower_bounds():
    """requirements/oldest.txt (make oldest) installs exactly the lower bound of each range."""
    oldest = read_pins(OLDEST.read_text())
    bounds = {}
    for r in _requirements():
        lower = [s.version for s in r.specifier if s.operator == ">="]
        assert len(lower) == 1, f"{r} states no single lower bound (>=)"
        bounds[canonicalize_name(r.name)] = lower[0]
    assert oldest, "requirements/oldest.txt is empty"
    for name, version in oldest.items():
        assert name in bounds, f"{name} in oldest.txt is not a runtime dependency"
        assert re.sub(r"(\.0)+$", "", version) == re.sub(r"(\.0)+$", "", bounds[name]), (
            f"oldest.txt tests {name}=={version}, pyproject's lower bound is {bounds[name]}"
        )


def test_make_install_uses_the_lock_and_its_stamp_follows_it():
    makefile = (ROOT / "Makefile").read_text()
    assert "LOCK   := requirements/lock.txt" in makefile
    stamp = re.search(r"^STAMP\s*:=.*$", makefile, re.MULTILINE).group(0)
    assert "$(LOCK)" in stamp and "pyproject.toml" in stamp
    assert re.search(r"^\$\(STAMP\): pyproject.toml \$\(LOCK\)$", makefile, re.MULTILINE)
    assert "-m pip install --quiet -c $(LOCK) -e '.[test,book,flower]'" in makefile


def _public(version: str) -> str:
    """The version without its local part (a CUDA wheel reports 2.14.1+cu130)."""
    return version.split("+", 1)[0]


@pytest.mark.parametrize("package", ["torch", "torchvision"])
def test_the_locked_torch_pair_is_the_one_installed(package):
    assert _public(importlib.metadata.version(package)) == read_pins(LOCK.read_text())[package]


def wheel_requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = zf.read(name).decode()
    lines = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    return [Requirement(line.split(":", 1)[1].strip()) for line in lines]


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_the_wheel_requires_ranges_not_exact_versions(wheel):
    requirements = wheel_requirements(wheel)
    runtime = [r for r in requirements if r.marker is None or "extra" not in str(r.marker)]
    assert {canonicalize_name(r.name) for r in runtime} == {canonicalize_name(r.name) for r in _requirements()}
    exact = [str(r) for r in runtime if "==" in str(r.specifier)]
    assert not exact, f"the wheel's runtime requirements pin exact versions: {exact}"
