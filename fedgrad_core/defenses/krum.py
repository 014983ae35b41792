"""Krum and Multi-Krum (Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant
Gradient Descent", NeurIPS 2017).

Each client i gets the score ``sum of squared L2 distances to its n - f - 2 nearest other
clients``; Krum makes the single lowest-scoring client's model the global model, Multi-Krum
averages the ``m`` lowest-scoring models (default ``m = n - f``), weighted by sample count.

Assumptions (``ValueError`` when they break): at most ``f`` of the ``n`` clients are Byzantine and
``n > 2f + 2`` (Blanchard et al., Proposition 1); ``f`` defaults to ``int(attacker_fraction * n)``
(FedGrad paper, section 5.1: ``floor(eps * K)``).

Pairwise distances come from one float64 Gram matrix of the updates (``defenses.base``), never
from a Python loop over client pairs.

Deviations from the FedGrad authors' runs (one line each):

- Ties in score are broken by the lower client id (theirs: by position in the round's list).
- When NaN/inf updates are dropped and fewer than ``2f + 3`` remain, ``f`` shrinks to the largest
  admissible value for that round (recorded in diagnostics); with fewer than 3 left, the previous
  global model is kept.
- Multi-Krum's selection counts ``m = n - f`` from the scores computed once (as theirs); ``m`` is
  a parameter.
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
    combine,
    copy_state,
    gram64,
    register,
    resolve_f,
    sample_weights,
    sorted_updates,
    squared_distances,
    sum_of_nearest,
    update_matrix,
)

# --------------------------------------------------------------------------- the rule


def check_krum_assumption(n: int, f: int) -> None:
    if n <= 2 * f + 2:
        raise ValueError(
            f"Krum needs n > 2f + 2 clients per round; got n = {n}, f = {f} "
            f"(n - f - 2 = {n - f - 2} neighbours are too few for the scores to be robust)"
        )


def krum_scores(deltas: Tensor, f: int) -> Tensor:
    """Krum's score of each row: sum of squared distances to its ``n - f - 2`` nearest other rows.

    ``deltas`` may be full models or updates (distances do not depend on the origin).  float64.
    """
    n = deltas.shape[0]
    check_krum_assumption(n, f)
    return sum_of_nearest(squared_distances(gram64(deltas)), n - f - 2)


def krum_select(deltas: Tensor, client_ids: Sequence[int], *, f: int, m: int) -> tuple[list[int], Tensor]:
    """Positions of the ``m`` best rows (lowest score; ties broken by lower client id) and scores."""
    n = deltas.shape[0]
    if not 1 <= m <= n:
        raise ValueError(f"Multi-Krum's m must be in [1, n = {n}], got {m}")
    scores = krum_scores(deltas, f)
    ids = torch.tensor(list(client_ids), dtype=torch.float64)
    # lexicographic (score, client id): sort by id first, then a stable sort by score
    by_id = torch.argsort(ids, stable=True)
    order = by_id[torch.argsort(scores[by_id], stable=True)]
    return order[:m].tolist(), scores


def krum(
    global_state: State,
    updates: Sequence[ClientUpdate],
    *,
    f: int | None = None,
    attacker_fraction: float = 0.25,
    m: int | None = None,
    multi: bool = False,
) -> Aggregate:
    """Krum (``multi=False``: the best client's model) or Multi-Krum (the ``m`` best averaged).

    ``f`` defaults to ``int(attacker_fraction * n)``; ``m`` (Multi-Krum only) to ``n - f``.
    Raises ``ValueError`` when ``n <= 2f + 2``.
    """
    updates = sorted_updates(updates)
    n = len(updates)
    f_used = resolve_f(n, f=f, attacker_fraction=attacker_fraction)
    check_krum_assumption(n, f_used)
    if multi:
        m_used = n - f_used if m is None else int(m)
    else:
        m_used = 1
    layout, g, deltas = update_matrix(global_state, updates)
    ids = [u.client_id for u in updates]
    chosen, scores = krum_select(deltas, ids, f=f_used, m=m_used)
    if multi:
        chosen_updates = [updates[i] for i in chosen]
        coeffs = torch.zeros(n, dtype=torch.float64)
        coeffs[chosen] = sample_weights(chosen_updates)
        avg = combine(deltas, coeffs)
        new_state = layout.unflatten(g + avg, global_state)
    else:
        best = updates[chosen[0]].state
        # the chosen client's model itself, with the global model's non-float buffers
        new_state = {
            k: (best[k].detach().clone() if k in layout.names else v.detach().clone()) for k, v in global_state.items()
        }
    selected = {ids[i] for i in chosen}
    return Aggregate(
        new_state,
        frozenset(set(ids) - selected),
        {
            "f": f_used,
            "m": m_used,
            "selected": sorted(selected),
            "scores": {str(i): float(s) for i, s in zip(ids, scores.tolist())},
        },
    )


# --------------------------------------------------------------------------- registered classes


class _KrumBase(Defense):
    multi = False

    def __init__(self, *, attacker_fraction: float = 0.25, f: int | None = None, m: int | None = None) -> None:
        if not 0.0 <= attacker_fraction < 1.0:
            raise ValueError(f"attacker_fraction must be in [0, 1), got {attacker_fraction}")
        if f is not None and f < 0:
            raise ValueError(f"f must be >= 0, got {f}")
        if m is not None and m < 1:
            raise ValueError(f"m must be >= 1, got {m}")
        # Krum's own __init__ takes no m: make_defense("krum", m=...) is refused by the registry
        self.attacker_fraction = float(attacker_fraction)
        self.f = f
        self.m = m

    def validate(self, clients_per_round: int) -> None:
        f = resolve_f(clients_per_round, f=self.f, attacker_fraction=self.attacker_fraction)
        check_krum_assumption(clients_per_round, f)
        if self.m is not None and self.m > clients_per_round:
            raise ValueError(f"m = {self.m} exceeds the {clients_per_round} clients per round")

    def aggregate_finite(self, global_state, updates, round_idx) -> Aggregate:
        n = len(updates)
        if n < 3:
            return Aggregate(
                copy_state(global_state),
                frozenset(),
                {"kept_previous_model": f"Krum needs at least 3 finite updates, got {n}"},
            )
        f = resolve_f(n, f=self.f, attacker_fraction=self.attacker_fraction)
        reduced = f > (n - 3) // 2
        f = min(f, (n - 3) // 2)
        m = None if self.m is None else min(self.m, n)
        result = krum(global_state, updates, f=f, m=m, multi=self.multi)
        if reduced:
            result.diagnostics["f_reduced_to"] = f
        return result


@register("krum")
class Krum(_KrumBase):
    name = "krum"
    multi = False

    def __init__(self, *, attacker_fraction: float = 0.25, f: int | None = None) -> None:
        super().__init__(attacker_fraction=attacker_fraction, f=f)


@register("multikrum")
class MultiKrum(_KrumBase):
    name = "multikrum"
    multi = True
