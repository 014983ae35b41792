"""FedAvg (McMahan et al., AISTATS 2017): the sample-weighted average of the clients' models.

Assumes nothing about the clients; it is the no-defense reference of every table.
"""

from __future__ import annotations

from typing import Sequence

import torch

from fedgrad_core.defenses.base import Aggregate, ClientUpdate, Defense, State, register, sample_weights


def fedavg(global_state: State, updates: Sequence[ClientUpdate]) -> dict:
    """sum_i (n_i / n) w_i over the round's updates, as a state dict shaped like ``global_state``.

    Accumulated tensor by tensor (no K x d matrix: FedAvg needs no pairwise geometry); non-float
    buffers come from the global model.
    """
    weights = sample_weights(updates).tolist()
    out = {}
    for name, tensor in global_state.items():
        if not torch.is_floating_point(tensor):
            out[name] = tensor.detach().clone()
            continue
        acc = torch.zeros_like(tensor, dtype=torch.float64 if tensor.dtype == torch.float64 else torch.float32)
        for u, w in zip(updates, weights):
            acc.add_(u.state[name].detach().to(acc.device), alpha=w)
        out[name] = acc.to(dtype=tensor.dtype, device=tensor.device)
    return out


@register("fedavg")
class FedAvg(Defense):
    name = "fedavg"

    def aggregate_finite(self, global_state, updates, round_idx) -> Aggregate:
        return Aggregate(fedavg(global_state, updates))
