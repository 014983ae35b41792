"""FoolsGold (Fung, Yoon and Beschastnikh, "The Limitations of Federated Learning in Sybil
Settings", RAID 2020).

The server keeps, per client id, the sum of the client's updates ``Delta_i = w_i - g`` over the
rounds it took part in, each update first clipped to L2 norm at most ``clip_norm`` = 1
(``Delta_i * min(1, 1 / ||Delta_i||)``, over every float entry of the model).  The clipping is not
in the paper's Algorithm 1; it is what the original FoolsGold code does (DistributedML/FoolsGold,
``ML/code/ML_main.py``: "normalize delta" before ``summed_deltas += delta``) and what the FedGrad
authors' code does (``fl_trainer.py``), and both aggregate the *clipped* updates of the round.  We
follow them by default; ``clip_norm=None`` turns it off (the paper's text).  Each round
(Algorithm 1 of the paper):

1. ``cs_ij`` = cosine similarity of the histories of this round's clients i != j;
   ``v_i = max_j cs_ij`` (the diagonal counts as 0).
2. Pardoning: if ``v_i < v_j`` then ``cs_ij *= v_i / v_j``.
3. ``alpha_i = 1 - max_j cs_ij`` clipped to [0, 1], rescaled so that the largest is 1 (and a 1
   becomes 0.99).
4. ``alpha_i = kappa * (ln(alpha_i / (1 - alpha_i)) + 0.5)`` clipped to [0, 1] (kappa = 1).
5. ``g' = g + sum_i alpha_i n_i Delta_i / sum_i alpha_i n_i`` over this round's (clipped) updates.

Sybils pursuing one objective accumulate nearly parallel histories and get weights near 0; diverse
honest clients get weights near 1.

Assumptions (``ValueError`` when they break): the honest clients' histories are diverse (non-IID
data), the sybils' are alike; ``kappa > 0``.  ``flagged`` = the clients with weight 0.  If every
weight is 0 (all histories pairwise identical: to FoolsGold all are sybils of one another) the
previous global model is kept and every client is flagged.  A client whose history is exactly
zero has cosine similarity 0 to everyone.

Deviations from the FedGrad authors' runs (one line each):

- The weights also multiply the sample counts (theirs: ``np.average`` with the FoolsGold weights alone).
- ``kappa`` (the paper's confidence, default 1) is a parameter; both codes fix it at 1.
- No epsilon inside the pardoning and the logit (theirs added 1e-5 to both; the paper has none);
  pardoning is skipped where ``v_j <= 0`` (a division the paper never meets).
- ``1 - cos < 1e-9`` counts as parallel (alpha 0), so that rounding cannot turn identical
  sybils into weight-1 clients through the rescaling (theirs: whatever the rounding gives).
- ``features="ultimate"`` (an option; default "all" as theirs) keeps only the last linear layer's
  history, which bounds the server's memory (K x d per round, one d-vector per client ever seen).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from fedgrad_core.defenses.base import (
    Aggregate,
    ClientUpdate,
    Defense,
    Layout,
    State,
    register,
    sample_weights,
)
from fedgrad_core.defenses.base import copy_state, cosine_similarities, gram64, sorted_updates, update_matrix


#: ``1 - cos`` below this counts as exactly parallel (float64 rounding of the Gram matrix).
PARALLEL_TOL = 1e-9


def _check_clip_norm(clip_norm: float | None) -> None:
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0 (or None: no clipping), got {clip_norm}")


def clip_rows_(rows: Tensor, clip_norm: float | None) -> Tensor:
    """Scale each row of ``rows`` in place to L2 norm at most ``clip_norm``; returns the scales.

    ``None`` leaves the rows as they are (scales 1).  Norms are summed in float64 row by row (no
    float64 copy of the K x d matrix).
    """
    _check_clip_norm(clip_norm)
    scales = torch.ones(rows.shape[0], dtype=torch.float64)
    if clip_norm is None:
        return scales
    for i, row in enumerate(rows):
        norm = float(torch.linalg.vector_norm(row, dtype=torch.float64))
        if norm > clip_norm:
            scales[i] = clip_norm / norm
            row.mul_(scales[i].item())
    return scales


def foolsgold_weights(history: Tensor, *, kappa: float = 1.0) -> Tensor:
    """FoolsGold's per-client weights in [0, 1] from the K x d matrix of update histories."""
    if not kappa > 0:
        raise ValueError(f"kappa (FoolsGold's confidence) must be > 0, got {kappa}")
    k = history.shape[0]
    cs = cosine_similarities(gram64(history))
    cs.fill_diagonal_(0.0)
    v = cs.max(dim=1).values
    # pardoning: cs_ij *= v_i / v_j where v_i < v_j (and v_j > 0)
    pardon = (v[:, None] < v[None, :]) & (v[None, :] > 0)
    ratio = v[:, None] / torch.where(v[None, :] > 0, v[None, :], 1.0)
    cs = torch.where(pardon, cs * ratio, cs)
    cs.fill_diagonal_(0.0)
    alpha = (1.0 - cs.max(dim=1).values).clamp(0.0, 1.0)
    # cosines within float64 rounding of 1 are parallel histories: without this, rounding noise
    # of ~1e-16 would be rescaled to weight 1 below
    alpha[alpha < PARALLEL_TOL] = 0.0
    top = float(alpha.max())  # K >= 1: aggregate() refuses an empty round
    if top <= 0.0:
        return torch.zeros(k, dtype=torch.float64)
    alpha = alpha / top
    alpha[alpha >= 1.0] = 0.99
    with torch.no_grad():
        logit = torch.log(alpha) - torch.log1p(-alpha)  # -inf where alpha == 0
    return (kappa * (logit + 0.5)).clamp(0.0, 1.0)


def foolsgold(
    global_state: State,
    updates: Sequence[ClientUpdate],
    history: Tensor,
    *,
    kappa: float = 1.0,
    deltas: Tensor | None = None,
    clip_norm: float | None = None,
) -> Aggregate:
    """Aggregate the round with FoolsGold's weights computed from ``history``.

    ``history`` is the K x d' matrix of summed updates of ``updates``' clients, rows in the order
    of ``updates`` (this round's update included).  ``deltas``, when given, is the K x d matrix of
    this round's updates in the same order (saves flattening the states again); the average is
    taken over them as given.  Without ``deltas`` the updates are formed from the states and
    clipped to L2 norm ``clip_norm`` (None: not clipped).
    """
    if history.shape[0] != len(updates):
        raise ValueError(f"history has {history.shape[0]} rows for {len(updates)} updates")
    layout = Layout.of(global_state)
    g = layout.flatten(global_state)
    if deltas is None:
        _, _, deltas = update_matrix(global_state, updates)
        clip_rows_(deltas, clip_norm)
    order = sorted(range(len(updates)), key=lambda i: updates[i].client_id)
    updates = [updates[i] for i in order]
    history = history[order]
    ids = [u.client_id for u in updates]
    weights = foolsgold_weights(history, kappa=kappa)
    diagnostics: dict[str, Any] = {"weights": {str(i): float(w) for i, w in zip(ids, weights.tolist())}}
    flagged = frozenset(i for i, w in zip(ids, weights.tolist()) if w <= 0.0)
    combined = weights * sample_weights(updates)
    if float(combined.sum()) <= 0.0:
        diagnostics["kept_previous_model"] = "every FoolsGold weight is 0"
        return Aggregate(copy_state(global_state), flagged, diagnostics)
    coeffs = torch.zeros(len(order), dtype=torch.float64)
    coeffs[order] = combined / combined.sum()  # back to the rows' original order
    new = g + coeffs.to(torch.float32) @ deltas
    return Aggregate(layout.unflatten(new, global_state), flagged, diagnostics)


@register("foolsgold")
class FoolsGold(Defense):
    """FoolsGold with its per-client history (summed clipped updates keyed by client id).

    ``clip_norm`` (default 1, as the original code and the FedGrad authors' code): each round's
    update is scaled to L2 norm at most ``clip_norm`` before it enters the history and the
    average; ``None`` turns the clipping off.  The clip scales go to ``diagnostics["clip_scale"]``.
    """

    name = "foolsgold"

    def __init__(
        self,
        *,
        kappa: float = 1.0,
        features: str = "all",
        clip_norm: float | None = 1.0,
        model_factory: Callable[[], torch.nn.Module] | None = None,
    ) -> None:
        if not kappa > 0:
            raise ValueError(f"kappa (FoolsGold's confidence) must be > 0, got {kappa}")
        _check_clip_norm(clip_norm)
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        if features not in ("all", "ultimate"):
            raise ValueError(f"features must be 'all' or 'ultimate', got {features!r}")
        self.kappa = float(kappa)
        self.features = features
        self.ultimate_keys: tuple[str, str] | None = None
        if features == "ultimate":
            if model_factory is None:
                raise ValueError("features='ultimate' needs model_factory to find the last layer")
            from fedgrad_core.models import ultimate_layer

            self.ultimate_keys = ultimate_layer(model_factory())  # names only: stays picklable
        self.history: dict[int, Tensor] = {}

    def aggregate_finite(self, global_state, updates, round_idx) -> Aggregate:
        updates = sorted_updates(updates)
        layout, _, deltas = update_matrix(global_state, updates)
        # clip the whole update (as the reference codes) before it enters history and average
        scales = clip_rows_(deltas, self.clip_norm)
        if self.ultimate_keys is None:
            rows = deltas
        else:
            rows = torch.cat([deltas[:, layout.slice_of(k)] for k in self.ultimate_keys], dim=1)
        for u, row in zip(updates, rows):
            previous = self.history.get(u.client_id)
            if previous is None:
                self.history[u.client_id] = row.clone()
            elif previous.shape != row.shape:
                raise ValueError(
                    f"client {u.client_id}: history has {previous.numel()} entries, update has {row.numel()}"
                )
            else:
                previous.add_(row)
        history = torch.stack([self.history[u.client_id] for u in updates])
        result = foolsgold(global_state, updates, history, kappa=self.kappa, deltas=deltas)
        result.diagnostics["clip_scale"] = {str(u.client_id): float(s) for u, s in zip(updates, scales)}
        return result

    # ------------------------------------------------------------------ state as data

    # 2: records clip_norm (histories summed from clipped updates must not resume unclipped)
    state_version = 2

    def state_dict(self) -> dict[str, Any]:
        """The summed updates as one matrix, rows in ascending client id (``client_ids``)."""
        ids = sorted(self.history)
        rows = torch.stack([self.history[c] for c in ids]) if ids else torch.zeros((0, 0))
        return self._versioned(
            {
                "features": self.features,
                "clip_norm": self.clip_norm,
                "client_ids": torch.tensor(ids, dtype=torch.int64),
                "history": rows.detach().cpu().clone(),
            }
        )

    def load_state_dict(self, state: Any) -> None:
        """Restore ``state_dict()``'s histories (ValueError for another defense, version or
        ``features`` or ``clip_norm`` setting)."""
        self._check_state(state, ("features", "clip_norm", "client_ids", "history"))
        for setting in ("features", "clip_norm"):
            if state[setting] != getattr(self, setting):
                raise ValueError(
                    f"defense {self.name!r}: the saved history is over {setting}={state[setting]!r}, "
                    f"this run uses {setting}={getattr(self, setting)!r}"
                )
        ids = self._state_tensor(state, "client_ids", dtype=torch.int64, shape=(None,)).tolist()
        # float32, as the update matrix the histories are summed from
        rows = self._state_tensor(state, "history", dtype=torch.float32, shape=(len(ids), None))
        if len(set(ids)) != len(ids):
            raise ValueError(f"defense {self.name!r}: saved state entry 'client_ids' repeats a client id")
        self.history = {int(c): row.clone() for c, row in zip(ids, rows)}
