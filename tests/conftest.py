"""Shared fixtures: a private data root and cache per session unless the caller set them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from packaging.utils import canonicalize_name

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


# --------------------------------------------------------------------------- FedGrad's test rounds
# The FedGrad tests share these models (``from conftest import ...``).
#
# The tiny model: ``body`` (2 x 2 + 2), then the ultimate layer ``fc`` (3 classes x 2 features),
# dyadic values, so that sums and averages are exact in float32.  Soft filter rounds: client ``i``
# sends ``fc.weight = W_prev + c_i E`` (``E`` all 0.25, nothing else changes).  Then
# ``W_i - W* = (c_i - cbar) E`` and ``W* - W_prev = cbar E`` with ``cbar`` the sample-weighted mean
# of the ``c``: for ``cbar > 0`` the raw score is +1 above ``cbar`` and -1 below, so the min-max
# scaled score is 1 (HIGH) or 0 (LOW), and the running means are plain fractions of high rounds.

HIGH, LOW = 3.0, 1.0


def tiny_global(*, batchnorm: bool = False) -> dict[str, torch.Tensor]:
    g = {
        "body.weight": torch.tensor([[0.5, -0.25], [0.75, 1.0]]),
        "body.bias": torch.tensor([0.25, -0.5]),
    }
    if batchnorm:
        g.update({
            "bn.weight": torch.tensor([1.0, 0.5]),
            "bn.bias": torch.tensor([0.0, 0.25]),
            "bn.running_mean": torch.tensor([0.5, -0.5]),
            "bn.running_var": torch.tensor([1.0, 2.0]),
            "bn.num_batches_tracked": torch.tensor(7),
        })  # fmt: skip
    g["fc.weight"] = torch.tensor([[0.5, -0.5], [0.25, 0.75], [-1.0, 0.5]])
    g["fc.bias"] = torch.tensor([0.5, -0.25, 0.125])
    return g


G = tiny_global()
E = torch.full((3, 2), 0.25)


def client(cid: int, n: int = 1, g: dict | None = None, **changes: torch.Tensor):
    """``g`` (default ``G``) plus the given changes (keys with dots written as ``__``)."""
    from fedgrad_core.defenses import ClientUpdate

    g = G if g is None else g
    state = {k: v.clone() for k, v in g.items()}
    for key, delta in changes.items():
        name = key.replace("__", ".")
        state[name] = state[name] + delta
    return ClientUpdate(cid, state, n)


def soft_client(cid: int, c: float, n: int = 1):
    return client(cid, n, fc__weight=c * E)


# The digits model's rounds: benign clients with non-IID by-class patterns, three colluding attackers.
NUM_CLASSES = 10


def digits_global_state() -> dict[str, torch.Tensor]:
    from fedgrad_core.models import make_model

    model = make_model("digits_mlp", in_channels=1, num_classes=NUM_CLASSES, seed=0)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def synthetic_round(
    g: dict[str, torch.Tensor],
    *,
    num_benign: int = 7,
    attackers: tuple[int, ...] = (7, 8, 9),
    seed: int = 0,
) -> list:
    """Benign clients: non-IID by-class patterns -1 + 5 e_c with their own dominant class
    c = 2 + cid % 8 (mutually orthogonal) plus a shared main-task pattern, small noise
    everywhere.  Attackers: one shared pattern
    (class 1, the poisoned label) and a shared shift of the whole model, plus small individual
    noise: colluders trained on the same poisoned data."""
    from fedgrad_core.defenses import ClientUpdate

    gen = torch.Generator().manual_seed(seed)
    rep = torch.rand(g["classifier.weight"].shape[1], generator=torch.Generator().manual_seed(99))
    main_task = 0.7 * torch.randn(NUM_CLASSES, generator=torch.Generator().manual_seed(5))

    def class_pattern(c: int) -> torch.Tensor:
        return -torch.ones(NUM_CLASSES) + 5 * torch.eye(NUM_CLASSES)[c]

    attack_shift = {
        k: 0.02 * torch.randn(v.shape, generator=torch.Generator().manual_seed(7)) for k, v in g.items()
    }
    ids = list(range(num_benign)) + list(attackers)
    updates = []
    for cid in ids:
        bad = cid in attackers
        state = {k: v + 0.002 * torch.randn(v.shape, generator=gen) for k, v in g.items()}
        if bad:
            pattern = class_pattern(1) + 0.2 * torch.randn(NUM_CLASSES, generator=gen)
            for k in state:
                state[k] = state[k] + attack_shift[k]
        else:
            pattern = class_pattern(2 + cid % 8) + main_task + 0.2 * torch.randn(NUM_CLASSES, generator=gen)
        state["classifier.weight"] = state["classifier.weight"] + 0.01 * torch.outer(pattern, rep)
        state["classifier.bias"] = state["classifier.bias"] + 0.01 * pattern
        updates.append(ClientUpdate(cid, state, 50 + 5 * (cid % 3)))
    return updates


@pytest.fixture
def kmeans_calls(monkeypatch) -> list[dict]:
    """The keyword arguments of every ``sklearn.cluster.KMeans`` built during the test."""
    import sklearn.cluster

    seen: list[dict] = []

    class Recording(sklearn.cluster.KMeans):
        def __init__(self, **kwargs):
            seen.append(kwargs)
            super().__init__(**kwargs)

    monkeypatch.setattr(sklearn.cluster, "KMeans", Recording)
    return seen


# --------------------------------------------------------------------------- the lock and the wheel
# Shared by test_dependencies.py and test_wheel_install.py (``from conftest import ...``).

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"


def read_pins(text: str) -> dict[str, str]:
    """``name==version`` lines of a pip constraints file (comments and blank lines skipped)."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        assert match, f"line {number} is not name==version: {raw!r}"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"{name} is locked twice"
        pins[name] = match.group(2)
    return pins


def build_wheel(out: Path) -> Path:
    """``pip wheel`` of a copy of the package's sources (the build leaves build/ and egg-info in the
    tree it builds), without dependencies and without build isolation: this environment's
    setuptools, no download."""
    src = out / "src"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "fedgrad_core", src / "fedgrad_core", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out)]
    done = subprocess.run([*pip, str(src)], capture_output=True, text=True)
    assert done.returncode == 0, f"pip wheel failed:\n{done.stderr[-3000:]}"
    (wheel,) = out.glob("fedgrad_core-*.whl")
    return wheel
