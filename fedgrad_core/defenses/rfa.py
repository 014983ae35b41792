"""RFA, robust federated aggregation by the geometric median (Pillutla, Kakade and Harchaoui,
"Robust Aggregation for Federated Learning", IEEE Transactions on Signal Processing 2022).

The new global model is the weighted geometric median ``argmin_z sum_i alpha_i ||z - w_i||`` of
the clients' models (``alpha_i`` = sample fractions), computed by the smoothed Weiszfeld
algorithm: start at the weighted mean, then repeat ``beta_i = alpha_i / max(eps, ||z - w_i||)``,
``z = sum_i beta_i w_i / sum_i beta_i`` until the objective's relative decrease is below ``ftol``
or ``max_iter`` iterations ran.  Every iterate is a convex combination of the models, so the
distances come from one float64 Gram matrix of the updates and an iteration costs O(K^2), not
O(K d): the d-length work is the Gram matrix and the final weighted average.

Assumptions (``ValueError`` when they break): fewer than half of the total weight is malicious
(the geometric median's breakdown point); ``max_iter >= 1``, ``eps > 0``, ``ftol >= 0``.
RFA excludes no one: ``flagged`` is empty, the final Weiszfeld weights go to the diagnostics.

Deviations from the FedGrad authors' runs (one line each):

- Same stopping rule (at most 500 iterations, relative tolerance 1e-7, smoothing eps = 1e-5), but
  distances come from the float64 Gram matrix of the updates w_i - g (theirs: float32/float64
  vectors of full models); the median is shift-invariant, so only rounding differs.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from fedgrad_core.defenses.base import (
    Aggregate,
    ClientUpdate,
    Defense,
    State,
    register,
    sample_weights,
)
from fedgrad_core.defenses.base import combine, gram64, sorted_updates, update_matrix


#: The FedGrad authors' settings (one definition for the function and the class defaults).
MAX_ITER = 500
EPS = 1e-5
FTOL = 1e-7


def _check(max_iter: int, eps: float, ftol: float) -> None:
    if int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter}")
    if not eps > 0:
        raise ValueError(f"eps (Weiszfeld smoothing) must be > 0, got {eps}")
    if not ftol >= 0:
        raise ValueError(f"ftol must be >= 0, got {ftol}")


def weiszfeld_weights(
    gram: Tensor, alphas: Tensor, *, max_iter: int = MAX_ITER, eps: float = EPS, ftol: float = FTOL
) -> tuple[Tensor, int, float]:
    """Smoothed Weiszfeld on points given by their Gram matrix.

    Returns ``(beta, iterations, objective)``: the median is ``sum_i beta_i x_i`` (beta sums to 1).
    """
    _check(max_iter, eps, ftol)
    alphas = alphas.to(torch.float64)
    alphas = alphas / alphas.sum()
    sq = gram.diagonal()

    def distances(beta: Tensor) -> Tensor:
        # ||z - x_i||^2 = beta' G beta - 2 (G beta)_i + G_ii  for z = sum_j beta_j x_j
        g_beta = gram @ beta
        return (beta @ g_beta - 2.0 * g_beta + sq).clamp_min(0.0).sqrt()

    beta = alphas.clone()
    dist = distances(beta)
    objective = float(alphas @ dist)
    for iterations in range(1, int(max_iter) + 1):  # max_iter >= 1: the loop always binds it
        new_beta = alphas / dist.clamp_min(eps)
        new_beta = new_beta / new_beta.sum()
        new_dist = distances(new_beta)
        new_objective = float(alphas @ new_dist)
        beta, dist, previous, objective = new_beta, new_dist, objective, new_objective
        if abs(previous - objective) <= ftol * objective:
            break
    return beta, iterations, objective


def rfa(
    global_state: State,
    updates: Sequence[ClientUpdate],
    *,
    max_iter: int = MAX_ITER,
    eps: float = EPS,
    ftol: float = FTOL,
) -> Aggregate:
    """The sample-weighted geometric median of the round's models (smoothed Weiszfeld)."""
    _check(max_iter, eps, ftol)
    updates = sorted_updates(updates)
    layout, g, deltas = update_matrix(global_state, updates)
    beta, iterations, objective = weiszfeld_weights(
        gram64(deltas), sample_weights(updates), max_iter=max_iter, eps=eps, ftol=ftol
    )
    median = g + combine(deltas, beta)
    return Aggregate(
        layout.unflatten(median, global_state),
        frozenset(),
        {
            "weiszfeld_weights": {str(u.client_id): float(b) for u, b in zip(updates, beta)},
            "iterations": iterations,
            "objective": objective,
        },
    )


@register("rfa")
class RFA(Defense):
    name = "rfa"

    def __init__(self, *, max_iter: int = MAX_ITER, eps: float = EPS, ftol: float = FTOL) -> None:
        _check(max_iter, eps, ftol)
        self.max_iter = int(max_iter)
        self.eps = float(eps)
        self.ftol = float(ftol)

    def aggregate_finite(self, global_state, updates, round_idx) -> Aggregate:
        return rfa(global_state, updates, max_iter=self.max_iter, eps=self.eps, ftol=self.ftol)
