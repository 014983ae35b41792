"""Shared fixtures: a private data root and cache per session unless the caller set them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_configure(config):
    # Tests never write into the user's ~/.cache: a session folder unless FEDGRAD_* say otherwise.
    base = Path(config.rootpath) / ".pytest_cache" / "fedgrad"
    os.environ.setdefault("FEDGRAD_DATA_ROOT", str(base / "data"))
    os.environ.setdefault("FEDGRAD_CACHE", str(base / "cache"))


def _source() -> Path | None:
    value = os.environ.get("FEDGRAD_DATA_SOURCE")
    return Path(value) if value else None


@pytest.fixture
def data_source() -> Path:
    """The offline data folder (FEDGRAD_DATA_SOURCE); skips the test when it is not set."""
    source = _source()
    if source is None or not source.exists():
        pytest.skip("needs the offline data: set FEDGRAD_DATA_SOURCE (CI sets it to ../shared/data)")
    return source


@pytest.fixture
def clean_defenses():
    """Defenses registered during the test are removed afterwards, whatever the test did."""
    from fedgrad_core.defenses import available_defenses
    from fedgrad_core.defenses.base import REGISTRY

    before = set(available_defenses())
    yield
    for name in set(REGISTRY._factories) - before:
        REGISTRY.unregister(name)
    assert set(available_defenses()) == before
