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
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, MutableMapping, Optional, Sequence

from fedgrad_core.config import ExperimentConfig
from fedgrad_core.defenses.base import accepted_params
from fedgrad_core.report import provenance_line
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
    "fedgrad_plus": "FedGrad+ (ours)",
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

#: The two sources of the reference settings beside a page's own: what the paper states, and what
#: only the authors' public code sets (``AUTHORS_CODE_URL`` at ``AUTHORS_CODE_COMMIT``).
PAPER, AUTHORS_CODE = "the paper", "the authors' code"
AUTHORS_CODE_URL = "https://github.com/judydnguyen/FedGrad_Backdoor_Attack"
AUTHORS_CODE_COMMIT = "e98a682"

#: The derived row of every settings table: how often a client takes part, on average.
JOINS_ROW = "expected joins per client (rounds x K / N)"

#: Reference settings of the edge-case pages (Table 2, Figure 6, the adaptive attack), per data set:
#: {PAPER: what section 5.1 and Table 2's caption state, AUTHORS_CODE: what only the authors' code
#: sets}.  The paper's EMNIST settings stand beside our MNIST.
PAPER_EDGE_CASE_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "cifar10": {
        PAPER: {"data set": "CIFAR-10", "model": "vgg9", "clients per round K": 10, "rounds": 1000, "PDR": 0.33},
        AUTHORS_CODE: {
            "clients N": 200,
            "local epochs": 2,
            "edge-case examples": 200,
            "DeepSight noise inputs per seed": 2000,
            "FedGrad switch_round": 50,
            "pretrained starting models": 1,
            "training images the clients share": "all",
            "test images for main accuracy": "all",
        },
    },
    "mnist": {
        PAPER: {"data set": "EMNIST", "model": "lenet", "clients per round K": 30, "rounds": 1000, "PDR": 0.5},
        AUTHORS_CODE: {
            "clients N": 3383,
            "local epochs": 2,
            "edge-case examples": 100,
            "DeepSight noise inputs per seed": 2000,
            "FedGrad switch_round": 50,
            "pretrained starting models": 1,
            "training images the clients share": "all",
            "test images for main accuracy": "all",
        },
    },
}
PAPER_EDGE_CASE_SETTINGS["emnist"] = PAPER_EDGE_CASE_SETTINGS["mnist"]

#: Table 3 (trigger attacks): section 5.1 (K, "CNN / ResNet-18"), Table 1 (learning rates, epochs,
#: scale factors) and Table 3's caption (400 rounds); the number of clients and MNIST's 10 per round are those of
#: the DBA code (Xie et al. 2020) the authors' code takes its trigger attacks from.
PAPER_TRIGGER_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "mnist": {
        PAPER: {
            "data set": "MNIST",
            "model": "cnn_mnist",
            "clients per round K": 20,
            "rounds": 400,
            "local epochs": 2,
            "benign lr": 0.1,
            "poison lr": 0.1,
            "scale (constrain-and-scale, DBA)": 100,
        },
        AUTHORS_CODE: {"clients N": 100, "clients per round K": 10},
    },
    "cifar10": {
        PAPER: {
            "data set": "CIFAR-10",
            "model": "resnet18",
            "clients per round K": 10,
            "rounds": 400,
            "local epochs": 2,
            "benign lr": 0.1,
            "poison lr": 0.1,
            "scale (constrain-and-scale, DBA)": 20,
        },
        AUTHORS_CODE: {"clients N": 100},
    },
}

#: Table 4 (FedGrad's components): CIFAR-10, black-box, TPR / FPR over 100 rounds (its caption).
PAPER_COMPONENTS_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "cifar10": {
        PAPER: {"data set": "CIFAR-10", "model": "vgg9", "clients per round K": 10, "rounds": 100, "PDR": 0.33},
        AUTHORS_CODE: {"clients N": 200, "local epochs": 2, "edge-case examples": 200},
    }
}

#: Figure 7 (stability): PGD on EMNIST within 500 rounds (its caption), section 5.1's defaults.
PAPER_STABILITY_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "mnist": {
        PAPER: {"data set": "EMNIST", "model": "lenet", "clients per round K": 30, "rounds": 500, "PDR": 0.5},
        AUTHORS_CODE: {"clients N": 3383, "local epochs": 2, "edge-case examples": 100},
    }
}
PAPER_STABILITY_SETTINGS["emnist"] = PAPER_STABILITY_SETTINGS["mnist"]

#: Figure 8 (non-IID degree): PGD on CIFAR-10 (section 5.5); the paper gives no number of rounds.
PAPER_NONIID_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "cifar10": {
        PAPER: {"data set": "CIFAR-10", "model": "vgg9", "clients per round K": 10, "PDR": 0.33},
        AUTHORS_CODE: {"clients N": 200, "local epochs": 2, "edge-case examples": 200},
    }
}


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
    # {data set: images} or one value: the training subsample the clients' shards come from, and
    # the test subsample main accuracy is measured on (None: the whole split; ExperimentConfig)
    train_samples: Any = None
    eval_samples: Any = None
    pretrain_seed: Optional[int] = None  # one pretrained model for every seed (None: each seed its own)
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

        Every defense that accepts them gets the page's ``switch_round`` (FedGrad and its
        variants) and ``deepsight_noise_samples`` as ``num_noise_samples`` (DeepSight; when set),
        the edge-case attacks ``edge_examples[dataset]`` (when set); ``defense_params`` are
        added to those.
        """
        page_level = {"switch_round": self.switch_round, "num_noise_samples": self.deepsight_noise_samples}
        accepted = accepted_params(defense)
        params: dict[str, Any] = {k: v for k, v in page_level.items() if k in accepted and v is not None}
        params.update(defense_params or {})
        settings: dict[str, Any] = dict(
            dataset=dataset,
            model=self.models.get(dataset, "auto"),
            num_clients=self.num_clients[dataset],
            clients_per_round=self.clients_per_round[dataset],
            rounds=self.rounds,
            local_epochs=self.local_epochs,
            pretrain_epochs=per_dataset(self.pretrain_epochs, dataset),
            pretrain_seed=self.pretrain_seed,
            train_samples=per_dataset(self.train_samples, dataset),
            eval_samples=per_dataset(self.eval_samples, dataset),
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

    def show_caption(self, results: Mapping[Any, Sequence[RunResult]] | Sequence[RunResult]) -> None:
        """Display ``caption(results)`` under a table or figure of the notebook."""
        _display_markdown(self.caption(results))

    def show_settings_note(
        self, paper: Mapping[str, Mapping[str, Any]], extra: Optional[Mapping[str, Mapping[str, Any]]] = None
    ) -> None:
        """Display ``settings_note(paper, extra)`` in the notebook."""
        _display_markdown(self.settings_note(paper, extra))

    def settings_note(
        self, paper: Mapping[str, Mapping[str, Any]], extra: Optional[Mapping[str, Mapping[str, Any]]] = None
    ) -> str:
        """Markdown table of this page's settings beside the reference settings; **bold**: reduced or
        changed from the reference (the paper's value where it states one, else the authors' code's).

        ``paper``: {data set: {PAPER: {...}, AUTHORS_CODE: {...}}} (``PAPER_*_SETTINGS``): one column
        for what the paper states and one for what only the authors' code sets, and the derived
        row ``JOINS_ROW``.  A flat {data set: {...}} whose source is not told apart is shown in one
        column headed "the paper or the authors' code".
        """
        rows: dict[str, list[str]] = {}
        columns: list[str] = []
        sourced = all(set(v) <= {PAPER, AUTHORS_CODE} for v in paper.values())
        for d in self.datasets:
            ours = {
                "data set": display_name(d),
                "model": self.config(d, "fedavg", "none", 0).model_name,
                "clients N": self.num_clients[d],
                "clients per round K": self.clients_per_round[d],
                "rounds": self.rounds,
                "local epochs": self.local_epochs,
                "pretraining epochs": per_dataset(self.pretrain_epochs, d),
                "pretrained starting models": 1 if self.pretrain_seed is not None else len(self.seeds),
                "training images the clients share": per_dataset(self.train_samples, d) or "all",
                "test images for main accuracy": per_dataset(self.eval_samples, d) or "all",
                "evaluated every (rounds)": self.eval_every,
                "seeds": len(self.seeds),
                "FedGrad switch_round": self.switch_round,
                **(extra or {}).get(d, {}),
            }
            ours[JOINS_ROW] = _joins(ours)
            if sourced:
                stated = dict(paper.get(d, {}).get(PAPER, {}))
                code = dict(paper.get(d, {}).get(AUTHORS_CODE, {}))
                code_joins = _joins({**stated, **code})
                if code_joins != "–":
                    code[JOINS_ROW] = code_joins
                sources = [stated, code]
                columns += [
                    f"{display_name(d)}: this page",
                    f"{display_name(d)}: {PAPER}",
                    f"{display_name(d)}: {AUTHORS_CODE}",
                ]
            else:
                sources = [dict(paper.get(d, {}))]
                columns += [f"{display_name(d)}: this page", f"{display_name(d)}: {PAPER} or {AUTHORS_CODE}"]
            for key, value in ours.items():
                others = [src.get(key, "–") for src in sources]
                reference = next((o for o in others if o != "–"), "–")
                shown = f"**{value}**" if reference != "–" and str(reference) != str(value) else str(value)
                rows.setdefault(key, []).extend([shown] + [str(o) for o in others])
        lines = ["| setting | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
        lines += [f"| {key} | " + " | ".join(values) + " |" for key, values in rows.items()]
        code_link = f"[{AUTHORS_CODE}]({AUTHORS_CODE_URL}) (commit {AUTHORS_CODE_COMMIT})"
        return (
            f"Settings of this page (profile `{self.profile}`) beside what {PAPER} states and what only "
            f"{code_link} sets; **bold**: reduced or changed from the paper's value (the code's where the "
            "paper states none); –: not stated.\n\n" + "\n".join(lines)
        )


def _display_markdown(text: str) -> None:
    from IPython.display import Markdown, display  # notebooks only: IPython comes with the book's extra

    display(Markdown(text))


def expected_joins(rounds: float, clients_per_round: float, num_clients: float) -> float:
    """rounds x K / N: the expected number of rounds a client joins when K of N are drawn uniformly
    each round (the history FedGrad's running scores and trust get per client)."""
    return rounds * clients_per_round / num_clients


def _joins(settings: Mapping[str, Any]) -> str:
    """``expected_joins`` of a settings table's column; "–" without all three."""
    try:
        value = expected_joins(
            float(settings["rounds"]), float(settings["clients per round K"]), float(settings["clients N"])
        )
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return "–"
    return f"{value:.3g}"
