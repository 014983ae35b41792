"""What every attack shares: the hooks through which it acts, and the registry.

The simulation owns the one training loop.  An attack never copies it; it acts through

* ``setup(task, seed=...)``: build its poisoned data and the backdoor test set, once;
  it returns the task the clients train on;
* ``client_data(...)``: the data an attacker trains on (data poisoning);
* ``local_training(base)``: its own lr / epochs where the threat model lets it choose;
* ``training_hooks(...)``: per-batch hooks inside local training (trigger stamping, an extra
  loss term, PGD projection);
* ``after_training(...)``: what it does to its trained model before sending it (scaling).

An attack never imports a defense.  All randomness comes from the seed handed to ``setup`` and the
per-client generators handed to the hooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
from torch import Tensor

from fedgrad_core.data.task import Split, Task
from fedgrad_core.registry import Registry
from fedgrad_core.training import LocalTraining, TrainingHooks

State = Mapping[str, Tensor]


@dataclass(frozen=True, eq=False)
class RoundContext:
    """What an attacker can know about the round it was selected for.

    ``num_samples`` maps every selected client to the size of the data it trains on this round,
    known before local training starts (model replacement's scale uses it).
    """

    round_idx: int
    global_state: State
    selected: tuple[int, ...]
    attackers: tuple[int, ...]
    num_samples: Mapping[int, int]
    lr: float


class Attack:
    """Base of every registered attack; the defaults are an honest client."""

    name = "base"
    #: Whether the attack needs attackers in the client pool (False only for ``none``).
    needs_attackers = True

    def setup(self, task: Task, *, seed: int) -> Task:
        """Prepare poisoned data and the backdoor test set (called once per run, before the data
        is partitioned); returns the task the clients train on (an edge-case builder may remove
        its tail examples from the clean data)."""
        return task

    def backdoor_test_set(self) -> Optional[Split]:
        """Inputs and the labels the attacker wants for them; None when there is nothing to test."""
        return None

    def client_data(
        self,
        client_id: int,
        attacker_rank: int,
        clean: Split,
        round_idx: int,
        generator: torch.Generator,
    ) -> Split:
        """The data attacker ``client_id`` (``attacker_rank``-th in the pool) trains on.

        ``clean`` is the client's own partition.  Called before any client of the round trains,
        so that every selected client's data size is known to ``RoundContext.num_samples``.
        """
        return clean

    def local_training(self, base: LocalTraining) -> LocalTraining:
        return base

    def training_hooks(
        self, client_id: int, attacker_rank: int, ctx: RoundContext, generator: torch.Generator
    ) -> Optional[TrainingHooks]:
        return None

    def after_training(
        self, state: dict[str, Tensor], client_id: int, attacker_rank: int, ctx: RoundContext
    ) -> dict[str, Tensor]:
        """The model the attacker sends, given the one it trained (e.g. scaled)."""
        return state


# --------------------------------------------------------------------------- registry

REGISTRY: Registry[Attack] = Registry("attack", builtin="fedgrad_core.attacks")
register = REGISTRY.register


def available_attacks() -> list[str]:
    return REGISTRY.names()


def accepted_params(name: str) -> set[str]:
    """Keyword parameters the attack ``name`` accepts."""
    return REGISTRY.accepted_params(name)


def make_attack(name: str, **params: Any) -> Attack:
    """Build the attack registered as ``name`` with keyword-only parameters ``params``."""
    return REGISTRY.make(name, **params)
