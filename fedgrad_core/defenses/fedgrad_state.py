"""FedGrad's parameters (``FedGradParams``, checked on construction) and what it remembers across
rounds (``FedGradHistory``, saved and loaded by one schema, ``HISTORY_SCHEMA``).

The history holds, per client id, the running mean of the soft filter's scaled score and its
rounds, and the trust history's sum and count (the starting 0.5 included); per ordered pair of
client ids, the running means of the hard filter's two similarity matrices and the rounds the pair
met, in dense float32 arrays grown on demand (12 bytes a pair).  Ordered pairs: the column-wise
scaling makes the round's matrices asymmetric, so ``(i, j)`` and ``(j, i)`` are different entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from fedgrad_core.defenses import fedgrad_variants as variants
from fedgrad_core.defenses.base import check_choice, check_int, check_real, resolve_f

#: The paper-versus-code choices (module docstring).
CHOICES = {
    "gradient": ("update", "authors"),
    "bias": ("update", "raw"),
    "closeness": ("full", "ultimate"),
    "fallback": ("s1", "none"),
}


@dataclass(frozen=True)
class FedGradParams:
    """FedGrad's hyper-parameters (paper defaults), checked on construction: a ValueError names
    the parameter.  ``parameter_names``: the model's ``named_parameters()`` for the closeness."""

    zeta: float = 0.5
    gamma: float = 0.75
    lambda1: float = 0.25
    lambda2: float = 1.0
    switch_round: int = 50
    num_attackers_estimate: Optional[int] = None
    attacker_fraction: float = 0.25
    strict_factor: Optional[float] = None
    gradient: str = "authors"
    bias: str = "update"
    closeness: str = "full"
    fallback: str = "s1"
    kmeans_n_init: int = 10
    seed: int = 0
    ultimate_layer: Optional[Sequence[str]] = None
    parameter_names: Optional[tuple[str, ...]] = None

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        for name in ("zeta", "gamma", "lambda1", "lambda2"):
            put(name, check_real(name, getattr(self, name), 0.0, 1.0))
        if not self.lambda1 < self.lambda2:
            raise ValueError(
                f"lambda1 (instant trust of a suspicious client, {self.lambda1}) must be below "
                f"lambda2 (that of a clean one, {self.lambda2})"
            )
        put("switch_round", check_int("switch_round", self.switch_round, 0))
        if self.num_attackers_estimate is not None:
            put("num_attackers_estimate", check_int("num_attackers_estimate", self.num_attackers_estimate, 0))
        put("attacker_fraction", check_real("attacker_fraction", self.attacker_fraction, 0.0, 1.0))
        if self.attacker_fraction >= 1.0:
            raise ValueError(f"attacker_fraction must be below 1, got {self.attacker_fraction!r}")
        if self.strict_factor is not None:
            put("strict_factor", check_real("strict_factor", self.strict_factor, 0.0, 1.0, lo_open=True))
        for name, choices in CHOICES.items():
            check_choice(name, getattr(self, name), choices)
        put("kmeans_n_init", check_int("kmeans_n_init", self.kmeans_n_init, 1))
        put("seed", check_int("seed", self.seed, 0))
        layer = self.ultimate_layer
        if layer is not None:
            if isinstance(layer, str) or len(layer) != 2 or not all(isinstance(k, str) for k in layer):
                raise ValueError(f"ultimate_layer must be a pair of state-dict keys (weight, bias), got {layer!r}")
            put("ultimate_layer", (layer[0], layer[1]))

    def num_attackers(self, num_clients: int) -> int:
        """``f``: the estimate when given, else ``int(attacker_fraction x K)``."""
        return resolve_f(num_clients, f=self.num_attackers_estimate, attacker_fraction=self.attacker_fraction)


def parameter_names(model_factory: Optional[Callable[[], torch.nn.Module]]) -> Optional[tuple[str, ...]]:
    """The names of ``model_factory()``'s parameters (names only: the factory need not be picklable)."""
    if model_factory is None:
        return None
    if not callable(model_factory):
        raise ValueError("model_factory must be a zero-argument callable returning an nn.Module")
    model = model_factory()
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model_factory must return an nn.Module, got {type(model).__name__}")
    return tuple(name for name, _ in model.named_parameters())


#: The saved history, one list for saving, loading and checking: (key, dtype, for each dimension
#: the ids entry whose length it has, None: any).  ``trust_count`` is float64 with ``trust_decay``.
HISTORY_SCHEMA: tuple[tuple[str, torch.dtype, tuple[Optional[str], ...]], ...] = (
    ("soft_ids", torch.int64, (None,)),
    ("soft_mean", torch.float64, ("soft_ids",)),
    ("soft_rounds", torch.int64, ("soft_ids",)),
    ("trust_ids", torch.int64, (None,)),
    ("trust_sum", torch.float64, ("trust_ids",)),
    ("trust_count", torch.int64, ("trust_ids",)),
    ("pair_ids", torch.int64, (None,)),
    ("pair_w", torch.float32, ("pair_ids", "pair_ids")),
    ("pair_b", torch.float32, ("pair_ids", "pair_ids")),
    ("pair_n", torch.int32, ("pair_ids", "pair_ids")),
)


@dataclass
class FedGradHistory:
    """The history of one FedGrad defense (module docstring); ``trust_decay``: ``fedgrad_variants``."""

    trust_decay: Optional[float] = None
    soft: dict[int, list[float]] = field(default_factory=dict)  # id -> [running mean, rounds]
    trust: dict[int, list[float]] = field(default_factory=dict)  # id -> [sum of entries, count]
    pair_index: dict[int, int] = field(default_factory=dict)  # id -> row and column of the arrays
    pair_w: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    pair_b: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    pair_n: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int32))

    def fold_soft(self, ids: Sequence[int], scaled: np.ndarray) -> np.ndarray:
        """Fold the round's scaled scores into the running means; return the clients' means."""
        cumulative = np.empty(len(ids))
        for i, cid in enumerate(ids):
            mean, m = self.soft.get(cid, (0.0, 0))
            m += 1
            mean += (scaled[i] - mean) / m
            self.soft[cid] = [mean, m]
            cumulative[i] = mean
        return cumulative

    def fold_pairs(self, ids: Sequence[int], sim_w: np.ndarray, sim_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fold the round's matrices into the running means; return the accumulated K x K blocks."""
        for cid in ids:
            self.pair_index.setdefault(cid, len(self.pair_index))
        cap = self.pair_w.shape[0]
        if len(self.pair_index) > cap:  # capacity doubling: amortised O(1) copies per new client
            new_cap = max(len(self.pair_index), 2 * cap, 16)
            for name, dtype in (("pair_w", np.float32), ("pair_b", np.float32), ("pair_n", np.int32)):
                grown = np.zeros((new_cap, new_cap), dtype=dtype)
                grown[:cap, :cap] = getattr(self, name)
                setattr(self, name, grown)
        idx = np.array([self.pair_index[c] for c in ids], dtype=np.int64)
        block = np.ix_(idx, idx)
        n = self.pair_n[block].astype(np.float64) + 1.0
        mean_w = self.pair_w[block].astype(np.float64)
        mean_b = self.pair_b[block].astype(np.float64)
        mean_w += (sim_w - mean_w) / n
        mean_b += (sim_b - mean_b) / n
        self.pair_w[block], self.pair_b[block], self.pair_n[block] = mean_w, mean_b, n.astype(np.int32)
        return mean_w, mean_b

    def trust_of(self, client_id: int) -> float:
        total, count = self.trust.get(client_id, (0.5, 1))
        return total / count

    def record_trust(self, ids: Sequence[int], final: np.ndarray, *, lambda1: float, lambda2: float) -> None:
        for cid, bad in zip(ids, final):
            total, count = self.trust.get(cid, (0.5, 1))
            total, count = variants.age_trust(total, count, self.trust_decay)
            self.trust[cid] = [total + (lambda1 if bad else lambda2), count + 1]

    def schema(self) -> list[tuple[str, torch.dtype, tuple[Optional[str], ...]]]:
        decayed = self.trust_decay is not None
        return [(k, torch.float64 if decayed and k == "trust_count" else t, d) for k, t, d in HISTORY_SCHEMA]

    def state_dict(self) -> dict[str, Tensor]:
        """The history as tensors (``HISTORY_SCHEMA``): per-client entries by ascending id, pair
        arrays in the order clients were first seen, trimmed to them."""
        soft, trust = sorted(self.soft.items()), sorted(self.trust.items())
        pair_ids = sorted(self.pair_index, key=self.pair_index.__getitem__)
        n = len(pair_ids)
        values = {
            "soft_ids": [c for c, _ in soft],
            "soft_mean": [v[0] for _, v in soft],
            "soft_rounds": [v[1] for _, v in soft],
            "trust_ids": [c for c, _ in trust],
            "trust_sum": [v[0] for _, v in trust],
            "trust_count": [v[1] for _, v in trust],
            "pair_ids": pair_ids,
            "pair_w": self.pair_w[:n, :n],
            "pair_b": self.pair_b[:n, :n],
            "pair_n": self.pair_n[:n, :n],
        }
        return {
            k: torch.from_numpy(np.array(values[k], dtype=torch.empty(0, dtype=t).numpy().dtype))
            for k, t, _ in self.schema()
        }

    def load(self, state: Mapping[str, Any], tensor: Callable[..., Tensor], *, owner: str) -> None:
        """Replace the history by ``state_dict()``'s tensors, each read by ``tensor(state, key, dtype=,
        shape=)`` (``Defense._state_tensor``: a ValueError naming the entry when it does not fit)."""
        size = {k: len(state[k]) if isinstance(state[k], Tensor) else -1 for k in ("soft_ids", "trust_ids", "pair_ids")}
        got = {
            key: tensor(state, key, dtype=t, shape=tuple(d and size[d] for d in dims)) for key, t, dims in self.schema()
        }
        if len(set(got["pair_ids"].tolist())) != len(got["pair_ids"]):
            raise ValueError(f"defense {owner!r}: saved state entry 'pair_ids' repeats a client id")
        count = int if self.trust_decay is None else float
        ids = {k: got[k].tolist() for k in ("soft_ids", "trust_ids", "pair_ids")}
        self.soft = {
            int(c): [float(m), int(r)]
            for c, m, r in zip(ids["soft_ids"], got["soft_mean"].tolist(), got["soft_rounds"].tolist())
        }
        self.trust = {
            int(c): [float(t), count(n)]
            for c, t, n in zip(ids["trust_ids"], got["trust_sum"].tolist(), got["trust_count"].tolist())
        }
        self.pair_index = {int(c): i for i, c in enumerate(ids["pair_ids"])}
        self.pair_w, self.pair_b, self.pair_n = (got[k].numpy().copy() for k in ("pair_w", "pair_b", "pair_n"))
