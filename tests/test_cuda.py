"""Runs on a GPU: every defense and attack through the simulation with device="cuda".

The server works on the CPU whatever device the clients train on (``simulation.on_cpu``); before
that rule every defense but FedAvg crashed on a GPU with "tensors on different devices" (found on
an H200 lent to the project).  These tests run where torch sees CUDA and skip elsewhere (CI has
no GPU); the CPU test below checks the rule's promise that nothing is copied on the CPU.
"""

from __future__ import annotations

import math

import pytest
import torch

from fedgrad_core.attacks import available_attacks
from fedgrad_core.config import ExperimentConfig
from fedgrad_core.defenses import available_defenses
from fedgrad_core.simulation import on_cpu, run_experiment

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none)")

#: Attacks that run on digits without downloaded data (the edge-case attacks use its tail classes).
DIGITS_ATTACKS = ["none", "blackbox", "pgd", "pgd_mr", "pixel_trigger", "constrain_scale", "dba", "ultimate_mimic"]


def digits_run(defense: str, attack: str, device: str) -> ExperimentConfig:
    params = {"switch_round": 1} if defense == "fedgrad" else {}
    return ExperimentConfig(
        dataset="digits", num_clients=12, clients_per_round=6, rounds=2, local_epochs=1, pretrain_epochs=1,
        attack=attack, defense=defense, defense_params=params, device=device, seed=3,
    )


def test_on_cpu_returns_the_same_tensors_when_they_are_already_on_the_cpu():
    # Prepare
    state = {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(4)}
    # Execute
    moved = on_cpu(state)
    # Assert: no copy on a CPU-only run (the server costs nothing extra there)
    assert all(moved[k] is state[k] for k in state)


@needs_cuda
@pytest.mark.parametrize("defense", available_defenses())
def test_every_defense_runs_on_a_gpu(defense):
    result = run_experiment(digits_run(defense, "pgd", "cuda"), progress=False)
    last = result.history[-1]
    assert math.isfinite(last["main_acc"]) and last["main_acc"] > 0.1
    assert result.meta["device"].startswith("cuda")


@needs_cuda
@pytest.mark.parametrize("attack", [a for a in DIGITS_ATTACKS if a in available_attacks()])
def test_every_attack_runs_on_a_gpu_under_fedgrad(attack):
    result = run_experiment(digits_run("fedgrad", attack, "cuda"), progress=False)
    assert math.isfinite(result.history[-1]["main_acc"])


@needs_cuda
def test_a_gpu_run_learns_as_well_as_the_cpu_run():
    # Same seed and data: equal in distribution, not bit for bit (other kernels), so close.
    gpu = run_experiment(digits_run("fedavg", "none", "cuda"), progress=False).history[-1]["main_acc"]
    cpu = run_experiment(digits_run("fedavg", "none", "cpu"), progress=False).history[-1]["main_acc"]
    assert abs(gpu - cpu) < 0.05
