"""The built wheel, installed into a fresh virtual environment with its runtime dependencies only
(no test, book or dev extras), runs the README's API example: what a researcher's ``pip install``
gets.  The versions come from requirements/lock.txt (pip -c), the packages from pip's index and
cache; where pip cannot reach an index, the test skips and says so.  Measured on the project's
2-core machine: see the README ("Versions")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import LOCK, ROOT, build_wheel, read_pins  # the same wheel build as the metadata test

#: pip's words for "no index to download from" (offline machine, no proxy): the test skips on these.
NO_INDEX = (
    "No matching distribution found",
    "Could not find a version that satisfies",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "NewConnectionError",
    "ProxyError",
    "Read timed out",
)

#: The README's API example (``## The API``), on digits, with fewer rounds: the same calls.
EXAMPLE = textwrap.dedent(
    """
    import json, sys
    import torch
    import fedgrad_core
    from fedgrad_core import ExperimentConfig, run_experiment, RunResult
    from fedgrad_core.defenses import ClientUpdate, make_defense

    config = ExperimentConfig(dataset="digits", defense="fedgrad", attack="blackbox",
                              rounds=3, num_clients=8, clients_per_round=4, pretrain_epochs=1,
                              defense_params={"switch_round": 2}, seed=0)
    result = run_experiment(config, out="results/run.json", progress=False)
    frame = result.to_frame()
    loaded = RunResult.load("results/run.json")

    defense = make_defense("fedgrad", attacker_fraction=0.25)
    global_state = {"fc.weight": torch.zeros(10, 4), "fc.bias": torch.zeros(10)}
    gen = torch.Generator().manual_seed(0)
    updates = [ClientUpdate(i, {k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in global_state.items()},
                            20 + i) for i in range(6)]
    agg = defense.aggregate(global_state, updates, 1)
    print(json.dumps({
        "module": fedgrad_core.__file__, "prefix": sys.prefix, "rounds": len(frame),
        "columns": sorted(frame.columns), "loaded_rounds": len(loaded.history),
        "main_acc": result.last("main_acc"), "keys": sorted(agg.global_state), "flagged": sorted(agg.flagged),
    }))
    """
)


def _pip_cannot_reach_an_index(output: str) -> bool:
    return any(marker in output for marker in NO_INDEX)


@pytest.mark.slow
def test_the_wheel_installs_alone_and_runs_the_readme_example(tmp_path):
    started = time.monotonic()
    wheel = build_wheel(tmp_path / "dist")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    # --no-compile: no byte-compiling torch's thousands of modules (a third of the install's time)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-compile", "-c", str(LOCK), str(wheel)],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    installed_in = time.monotonic() - started
    output = install.stdout + install.stderr
    if install.returncode != 0 and _pip_cannot_reach_an_index(output):
        last = [line for line in output.splitlines() if line.strip() and not line.startswith("WARNING")][-1:]
        pytest.skip(f"pip cannot install the wheel's dependencies here (no package index reachable): {last}")
    assert install.returncode == 0, output[-4000:]

    # Only the runtime dependencies (and theirs): no extra's package came along.
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True)
    names = {line.split("==")[0].lower() for line in listed.stdout.splitlines()}
    for extra_only in ("pytest", "jupyter-book", "papermill", "seaborn", "flwr", "ray", "ruff", "mypy"):
        assert extra_only not in names, f"{extra_only} was installed with the runtime dependencies"
    locked = read_pins(LOCK.read_text())
    for name in ("numpy", "scikit-learn", "scipy", "pandas", "tqdm", "torch"):
        version = next(
            line.split("==")[1] for line in listed.stdout.splitlines() if line.lower().startswith(name + "==")
        )
        assert version.split("+")[0] == locked[name], f"{name} {version} is not the locked {locked[name]}"

    # The README example, outside the checkout (so that its fedgrad_core cannot be imported).
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FEDGRAD_PLUGINS")}
    env.update(FEDGRAD_CACHE=str(tmp_path / "cache"), FEDGRAD_DATA_ROOT=str(tmp_path / "data"))
    run = subprocess.run([str(python), "-c", EXAMPLE], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]

    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["module"].startswith(str(venv)) and not out["module"].startswith(str(ROOT))
    assert out["rounds"] == 3 and out["loaded_rounds"] == 3 and 0.0 < out["main_acc"] <= 1.0
    assert {"main_acc", "backdoor_acc", "tpr", "fpr", "flagged"} <= set(out["columns"])
    assert out["keys"] == ["fc.bias", "fc.weight"]
    assert (work / "results" / "run.json").exists()

    # The console script that the wheel declares.
    listing = subprocess.run([str(venv / "bin" / "fedgrad"), "list"], cwd=work, env=env, capture_output=True, text=True)
    assert listing.returncode == 0 and "  fedgrad  " in listing.stdout, listing.stderr[-2000:]
    print(f"wheel test: install {installed_in:.0f} s, total {time.monotonic() - started:.0f} s")
