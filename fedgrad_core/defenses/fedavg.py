"""FedAvg (McMahan et al., AISTATS 2017): the sample-weighted average of the clients' models.

Assumes nothing about the clients; it is the no-defense reference of every table.
"""

from __future__ import annotations

from typing import Sequence

from fedgrad_core.defenses.base import (
    Aggregate,
    ClientUpdate,
    Defense,
    Layout,
    State,
    register,
    sample_weights,
    stack_states,
    weighted_average,
)


def fedavg(global_state: State, updates: Sequence[ClientUpdate]) -> dict:
    """sum_i (n_i / n) w_i over the round's updates, as a state dict shaped like ``global_state``."""
    layout = Layout.of(global_state)
    rows = stack_states(updates, layout)
    return layout.unflatten(weighted_average(rows, sample_weights(updates)), global_state)


@register("fedavg")
class FedAvg(Defense):
    name = "fedavg"

    def aggregate_finite(self, global_state, updates, round_idx) -> Aggregate:
        return Aggregate(fedavg(global_state, updates))
