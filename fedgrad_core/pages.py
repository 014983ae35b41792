"""What the book's experiment pages share: parameters in, configurations, runs and captions out.

Each experiment notebook has a flat ``parameters`` cell (papermill replaces it from a profile of
``notebooks/profiles.json``).  This module turns those parameters into one frozen ``Page`` and
gives every page the same ``config``, ``run_all``, ``caption`` and ``settings_note``, so a
notebook holds its experiment's plan, its tables and its figures, and nothing else.

Configuration flows one way: profile -> the notebook's parameters -> ``Page`` ->
``ExperimentConfig``.  A page parameter given per data set is a dict (``{"cifar10": 6, "mnist":
2}``); one given once for all data sets is a plain value (``per_dataset`` reads both).
"""

from __future__ import annotations

import ast
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, MutableMapping, Optional, Sequence

from fedgrad_core.config import ExperimentConfig
from fedgrad_core.report import ci95_half_width, provenance_line
from fedgrad_core.results import RunResult
from fedgrad_core.runs import run_many

#: How the pages name defenses, attacks and data sets for readers.
DISPLAY_NAMES = {
    "fedavg": "FedAvg (no defense)",
    "krum": "Krum",
    "multikrum": "Multi-Krum",
    "foolsgold": "FoolsGold",
    "rfa": "RFA",
    "rlr": "RLR",
    "flame": "FLAME",
    "deepsight": "DeepSight",
    "fedgrad": "FedGrad",
    "none": "no attack",
    "blackbox": "black-box",
    "pgd": "PGD",
    "pgd_mr": "PGD + MR",
    "pixel_trigger": "unconstrained trigger",
    "constrain_scale": "constrain-and-scale",
    "dba": "DBA",
    "ultimate_mimic": "ultimate-layer mimicry",
    "cifar10": "CIFAR-10",
    "mnist": "MNIST",
    "emnist": "EMNIST",
    "digits": "8x8 digits",
}

#: Attacks whose poison is an edge-case set (``edge_examples`` sets its size).
EDGE_CASE_ATTACKS = ("blackbox", "pgd", "pgd_mr", "ultimate_mimic")

#: Section 5.1's settings and the authors' code, for the edge-case pages (Table 2, Figure 6, the
#: adaptive attack); the paper's EMNIST settings stand beside our MNIST.
PAPER_EDGE_CASE_SETTINGS: dict[str, dict[str, Any]] = {
    "cifar10": {
        "data set": "CIFAR-10",
        "model": "vgg9",
        "clients N": 200,
        "clients per round K": 10,
        "rounds": 1000,
        "local epochs": 2,
        "seeds": 1,
        "PDR": 0.33,
        "edge-case examples": 200,
        "DeepSight noise inputs per seed": 2000,
    },
    "mnist": {
        "data set": "EMNIST",
        "model": "lenet",
        "clients N": 3383,
        "clients per round K": 30,
        "rounds": 1000,
        "local epochs": 2,
        "seeds": 1,
        "PDR": 0.5,
        "edge-case examples": 100,
        "DeepSight noise inputs per seed": 2000,
    },
}
PAPER_EDGE_CASE_SETTINGS["emnist"] = dict(PAPER_EDGE_CASE_SETTINGS["mnist"])


def display_name(key: str) -> str:
    """The readers' name of a defense, attack or data set (the key itself when it has none)."""
    return DISPLAY_NAMES.get(key, key)


def parse_injected(namespace: MutableMapping[str, Any]) -> None:
    """Turn the lists and dicts that papermill injected as text back into objects, in place.

    ``papermill -p defenses '["fedavg", "fedgrad"]'`` sets ``defenses`` to that string.  Every
    public name whose value is a string starting with ``[`` or ``{`` is parsed: JSON first (so
    ``null`` and ``true`` work), then a Python literal (so ``None`` and tuples work).  A string
    that is neither raises ``ValueError`` naming the parameter.
    """
    for key, value in list(namespace.items()):
        if key.startswith("_") or not isinstance(value, str) or value.lstrip()[:1] not in ("[", "{"):
            continue
        try:
            namespace[key] = json.loads(value)
        except ValueError:
            try:
                namespace[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError) as err:
                raise ValueError(f"parameter {key!r}: {value!r} is neither JSON nor a Python literal") from err


def per_dataset(value: Any, dataset: str) -> Any:
    """A parameter given either once for all data sets or as {data set: value}."""
    if isinstance(value, Mapping):
        if dataset not in value:
            raise KeyError(f"no value for data set {dataset!r} in {dict(value)!r}")
        return value[dataset]
    return value


def t_interval(values: Sequence[float]) -> tuple[float, float]:
    """seaborn ``errorbar``: mean -+ the half-width of the Student-t 95% interval over seeds.

    With one value (no interval) both ends are the mean.
    """
    values = [float(v) for v in values]
    mean = sum(values) / len(values)
    half = ci95_half_width(values)
    return (mean, mean) if math.isnan(half) else (mean - half, mean + half)


@dataclass(frozen=True)
class Page:
    """The parameters an experiment page shares with the others (its own, e.g. ``attacks``, stay in it).

    Build it with ``Page.from_parameters(globals())`` after ``parse_injected``.
    """

    profile: str
    datasets: Sequence[str]
    seeds: Sequence[int]
    rounds: int
    switch_round: int
    num_clients: Mapping[str, int]
    clients_per_round: Mapping[str, int]
    local_epochs: int
    pretrain_epochs: Any  # an int, or {data set: int}
    eval_every: int
    phi: float = 0.5
    models: Mapping[str, str] = field(default_factory=dict)
    edge_examples: Mapping[str, Optional[int]] = field(default_factory=dict)
    deepsight_noise_samples: Optional[int] = None
    executor: str = "local"
    workers: Optional[int] = None

    @classmethod
    def from_parameters(cls, namespace: Mapping[str, Any]) -> "Page":
        """The fields of a ``Page`` taken from a notebook's parameters (missing optional ones: defaults)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in namespace.items() if k in names})

    def config(
        self,
        dataset: str,
        defense: str,
        attack: str,
        seed: int,
        defense_params: Optional[Mapping[str, Any]] = None,
        **changes: Any,
    ) -> ExperimentConfig:
        """One run of this page: its parameters for ``dataset`` (phi partition), then ``changes``.

        FedGrad gets the page's ``switch_round``, DeepSight its ``deepsight_noise_samples`` (when
        set), the edge-case attacks ``edge_examples[dataset]`` (when set); ``defense_params`` are
        added to those.
        """
        params: dict[str, Any] = {"switch_round": self.switch_round} if defense == "fedgrad" else {}
        if defense == "deepsight" and self.deepsight_noise_samples is not None:
            params["num_noise_samples"] = self.deepsight_noise_samples
        params.update(defense_params or {})
        settings: dict[str, Any] = dict(
            dataset=dataset,
            model=self.models.get(dataset, "auto"),
            num_clients=self.num_clients[dataset],
            clients_per_round=self.clients_per_round[dataset],
            rounds=self.rounds,
            local_epochs=self.local_epochs,
            pretrain_epochs=per_dataset(self.pretrain_epochs, dataset),
            eval_every=self.eval_every,
            partition="phi",
            noniid=self.phi,
            attack=attack,
            defense=defense,
            defense_params=params,
            seed=seed,
        )
        edge = self.edge_examples.get(dataset)
        if attack in EDGE_CASE_ATTACKS and edge is not None:
            settings["attack_params"] = {"num_edge": edge}  # edge-case examples in the attackers' set
        settings.update(changes)
        return ExperimentConfig(**settings)

    def run_all(self, configs_by_label: Mapping[Any, Sequence[ExperimentConfig]]) -> dict[Any, list[RunResult]]:
        """label -> configs  =>  label -> results, in one ``run_many`` (cached runs are not repeated)."""
        flat = [c for configs in configs_by_label.values() for c in configs]
        results = iter(run_many(flat, executor=self.executor, workers=self.workers))
        return {label: [next(results) for _ in configs] for label, configs in configs_by_label.items()}

    def caption(self, results: Mapping[Any, Sequence[RunResult]] | Sequence[RunResult]) -> str:
        """The provenance line shown under every table and figure (Markdown, in italics)."""
        groups = results.values() if isinstance(results, Mapping) else [results]
        return f"*{provenance_line([r for rs in groups for r in rs], self.profile)}*"

    def settings_note(
        self, paper: Mapping[str, Mapping[str, Any]], extra: Optional[Mapping[str, Mapping[str, Any]]] = None
    ) -> str:
        """Markdown table of this page's settings beside the paper's; **bold**: reduced or changed."""
        rows: dict[str, list[str]] = {}
        columns: list[str] = []
        for d in self.datasets:
            ours = {
                "data set": display_name(d),
                "model": self.config(d, "fedavg", "none", 0).model_name,
                "clients N": self.num_clients[d],
                "clients per round K": self.clients_per_round[d],
                "rounds": self.rounds,
                "local epochs": self.local_epochs,
                "pretraining epochs": per_dataset(self.pretrain_epochs, d),
                "evaluated every (rounds)": self.eval_every,
                "seeds": len(self.seeds),
                **(extra or {}).get(d, {}),
            }
            theirs = paper.get(d, {})
            columns += [f"{display_name(d)}: this page", f"{display_name(d)}: the paper"]
            for key, value in ours.items():
                other = theirs.get(key, "–")
                shown = f"**{value}**" if other != "–" and str(other) != str(value) else str(value)
                rows.setdefault(key, []).extend([shown, str(other)])
        lines = ["| setting | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
        lines += [f"| {key} | " + " | ".join(values) + " |" for key, values in rows.items()]
        return (
            f"Settings of this page (profile `{self.profile}`); **bold**: reduced or changed from the paper's.\n\n"
            + "\n".join(lines)
        )
