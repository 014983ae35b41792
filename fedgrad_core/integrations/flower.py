"""FedGrad and the robust baselines as Flower strategies (``pip install ".[flower]"``).

The only module of ``fedgrad_core`` that imports Flower (``flwr``, pinned by the ``flower`` extra).
It targets the strategy API that Flower recommends from 1.21 on: the Message API, where a
``ServerApp``'s ``main`` calls ``strategy.start(grid, initial_arrays, num_rounds)`` and a
``flwr.serverapp.strategy.Strategy`` turns the round's reply ``Message`` s into the next
``ArrayRecord`` (``aggregate_train``).  Sampling, messaging and evaluation are Flower's own
``FedAvg`` (``DefenseStrategy`` subclasses it); only the aggregation of a training round is
replaced by a ``fedgrad_core`` defense object, the same one the simulation uses
(``fedgrad_core.defenses.build_defense``): there is no second implementation of any method.

What the bridge does, and why:

* **Names of the arrays.**  A client may send its model as a named ``ArrayRecord`` (built from
  ``model.state_dict()``) or as Flower's classic ordered list of arrays without names
  (``ArrayRecord(list_of_ndarrays)``, keys ``"0"``, ``"1"``, ...).  FedGrad needs the names: its
  filters act on the *ultimate layer*, found as the last 2-D floating weight of the state dict and
  its bias (``fedgrad_core.defenses.fedgrad.find_ultimate_layer``; FedGrad paper, section 4.1).
  The strategy is given a template state dict (or the model itself); named records are matched by
  key, unnamed ones by position in the template's ``state_dict()`` order (the order Flower's
  PyTorch examples use to send ``[v.numpy() for v in state_dict().values()]``).
* **Clients are Flower's node ids.**  Every stateful history (FedGrad's pairwise similarities and
  trust scores, FoolsGold's memory) must follow the same client across rounds, so updates are
  keyed by ``Message.metadata.src_node_id``.  Flower's node ids are random 64-bit integers, larger
  than some defenses' int64/float64 id tensors hold exactly, so the strategy maps each node id to a
  small stable index on first sight (ascending node id within a round) and back again; the map is
  part of ``state_dict()``.
* **Rounds.**  Flower counts rounds from 1, as ``fedgrad_core.simulation`` does, so
  ``server_round`` is passed unchanged as the defense's ``round_idx`` (FedGrad's hard filter acts
  from ``round_idx >= switch_round``).
* **What Flower logs.**  The round's ``MetricRecord`` holds the clients' metrics averaged over the
  accepted (not flagged) clients, weighted by ``num-examples`` (as Flower's own Krum averages the
  selected replies only), plus ``flagged-node-ids`` (sorted node ids the defense excluded) and
  ``num-flagged``.  ``flagged_history`` keeps the same per round, and ``last_aggregate`` the full
  ``Aggregate`` (diagnostics keyed by the small indices; ``node_id_of`` maps them back).

Assumptions: every client sends a complete model (not a difference) with the template's arrays,
shapes and order, and a ``num-examples`` entry in its one ``MetricRecord`` (Flower's own checks
in ``FedAvg._check_and_log_replies``).
"""

from __future__ import annotations

import copy
from logging import INFO
from typing import Any, Iterable, Mapping, Optional, Union

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedgrad_core.defenses import Aggregate, ClientUpdate, Defense, build_defense

__all__ = [
    "DefenseStrategy",
    "DeepSightStrategy",
    "FedGradStrategy",
    "FlameStrategy",
    "FoolsGoldStrategy",
    "KrumStrategy",
    "MultiKrumStrategy",
    "RFAStrategy",
    "RLRStrategy",
    "arrays_to_state",
    "state_to_arrays",
]

Template = Union[Mapping[str, torch.Tensor], torch.nn.Module]


def _template_state(template: Template) -> dict[str, torch.Tensor]:
    if isinstance(template, torch.nn.Module):
        template = template.state_dict()
    if not isinstance(template, Mapping) or not template:
        raise ValueError(
            f"template must be a torch model or a non-empty state dict (name -> tensor), got {type(template).__name__}"
        )
    out = {}
    for key, value in template.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"template entry {key!r} is a {type(value).__name__}, not a tensor")
        out[key] = value.detach().cpu().clone()
    return out


def arrays_to_state(record: ArrayRecord, template: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict a Flower ``ArrayRecord`` stands for, with the template's keys and dtypes.

    A record whose keys are the template's keys is matched by name (in any order); any other
    record with as many arrays is read by position in the template's order.  Raises ValueError
    naming the array when the count or a shape disagrees.
    """
    keys = list(record.keys())
    names = list(template)
    if set(keys) == set(names):
        pairs = [(name, record[name]) for name in names]
    elif len(keys) == len(names):
        pairs = [(name, record[k]) for name, k in zip(names, keys)]
    else:
        raise ValueError(
            f"the ArrayRecord holds {len(keys)} arrays, the model's state dict {len(names)} "
            f"({names[:3]}...): cannot map the arrays to the model's keys"
        )
    state = {}
    for position, (name, array) in enumerate(pairs):
        value = np.asarray(array.numpy())
        want = template[name]
        if tuple(value.shape) != tuple(want.shape):
            raise ValueError(
                f"array {position} (model key {name!r}) has shape {tuple(value.shape)}, "
                f"the model's is {tuple(want.shape)}"
            )
        state[name] = torch.as_tensor(value).to(want.dtype)
    return state


def state_to_arrays(state: Mapping[str, torch.Tensor], keys: Optional[list[str]] = None) -> ArrayRecord:
    """An ``ArrayRecord`` of ``state``'s tensors in state-dict order, under ``keys`` (default: the
    state's own names; pass ``["0", "1", ...]`` to answer clients that send unnamed arrays)."""
    names = list(state)
    keys = names if keys is None else list(keys)
    if len(keys) != len(names):
        raise ValueError(f"{len(keys)} keys for {len(names)} arrays")
    return ArrayRecord({k: Array(state[n].detach().cpu().numpy()) for k, n in zip(keys, names)})


class DefenseStrategy(FedAvg):
    """Flower's ``FedAvg`` with its training aggregation replaced by a ``fedgrad_core`` defense.

    ``defense``: a registered name (``fedgrad_core.defenses.available_defenses()``) built with
    ``build_defense(defense, params, context)``, or a ready ``Defense`` object (then ``params`` must be
    empty and ``context`` is not used).  ``template``: the model or its state dict, giving the arrays'
    names, shapes and dtypes.  When ``template`` is a model, ``context`` gets a ``model_factory``
    (copies of it) unless it names one.  Further keyword arguments go to Flower's ``FedAvg``
    (``fraction_train``, ``min_available_nodes``, ``weighted_by_key``...).
    """

    def __init__(
        self,
        defense: Union[str, Defense],
        params: Optional[Mapping[str, Any]] = None,
        *,
        template: Template,
        context: Optional[Mapping[str, Any]] = None,
        **fedavg_kwargs: Any,
    ) -> None:
        super().__init__(**fedavg_kwargs)
        self.template = _template_state(template)
        context = dict(context or {})
        if isinstance(template, torch.nn.Module) and "model_factory" not in context:
            model = copy.deepcopy(template).cpu()
            context["model_factory"] = lambda: copy.deepcopy(model)
        if isinstance(defense, Defense):
            if params:
                raise ValueError("params are for a defense given by name; this one is already built")
            self.defense = defense
        elif isinstance(defense, str):
            self.defense = build_defense(defense, dict(params or {}), context)
        else:
            raise ValueError(f"defense must be a registered name or a Defense, got {type(defense).__name__}")
        self._index_of: dict[int, int] = {}  # Flower node id -> stable small client index
        self._node_of: dict[int, int] = {}
        self._global: Optional[dict[str, torch.Tensor]] = None
        self.flagged_history: dict[int, list[int]] = {}
        self.last_aggregate: Optional[Aggregate] = None

    # ------------------------------------------------------------------ node ids

    def client_index(self, node_id: int) -> int:
        """The stable index the defense knows node ``node_id`` by (assigned on first sight)."""
        node_id = int(node_id)
        if node_id not in self._index_of:
            index = len(self._index_of)
            self._index_of[node_id] = index
            self._node_of[index] = node_id
        return self._index_of[node_id]

    def node_id_of(self, client_index: int) -> int:
        """The Flower node id behind a defense's client index."""
        return self._node_of[int(client_index)]

    # ------------------------------------------------------------------ rounds

    def summary(self) -> None:
        log(INFO, "\t├──> fedgrad_core defense: %s", self.defense.name)
        super().summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        # The defenses compare each client with the global model it started the round from.
        self._global = arrays_to_state(arrays, self.template)
        return super().configure_train(server_round, arrays, config, grid)

    def set_global(self, arrays: Union[ArrayRecord, Mapping[str, torch.Tensor]]) -> None:
        """Set the global model of the round about to be aggregated (``configure_train`` does this
        in a Flower run; tests calling ``aggregate_train`` directly use this)."""
        if isinstance(arrays, ArrayRecord):
            self._global = arrays_to_state(arrays, self.template)
        else:
            self._global = _template_state(arrays)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[Optional[ArrayRecord], Optional[MetricRecord]]:
        """The defense's aggregate of the round's valid replies, and the accepted clients' metrics
        with ``flagged-node-ids`` and ``num-flagged``."""
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        if self._global is None:
            raise RuntimeError("aggregate_train before configure_train/set_global: no global model to compare with")
        contents = {}
        for msg in valid:
            node = int(msg.metadata.src_node_id)
            if node in contents:
                raise ValueError(f"two training replies from node {node} in round {server_round}")
            contents[node] = msg.content
        for node in sorted(contents):  # first sight in ascending node id: order-free indices
            self.client_index(node)
        record_key = next(iter(contents[next(iter(contents))].array_records))
        sent_keys = list(contents[next(iter(contents))][record_key].keys())
        updates = []
        for node, content in contents.items():
            metrics = next(iter(content.metric_records.values()))
            updates.append(
                ClientUpdate(
                    self.client_index(node),
                    arrays_to_state(content.array_records[record_key], self.template),
                    _sample_count(metrics[self.weighted_by_key], node),
                )
            )
        result = self.defense.aggregate(self._global, updates, server_round)
        self.last_aggregate = result
        flagged_nodes = sorted(self.node_id_of(i) for i in result.flagged)
        self.flagged_history[server_round] = flagged_nodes
        keys = sent_keys if set(sent_keys) != set(self.template) else None
        arrays = state_to_arrays({k: result.global_state[k] for k in self.template}, keys)
        accepted = [c for node, c in contents.items() if node not in set(flagged_nodes)]
        metrics = self.train_metrics_aggr_fn(accepted, self.weighted_by_key) if accepted else MetricRecord()
        metrics["flagged-node-ids"] = flagged_nodes
        metrics["num-flagged"] = len(flagged_nodes)
        return arrays, metrics

    # ------------------------------------------------------------------ state as data

    def state_dict(self) -> dict[str, Any]:
        """The defense's history and the node-id map (plain data, as ``Defense.state_dict``)."""
        return {
            "defense": self.defense.state_dict(),
            "node_ids": [self._node_of[i] for i in range(len(self._node_of))],
            "flagged_history": {int(r): list(v) for r, v in self.flagged_history.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = [k for k in ("defense", "node_ids", "flagged_history") if k not in state]
        if missing:
            raise ValueError(f"strategy state lacks {missing}")
        nodes = [int(n) for n in state["node_ids"]]
        if len(set(nodes)) != len(nodes):
            raise ValueError("strategy state: node_ids repeats a node")
        self.defense.load_state_dict(state["defense"])
        self._node_of = dict(enumerate(nodes))
        self._index_of = {n: i for i, n in enumerate(nodes)}
        self.flagged_history = {int(r): [int(n) for n in v] for r, v in state["flagged_history"].items()}


def _sample_count(value: Any, node: int) -> int:
    count = float(value)
    if not count > 0 or count != int(count):
        raise ValueError(f"node {node}: num-examples must be a positive whole number, got {value!r}")
    return int(count)


# --------------------------------------------------------------------------- named strategies


class _NamedStrategy(DefenseStrategy):
    """``DefenseStrategy(defense_name, params, template=template)``: the defense's parameters are
    keyword arguments, Flower's ``FedAvg`` ones go in ``fedavg_kwargs``."""

    defense_name = ""

    def __init__(
        self,
        template: Template,
        *,
        context: Optional[Mapping[str, Any]] = None,
        fedavg_kwargs: Optional[Mapping[str, Any]] = None,
        **params: Any,
    ) -> None:
        super().__init__(self.defense_name, params, template=template, context=context, **dict(fedavg_kwargs or {}))


class FedGradStrategy(_NamedStrategy):
    """FedGrad (Nguyen et al. 2023): soft and hard filters on the ultimate layer, trust by node."""

    defense_name = "fedgrad"


class KrumStrategy(_NamedStrategy):
    """Krum (Blanchard et al. 2017); ties in score go to the node seen first (lower index)."""

    defense_name = "krum"


class MultiKrumStrategy(_NamedStrategy):
    """Multi-Krum (Blanchard et al. 2017): the ``m`` best models averaged by sample count."""

    defense_name = "multikrum"


class FoolsGoldStrategy(_NamedStrategy):
    """FoolsGold (Fung et al. 2020): its history of summed updates is kept per node."""

    defense_name = "foolsgold"


class RFAStrategy(_NamedStrategy):
    """RFA (Pillutla et al. 2022): geometric median by smoothed Weiszfeld iterations."""

    defense_name = "rfa"


class RLRStrategy(_NamedStrategy):
    """Robust learning rate (Ozdayi et al. 2021): sign vote per coordinate."""

    defense_name = "rlr"


class FlameStrategy(_NamedStrategy):
    """FLAME (Nguyen et al. 2022): HDBSCAN on cosine distances, clipping and noise."""

    defense_name = "flame"


class DeepSightStrategy(_NamedStrategy):
    """DeepSight (Rieger et al. 2022): pass the model as ``template`` (it runs each local model on
    noise inputs) and ``num_classes`` in ``context`` or as a parameter."""

    defense_name = "deepsight"
