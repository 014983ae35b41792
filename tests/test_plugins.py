"""Plug-ins end to end: a defense written as a plain function and an attack written as a class,
both defined here, registered, and run through ``run_experiment`` and the CLI on tiny digits runs;
the book's example module through ``FEDGRAD_PLUGINS`` in a fresh process."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedgrad_core import ExperimentConfig, run_experiment
from fedgrad_core.attacks import Attack
from fedgrad_core.attacks.base import REGISTRY as ATTACKS
from fedgrad_core.cli import main
from fedgrad_core.data.task import Split
from fedgrad_core.defenses import Aggregate, ClientUpdate, make_defense
from fedgrad_core.defenses.base import REGISTRY as DEFENSES

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(dataset="digits", num_clients=8, clients_per_round=4, rounds=2, local_epochs=1, pretrain_epochs=1)


class Calls:
    rounds: list[int] = []
    attackers: list[int] = []


def lowest_id_out(global_state, updates, round_idx):
    """FedAvg (plain mean) of all but the lowest client id, which is flagged."""
    Calls.rounds.append(round_idx)
    low = min(u.client_id for u in updates)
    kept = [u for u in updates if u.client_id != low]
    new = {
        k: torch.stack([u.state[k] for u in kept]).mean(dim=0) if torch.is_floating_point(t) else t.clone()
        for k, t in global_state.items()
    }
    return Aggregate(new, flagged=frozenset({low}))


class AllToZero(Attack):
    """Attackers label everything 0; the backdoor test set is the test set labelled 0."""

    def setup(self, task, *, seed):
        self.test = Split(task.test.x, torch.zeros_like(task.test.y))
        return task

    def backdoor_test_set(self):
        return self.test

    def client_data(self, client_id, attacker_rank, clean, round_idx, generator):
        Calls.attackers.append(client_id)
        return Split(clean.x, torch.zeros_like(clean.y))


@pytest.fixture
def plugins():
    Calls.rounds, Calls.attackers = [], []
    with DEFENSES.registered("test_lowest_out", lowest_id_out), ATTACKS.registered("test_all_to_zero", AllToZero):
        yield
    assert "test_lowest_out" not in DEFENSES.names() and "test_all_to_zero" not in ATTACKS.names()


@pytest.mark.slow
def test_plugins_through_run_experiment(plugins):
    config = ExperimentConfig(**TINY, defense="test_lowest_out", attack="test_all_to_zero", seed=3)
    result = run_experiment(config, progress=False)

    assert Calls.rounds == [1, 2]
    assert [r["flagged"] for r in result.history] == [[min(r["selected"])] for r in result.history]
    attackers_selected = sorted(c for r in result.history for c in r["attackers"])
    assert sorted(Calls.attackers) == attackers_selected and attackers_selected
    # backdoor accuracy is measured on the attack's own test set: the share of test digits called 0
    assert all(0.0 <= r["backdoor_acc"] <= 1.0 for r in result.history)


@pytest.mark.slow
def test_plugins_through_the_cli(plugins, tmp_path, capsys):
    out = tmp_path / "run.json"
    args = ["run", "--defense", "test_lowest_out", "--attack", "test_all_to_zero", "--out", str(out), "--quiet"]
    for key, value in TINY.items():
        args += ["--" + key.replace("_", "-"), str(value)]

    assert main(args) == 0

    assert "test_lowest_out/test_all_to_zero on digits: 2 rounds" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["config"]["defense"] == "test_lowest_out" and len(saved["history"]) == 2
    assert Calls.rounds == [1, 2]


def test_unknown_plugin_name_lists_the_valid_ones(capsys):
    assert main(["run", "--defense", "test_lowest_out", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unknown defense 'test_lowest_out'; choose one of [" in err and "'fedgrad'" in err


@pytest.mark.slow
def test_book_example_module_through_fedgrad_plugins():
    # A fresh interpreter: the plug-ins come from the environment only, as in a papermill kernel.
    env = dict(os.environ, FEDGRAD_PLUGINS="my_plugins", PYTHONPATH=str(ROOT / "examples"))
    listing = subprocess.run(
        [sys.executable, "-m", "fedgrad_core.cli", "list"], env=env, capture_output=True, text=True, timeout=300
    )
    assert listing.returncode == 0, listing.stderr
    # fedgrad list: a "defenses:" heading, then one indented "name  description" line per name
    defenses, attacks = listing.stdout.split("defenses:")[1].split("attacks:")
    assert re.search(r"^  median  ", defenses, re.MULTILINE) and re.search(r"^  labelflip  ", attacks, re.MULTILINE)


def test_book_example_median_by_hand(monkeypatch):
    # Prepare: the book's module; a non-zero global model with an integer buffer, unequal counts.
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    monkeypatch.delitem(sys.modules, "my_plugins", raising=False)
    importlib.import_module("my_plugins")
    try:
        g = {"w": torch.tensor([1.0, -1.0]), "n": torch.tensor(5)}
        updates = [
            ClientUpdate(0, {"w": torch.tensor([0.0, 4.0]), "n": torch.tensor(9)}, 5),
            ClientUpdate(1, {"w": torch.tensor([2.0, 3.0]), "n": torch.tensor(9)}, 50),
            ClientUpdate(2, {"w": torch.tensor([10.0, -2.0]), "n": torch.tensor(9)}, 1),
        ]

        # Execute
        out = make_defense("median").aggregate(g, updates, 1)

        # Assert: median(0, 2, 10) = 2 and median(4, 3, -2) = 3, whatever the sample counts;
        # the integer buffer is the global model's.
        assert torch.equal(out.global_state["w"], torch.tensor([2.0, 3.0]))
        assert int(out.global_state["n"]) == 5
        assert out.flagged == frozenset() and out.diagnostics == {}
        assert ATTACKS.make("labelflip").boost == 4.0
    finally:
        DEFENSES.unregister("median")
        ATTACKS.unregister("labelflip")
