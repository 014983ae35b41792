"""FedGrad (Nguyen et al., "FedGrad: Mitigating Backdoor Attacks in Federated Learning Through
Local Ultimate Gradients Inspection", IJCNN 2023).

Each round, on the *ultimate layer* (the last fully connected layer: weight ``W``, bias ``b``):

1. soft filter (paper 4.2): every client's score ``cos(W_i - W*, W* - W_prev)`` (``W*``: the
   sample-weighted mean), min-max scaled over the round, kept as a running mean per client; ``S1``
   is every client strictly above ``eps1 = min(zeta, median)`` (``strict_factor x eps1``, 6.3);
2. hard filter (4.3): the by-class sums of each client's ultimate change, L2-normalised, give two
   K x K cosine matrices, kept as running means per ordered pair of clients; KMeans splits the
   round's rows in two; the cluster without the lowest closeness score (Krum's score of the
   models) is ``S2``;
3. trust score (4.4): a client's history holds ``lambda1`` for every round it ended suspicious,
   ``lambda2`` otherwise; suspicious clients whose mean is ``>= gamma`` are cleared;
4. the rest of ``S1 u S2`` is dropped, the others' models are averaged by sample count.

The hard filter and the trust score act from ``switch_round``; their histories start in round 1.

Assumptions: the attackers' ultimate changes point elsewhere than the benign ones'; at most
``f = attacker_fraction x K`` of a round are attackers (the closeness score's ``K - f - 2``).

Where paper and authors' code differ or are silent (``*``: this reproduction's own choice):

- Soft score along the update direction ``W* - W_prev`` (the paper's gradient flips the sign).
- By-class sums of ``W_i - W*`` (``gradient="authors"``; ``"update"``: the paper's ``W_i - W_prev``).
- Bias change ``b_i - b_prev``, the paper's (``bias="raw"``: the authors' ``b_i``).
- Both similarity matrices min-max scaled column by column (the paper scales none).
- Closeness over the model's parameters, not BatchNorm statistics (``closeness="ultimate"``).
- Trust starts at ``[0.5]``, clears at ``>= gamma`` (paper: "exceed"), decided before the round's entry.
- Clearing everybody keeps ``S1`` (``fallback="none"``: nobody is suspicious).
- ``*`` KMeans seeded; no ``S2`` below 4 clients or for identical rows; clients taken in id order.
- Everybody suspicious: the previous model is kept.

Options beyond the paper (threshold rule, forgiving trust, Table 4's switches, hardening): ``fedgrad_variants``.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from fedgrad_core.defenses import fedgrad_variants as variants
from fedgrad_core.defenses.base import Aggregate, ClientUpdate, Defense, Layout, State, combine, copy_state, register
from fedgrad_core.defenses.base import sample_weights, sorted_updates, stack_states, sum_of_nearest, weighted_average
from fedgrad_core.defenses.fedgrad_state import FedGradHistory, FedGradParams, parameter_names
from fedgrad_core.defenses.fedgrad_variants import PAPER, Variant

# Shared geometry and Krum's score, importable from here as before (notebooks, the book's API page).
from fedgrad_core.defenses.base import column_min_max, cosine_matrix, cosine_to, find_ultimate_layer, min_max_scale
from fedgrad_core.defenses.base import normalize_rows, pairwise_sq_distances, parameter_columns, parameter_keys
from fedgrad_core.defenses.krum import krum_scores  # noqa: F401


# --------------------------------------------------------------------------- soft filter (4.2)
def compromising_scores(ultimate_weights: Tensor, weights: Tensor, previous: Tensor) -> np.ndarray:
    """Raw scores ``cos(W_i - W*, W* - W_prev)``: K x p flattened ultimate weights, sample
    weights (need not be normalised), the previous global ultimate weight (p)."""
    rows, w = ultimate_weights.to(torch.float64), weights.to(torch.float64)
    w_star = (w / w.sum()) @ rows
    return cosine_to(rows - w_star, w_star - previous.to(torch.float64))


def soft_filter_threshold(
    scores: Sequence[float], *, zeta: float = 0.5, strict_factor: Optional[float] = None, rule: str = "median"
) -> float:
    """``eps1 = min(zeta, median)`` of the running means; ``strict_factor x eps1`` (paper 6.3);
    ``rule="largest_gap"``: ``fedgrad_variants.largest_gap_threshold``."""
    values = np.asarray(scores, dtype=np.float64)
    if values.size == 0:
        raise ValueError("soft_filter_threshold needs at least one score")
    if rule not in variants.SOFT_THRESHOLD_CHOICES:
        raise ValueError(f"soft threshold rule must be one of {list(variants.SOFT_THRESHOLD_CHOICES)}, got {rule!r}")
    eps1 = min(float(zeta), float(np.median(values)))
    if rule == "largest_gap":
        if strict_factor is not None:
            raise ValueError("strict_factor scales the median threshold; it cannot be combined with 'largest_gap'")
        return variants.largest_gap_threshold(values, eps1)
    return eps1 if strict_factor is None else float(strict_factor) * eps1


def soft_filter(
    scores: Sequence[float], *, zeta: float = 0.5, strict_factor: Optional[float] = None, rule: str = "median"
) -> tuple[float, np.ndarray]:
    """(threshold, mask of the clients strictly above it) for the round's running means."""
    cut = soft_filter_threshold(scores, zeta=zeta, strict_factor=strict_factor, rule=rule)
    return cut, np.asarray(scores, dtype=np.float64) > cut


# --------------------------------------------------------------------------- hard filter (4.3)
def by_class_vectors(weight_change: np.ndarray, bias_vector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised (row sums of the K x v x u weight change, K x v bias vector)."""
    return normalize_rows(np.asarray(weight_change, dtype=np.float64).sum(axis=2)), normalize_rows(bias_vector)


def round_similarities(mu_w: np.ndarray, mu_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The round's two K x K similarity matrices, each min-max scaled column by column."""
    return column_min_max(cosine_matrix(mu_w)), column_min_max(cosine_matrix(mu_b))


def closeness_neighbors(num_clients: int, num_attackers: int) -> int:
    """``K - f - 2`` clipped to [1, K - 1] (at least one neighbour, at most all others)."""
    return int(min(max(num_clients - num_attackers - 2, 1), num_clients - 1))


def closeness_scores(
    rows: Tensor, num_attackers: int, *, center: Optional[Tensor] = None, columns: Optional[Sequence[slice]] = None
) -> np.ndarray:
    """Krum's score of the K x d models with ``K - f - 2`` neighbours (clipped to at least 1);
    ``center`` and ``columns`` as in ``pairwise_sq_distances``."""
    k = rows.shape[0]
    if k < 2:
        raise ValueError("closeness scores need at least two clients")
    dists = torch.from_numpy(pairwise_sq_distances(rows, center=center, columns=columns))
    return sum_of_nearest(dists, closeness_neighbors(k, num_attackers)).numpy()


def hard_filter_split(
    attributes: np.ndarray, closeness: np.ndarray, *, seed: int, n_init: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """(mask of S2, labels): KMeans in 2 over the K x 2K attributes; the cluster of the lowest
    closeness score is benign.  Fewer than two distinct points: nobody (labels 0)."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    attributes = np.asarray(attributes, dtype=np.float64)
    k = attributes.shape[0]
    if k < 2 or np.unique(np.round(attributes, 12), axis=0).shape[0] < 2:
        return np.zeros(k, dtype=bool), np.zeros(k, dtype=np.int64)
    with warnings.catch_warnings(), threadpool_limits(limits=1):  # a few dozen points: thread start-up > fit
        warnings.simplefilter("ignore")
        labels = KMeans(n_clusters=2, n_init=n_init, random_state=seed).fit_predict(attributes)
    anchor = int(np.argmin(np.asarray(closeness, dtype=np.float64)))
    return labels != labels[anchor], labels.astype(np.int64)


# --------------------------------------------------------------------------- trust score (4.4)
def clear_trusted(
    suspicious: np.ndarray, trust: np.ndarray, *, gamma: float, fallback: Optional[np.ndarray] = None
) -> tuple[np.ndarray, np.ndarray]:
    """(final mask, cleared mask): suspicious clients with trust ``>= gamma`` are cleared; when
    that clears everybody, the ``fallback`` mask (S1) of the suspicious is kept."""
    suspicious = np.asarray(suspicious, dtype=bool)
    final = suspicious & ~(np.asarray(trust, dtype=np.float64) >= gamma)
    if suspicious.any() and not final.any() and fallback is not None:
        final = np.asarray(fallback, dtype=bool) & suspicious
    return final, suspicious & ~final


# --------------------------------------------------------------------------- the round
def fedgrad_round(
    history: FedGradHistory, global_state: State, updates: Sequence[ClientUpdate], round_idx: int, *,
    params: FedGradParams, variant: Variant = PAPER,
) -> Aggregate:  # fmt: skip
    """One round of FedGrad over finite updates; folds the round into ``history``."""
    updates = sorted_updates(updates)
    ids = [int(u.client_id) for u in updates]
    k = len(updates)
    wkey, bkey = params.ultimate_layer or find_ultimate_layer(global_state)
    if missing := [key for key in (wkey, bkey) if key not in global_state]:
        raise ValueError(f"ultimate layer key {missing[0]!r} is not in the model's state")
    weights = sample_weights(updates)
    later = round_idx >= params.switch_round
    w_prev, b_prev = (global_state[key].detach().to(torch.float64) for key in (wkey, bkey))  # v x u, v: float64
    w_all, b_all = (torch.stack([u.state[key].detach().to(torch.float64) for u in updates]) for key in (wkey, bkey))

    # soft filter: scored every round, so that the running means are complete
    raw = compromising_scores(w_all.reshape(k, -1), weights, w_prev.reshape(-1))
    cumulative = history.fold_soft(ids, min_max_scale(raw))
    cut, s1 = soft_filter(cumulative, zeta=params.zeta, strict_factor=params.strict_factor, rule=variant.soft_threshold)
    s1 = s1 & variant.use_soft

    # hard filter: history from the first round, acting from switch_round
    s2, closeness, labels, rows, layout = np.zeros(k, dtype=bool), None, None, None, Layout.of(global_state)

    def closeness_of() -> np.ndarray:  # the full models' closeness (sets ``rows``) or the ultimate layer's
        nonlocal rows
        f = params.num_attackers(k)
        if params.closeness == "ultimate":
            return closeness_scores(torch.cat([(w_all - w_prev).reshape(k, -1), b_all - b_prev], dim=1), f)
        rows = stack_states(updates, layout)
        columns = parameter_columns(layout, parameter_keys(global_state, params.parameter_names))
        return closeness_scores(rows, f, center=layout.flatten(global_state), columns=columns)

    if variant.use_hard:
        w_star = ((weights / weights.sum()) @ w_all.reshape(k, -1)).reshape(w_prev.shape)
        dw = w_all - (w_prev if params.gradient == "update" else w_star)  # the change summed by class below
        db = b_all - b_prev if params.bias == "update" else b_all
        acc_w, acc_b = history.fold_pairs(ids, *round_similarities(*by_class_vectors(dw.numpy(), db.numpy())))
        if later and k >= 4:
            closeness = closeness_of()
            attributes = np.concatenate([acc_w, acc_b], axis=1)
            s2, labels = hard_filter_split(attributes, closeness, seed=params.seed, n_init=params.kmeans_n_init)
    s3 = np.zeros(k, dtype=bool)  # hardened: closeness outliers, every round (fedgrad_variants)
    if variant.closeness_mad is not None and k >= 4:
        closeness = closeness_of() if closeness is None else closeness
        s3 = variants.closeness_outliers(closeness, k=variant.closeness_mad)

    # trust: the mean before this round's entry decides; the entry records the final decision
    suspicious = s1 | s2 | s3
    trust = np.array([history.trust_of(c) for c in ids])
    final, cleared = suspicious, np.zeros(k, dtype=bool)
    if variant.use_trust and later:
        fallback = s1 if params.fallback == "s1" else None
        final, cleared = clear_trusted(suspicious, trust, gamma=params.gamma, fallback=fallback)
    history.record_trust(ids, final, lambda1=params.lambda1, lambda2=params.lambda2)

    def by_id(values: Optional[np.ndarray]) -> dict[str, float]:
        return {} if values is None else {str(c): float(v) for c, v in zip(ids, values)}

    masks = {"s1": s1, "s2": s2, "cleared": cleared, "suspicious": final}
    if variant.closeness_mad is not None:
        masks["s3"] = s3
    diagnostics: dict[str, Any] = {key: [c for c, m in zip(ids, mask) if m] for key, mask in masks.items()}
    diagnostics.update(soft_scores=by_id(cumulative), soft_threshold=float(cut), trust=by_id(trust))
    diagnostics.update(hard_active=labels is not None, closeness=by_id(closeness))
    if labels is not None:
        diagnostics["clusters"] = {str(c): int(v) for c, v in zip(ids, labels)}

    # the kept clients' full models, averaged by sample count
    keep = ~final
    if not keep.any():
        new_state = copy_state(global_state)
        diagnostics["kept_previous_model"] = "every client was suspicious"
    elif rows is None and not variant.clip_to_median:
        kept = stack_states([u for u, ok in zip(updates, keep) if ok], layout)
        new_state = layout.unflatten(weighted_average(kept, weights[torch.from_numpy(keep)]), global_state)
    else:  # weight 0 for the dropped rows (all finite): no K' x d copy of the kept ones
        rows = stack_states(updates, layout) if rows is None else rows
        kept_weights = torch.where(torch.from_numpy(keep), weights, torch.zeros_like(weights))
        if variant.clip_to_median:  # hardened: w + sum_i c_i s_i (w_i - w), s_i from clip_scales
            center = layout.flatten(global_state)
            coeffs = kept_weights / kept_weights.sum() * variants.clip_scales(rows, center, keep)
            flat = combine(rows, coeffs).add_(center, alpha=1.0 - float(coeffs.sum()))
        else:
            flat = weighted_average(rows, kept_weights)
        new_state = layout.unflatten(flat, global_state)
    return Aggregate(new_state, frozenset(diagnostics["suspicious"]), diagnostics)


@register("fedgrad")
class FedGrad(Defense):
    """FedGrad's soft filter, hard filter and trust score (see the module docstring).

    The parameters are ``FedGradParams``' and ``fedgrad_variants.Variant``'s, readable as attributes."""

    name = "fedgrad"
    state_version = 1

    def __init__(
        self, *, zeta: float = 0.5, gamma: float = 0.75, lambda1: float = 0.25, lambda2: float = 1.0,
        switch_round: int = 50, use_soft: bool = True, use_hard: bool = True, use_trust: bool = True,
        num_attackers_estimate: Optional[int] = None, attacker_fraction: float = 0.25,
        strict_factor: Optional[float] = None, gradient: str = "authors", bias: str = "update",
        closeness: str = "full", fallback: str = "s1", kmeans_n_init: int = 10, seed: int = 0,
        ultimate_layer: Optional[Sequence[str]] = None, model_factory: Optional[Callable[[], torch.nn.Module]] = None,
        soft_threshold: str = "median", trust_decay: Optional[float] = None,
        closeness_mad: Optional[float] = None, clip_to_median: bool = False,
    ) -> None:  # fmt: skip
        self.params = FedGradParams(
            zeta=zeta, gamma=gamma, lambda1=lambda1, lambda2=lambda2, switch_round=switch_round,
            num_attackers_estimate=num_attackers_estimate, attacker_fraction=attacker_fraction,
            strict_factor=strict_factor, gradient=gradient, bias=bias, closeness=closeness, fallback=fallback,
            kmeans_n_init=kmeans_n_init, seed=seed, ultimate_layer=ultimate_layer,
            parameter_names=parameter_names(model_factory),
        )  # fmt: skip
        self.variant = Variant(
            soft_threshold, trust_decay, use_soft, use_hard, use_trust, closeness_mad, clip_to_median
        )
        if soft_threshold == "largest_gap" and strict_factor is not None:
            raise ValueError("strict_factor scales the median threshold; it cannot be combined with 'largest_gap'")
        self.history = FedGradHistory(self.variant.trust_decay)

    def __getattr__(self, name: str) -> Any:  # ``defense.zeta``: the fields of ``params`` and ``variant``
        for holder in (self.__dict__.get("params"), self.__dict__.get("variant")):
            if name in getattr(holder, "__dataclass_fields__", ()):
                return getattr(holder, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def validate(self, clients_per_round: int) -> None:
        if clients_per_round < 1:
            raise ValueError("FedGrad needs at least one client per round")

    def num_attackers(self, num_clients: int) -> int:
        return self.params.num_attackers(num_clients)

    def trust_of(self, client_id: int) -> float:
        """The client's current trust (0.5 for a client never seen)."""
        return self.history.trust_of(client_id)

    def aggregate_finite(self, global_state: State, updates: Sequence[ClientUpdate], round_idx: int) -> Aggregate:
        """One round: ``fedgrad_round`` over this defense's history."""
        return fedgrad_round(self.history, global_state, updates, round_idx, params=self.params, variant=self.variant)

    def state_dict(self) -> dict[str, Any]:
        return self._versioned(self.history.state_dict())

    def load_state_dict(self, state: Any) -> None:
        """Restore ``state_dict()``'s history (ValueError for another defense or version)."""
        self._check_state(state, [key for key, _, _ in self.history.schema()])
        self.history.load(state, self._state_tensor, owner=self.name)
