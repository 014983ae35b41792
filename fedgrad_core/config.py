"""ExperimentConfig: everything that defines a run, frozen, validated before any work starts.

Configuration flows one way: a profile or a notebook's parameters cell -> ``ExperimentConfig`` ->
``run_experiment``.  Nothing in the library reads an ``args`` namespace.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

#: The network each data set uses when ``model="auto"`` (the paper's choices; a small MLP for digits).
DEFAULT_MODELS = {
    "digits": "digits_mlp",
    "mnist": "lenet",
    "emnist": "lenet",
    "fashion_mnist": "lenet",
    "cifar10": "vgg9",
}

#: (input channels, classes) of each data set, known without loading it.
DATASET_SHAPES = {"digits": (1, 10), "mnist": (1, 10), "emnist": (1, 10), "fashion_mnist": (1, 10), "cifar10": (3, 10)}


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the problem in one line."""


@dataclass(frozen=True)
class ExperimentConfig:
    """One federated run.  Defaults: a small digits run that takes seconds on a CPU."""

    dataset: str = "digits"
    model: str = "auto"  # "auto" picks DEFAULT_MODELS[dataset]
    num_clients: int = 20  # N
    clients_per_round: int = 10  # K, sampled uniformly without replacement each round
    rounds: int = 20
    local_epochs: int = 2
    batch_size: int = 32
    lr: float = 0.02  # benign clients' lr in round 1
    lr_decay: float = 0.998  # lr in round t is lr * lr_decay ** (t - 1) (the paper's schedule)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    attack: str = "none"
    attack_params: Mapping[str, Any] = field(default_factory=dict)
    defense: str = "fedavg"
    defense_params: Mapping[str, Any] = field(default_factory=dict)
    attacker_fraction: float = 0.25  # share of all N clients in the fixed attacker pool
    poisoned_data_rate: Optional[float] = None  # None: the attack's default for the data set
    # Clients' shards are cut from a stratified subsample of this many training images (None: the
    # whole split); pretraining still uses the whole split.  Fewer clients, each joining more rounds,
    # at the cost of a round of today's N.
    train_samples: Optional[int] = None
    # Main accuracy is measured on a fixed stratified subsample of this many test images (the same
    # for every run and seed); None: the whole test split.  A backdoor test set larger than this
    # (a trigger stamped on the test split) is subsampled to it too; edge-case sets are smaller.
    eval_samples: Optional[int] = None
    partition: str = "dirichlet"  # "dirichlet", "phi" or "iid"
    noniid: float = 0.5  # Dirichlet alpha, or phi for the phi partition
    eval_every: int = 1  # evaluate every this many rounds (and always in the last round)
    pretrain_epochs: int = 5  # centralised epochs on the clean training set before round 1 (cached)
    pretrain_lr: float = 0.02
    # Seed of the pretrained starting model; None: the run's ``seed``.  One value for all seeds
    # gives every seed the same starting model, as the authors' runs load one pretrained model.
    pretrain_seed: Optional[int] = None
    seed: int = 0
    device: str = "auto"  # "auto" uses CUDA when present
    # Honest clients trained together ("on"), one by one ("off"), or whichever is faster for the
    # model and device ("auto", simulation.BATCHED_BY_DEFAULT). Equal in distribution, not bitwise.
    client_batching: str = "auto"

    def __post_init__(self) -> None:
        # Plain dicts (copied) so a caller mutating its dict cannot change a frozen config.
        object.__setattr__(self, "attack_params", dict(self.attack_params))
        object.__setattr__(self, "defense_params", dict(self.defense_params))

    @property
    def model_name(self) -> str:
        return DEFAULT_MODELS.get(self.dataset, "") if self.model == "auto" else self.model

    @property
    def pretraining_seed(self) -> int:
        """The seed the pretrained starting model is trained with."""
        return self.seed if self.pretrain_seed is None else self.pretrain_seed

    @property
    def num_attackers(self) -> int:
        """Size of the fixed attacker pool (0 without an attack)."""
        return int(round(self.attacker_fraction * self.num_clients)) if self.attack != "none" else 0

    def replace(self, **changes: Any) -> "ExperimentConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["attack_params"] = dict(self.attack_params)
        out["defense_params"] = dict(self.defense_params)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ExperimentConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown configuration field(s) {unknown}")
        return cls(**data)


def validate(config: ExperimentConfig) -> None:
    """Raise ``ConfigError`` naming the first problem; builds nothing expensive (no data, no model)."""
    from fedgrad_core.attacks import available_attacks, make_attack
    from fedgrad_core.data import available_datasets
    from fedgrad_core.data.partition import PARTITIONS
    from fedgrad_core.defenses.base import available_defenses, build_defense
    from fedgrad_core.models import available_models

    c = config
    _check(c.dataset in available_datasets(), f"unknown dataset {c.dataset!r}; choose one of {available_datasets()}")
    _check(
        c.model == "auto" or c.model in available_models(),
        f"unknown model {c.model!r}; choose one of {available_models()} or 'auto'",
    )
    _check(c.defense in available_defenses(), f"unknown defense {c.defense!r}; choose one of {available_defenses()}")
    _check(c.attack in available_attacks(), f"unknown attack {c.attack!r}; choose one of {available_attacks()}")
    _check(c.partition in PARTITIONS, f"unknown partition {c.partition!r}; choose one of {list(PARTITIONS)}")
    for name in ("num_clients", "clients_per_round", "rounds", "local_epochs", "batch_size", "eval_every"):
        value = getattr(c, name)
        _check(isinstance(value, int) and value >= 1, f"{name} must be a positive integer, got {value!r}")
    _check(
        c.clients_per_round <= c.num_clients,
        f"clients_per_round (K={c.clients_per_round}) is larger than num_clients (N={c.num_clients})",
    )
    _check(
        c.pretrain_seed is None or (isinstance(c.pretrain_seed, int) and c.pretrain_seed >= 0),
        f"pretrain_seed must be None or a non-negative integer, got {c.pretrain_seed!r}",
    )
    for name in ("train_samples", "eval_samples"):
        value = getattr(c, name)
        _check(
            value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1),
            f"{name} must be None or a positive integer, got {value!r}",
        )
    _check(
        c.train_samples is None or c.train_samples >= c.num_clients,
        f"train_samples ({c.train_samples}) must be at least num_clients (N={c.num_clients}): every client needs data",
    )
    _check(c.pretrain_epochs >= 0, f"pretrain_epochs must be >= 0, got {c.pretrain_epochs}")
    for name in ("lr", "pretrain_lr"):
        value = getattr(c, name)
        _check(math.isfinite(value) and value > 0, f"{name} must be a positive number, got {value!r}")
    _check(0 < c.lr_decay <= 1, f"lr_decay must be in (0, 1], got {c.lr_decay}")
    _check(0 <= c.momentum < 1, f"momentum must be in [0, 1), got {c.momentum}")
    _check(c.weight_decay >= 0, f"weight_decay must be >= 0, got {c.weight_decay}")
    _check(0 <= c.attacker_fraction <= 1, f"attacker_fraction must be in [0, 1], got {c.attacker_fraction}")
    _check(
        c.poisoned_data_rate is None or 0 <= c.poisoned_data_rate < 1,
        f"poisoned_data_rate must be in [0, 1), got {c.poisoned_data_rate}",
    )
    _check(c.noniid >= 0, f"noniid must be >= 0, got {c.noniid}")
    _check(
        c.device == "auto" or c.device == "cpu" or c.device.startswith("cuda"),
        f"device must be 'auto', 'cpu' or 'cuda[:N]', got {c.device!r}",
    )
    _check(
        c.client_batching in ("auto", "on", "off"),
        f"client_batching must be 'auto', 'on' or 'off', got {c.client_batching!r}",
    )
    try:
        attack = make_attack(c.attack, **attack_params(c))
        build_defense(c.defense, c.defense_params, defense_context(c)).validate(c.clients_per_round)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    if attack.needs_attackers:
        _check(
            c.num_attackers >= 1,
            f"attack {c.attack!r} needs attackers, but attacker_fraction={c.attacker_fraction} of "
            f"{c.num_clients} clients gives none",
        )


def defense_context(c: ExperimentConfig) -> dict[str, Any]:
    """What the run tells a defense that asks (see ``defenses.base.CONTEXT_PARAMS``)."""
    from fedgrad_core.models import make_model

    in_channels, num_classes = DATASET_SHAPES[c.dataset]
    return {
        "seed": c.seed,
        "attacker_fraction": c.attacker_fraction,
        "num_classes": num_classes,
        "model_factory": functools.partial(
            make_model, c.model_name, in_channels=in_channels, num_classes=num_classes, seed=c.seed
        ),
    }


def attack_params(c: ExperimentConfig) -> dict[str, Any]:
    """The attack's parameters with the config's poisoned data rate filled in where it takes one."""
    from fedgrad_core.attacks.base import accepted_params

    params = dict(c.attack_params)
    if c.poisoned_data_rate is not None and "poisoned_data_rate" in accepted_params(c.attack):
        params.setdefault("poisoned_data_rate", c.poisoned_data_rate)
    return params


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
