"""Black-box edge-case attack (Wang et al., NeurIPS 2020, "Attack of the Tails").

Every attacker trains, with the benign clients' own hyper-parameters and nothing else changed, on
one shared poisoned set: ``num_edge`` edge-case examples relabelled to the target class plus clean
training examples, so that edge-case examples make up the poisoned data rate (PDR) of the set.
This is what the authors' code does (CIFAR-10: 200 Southwest planes + 400 clean images, PDR 0.33;
EMNIST: 100 ARDIS sevens + 100 clean digits, PDR 0.5).  Backdoor accuracy is the share of the
held-out edge-case test set predicted as the target.

Assumes the data set has an edge-case set (``fedgrad_core.data.edge_cases``).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from fedgrad_core.attacks.base import Attack, register
from fedgrad_core.data.edge_cases import load_edge_case
from fedgrad_core.data.task import EdgeCaseSet, Split, Task

#: The paper's PDR and the authors' number of edge-case examples per data set.
DEFAULTS = {
    "cifar10": {"poisoned_data_rate": 0.33, "num_edge": 200},
    "mnist": {"poisoned_data_rate": 0.5, "num_edge": 100},
    "emnist": {"poisoned_data_rate": 0.5, "num_edge": 100},
    "digits": {"poisoned_data_rate": 0.5, "num_edge": None},
    "fashion_mnist": {"poisoned_data_rate": 0.5, "num_edge": 100},
}


def poisoned_set(
    edge: EdgeCaseSet, clean: Split, *, poisoned_data_rate: float, num_edge: Optional[int], seed: int
) -> Split:
    """``num_edge`` edge-case examples (all when None) labelled ``edge.target`` plus clean ones,
    so that the edge-case share is ``poisoned_data_rate`` (rounded to whole examples)."""
    if not 0 < poisoned_data_rate <= 1:
        raise ValueError(f"poisoned_data_rate must be in (0, 1], got {poisoned_data_rate}")
    rng = np.random.default_rng(seed)
    n_edge = len(edge.train) if num_edge is None else min(num_edge, len(edge.train))
    if n_edge < 1:
        raise ValueError("the edge-case set has no training examples")
    edge_idx = np.sort(rng.choice(len(edge.train), size=n_edge, replace=False))
    n_clean = int(round(n_edge * (1 - poisoned_data_rate) / poisoned_data_rate))
    if n_clean > len(clean):
        raise ValueError(f"PDR {poisoned_data_rate} needs {n_clean} clean examples; only {len(clean)} exist")
    clean_idx = np.sort(rng.choice(len(clean), size=n_clean, replace=False))
    x_edge = edge.train[torch.as_tensor(edge_idx)]
    y_edge = torch.full((n_edge,), edge.target, dtype=torch.int64)
    return Split.concat(Split(x_edge, y_edge), clean.subset(clean_idx))


class EdgeCaseAttack(Attack):
    """Shared machinery of the edge-case attacks: the edge-case set, the poisoned set, the test set."""

    def __init__(self, *, poisoned_data_rate: Optional[float] = None, num_edge: Optional[int] = None):
        if poisoned_data_rate is not None and not 0 < poisoned_data_rate <= 1:
            raise ValueError(f"poisoned_data_rate must be in (0, 1], got {poisoned_data_rate}")
        if num_edge is not None and num_edge < 1:
            raise ValueError(f"num_edge must be >= 1, got {num_edge}")
        self.poisoned_data_rate = poisoned_data_rate
        self.num_edge = num_edge
        self.edge: Optional[EdgeCaseSet] = None
        self.poisoned: Optional[Split] = None

    def setup(self, task: Task, *, seed: int) -> Task:
        defaults = DEFAULTS.get(task.name, {"poisoned_data_rate": 0.5, "num_edge": None})
        pdr = self.poisoned_data_rate if self.poisoned_data_rate is not None else defaults["poisoned_data_rate"]
        num_edge = self.num_edge if self.num_edge is not None else defaults["num_edge"]
        self.edge, task = load_edge_case(task, seed=seed)
        self.poisoned = poisoned_set(self.edge, task.train, poisoned_data_rate=pdr, num_edge=num_edge, seed=seed)
        self.poisoned_data_rate, self.num_edge = pdr, num_edge
        return task

    def backdoor_test_set(self) -> Optional[Split]:
        assert self.edge is not None, "setup() first"
        return Split(self.edge.test, torch.full((len(self.edge.test),), self.edge.target, dtype=torch.int64))

    def client_data(self, client_id, attacker_rank, clean, round_idx, generator) -> Split:
        assert self.poisoned is not None, "setup() first"
        return self.poisoned


@register("blackbox")
class BlackBox(EdgeCaseAttack):
    name = "blackbox"
