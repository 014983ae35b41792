"""FLAME (Nguyen et al., "FLAME: Taming Backdoors in Federated Learning", USENIX Security 2022).

1. Filtering: HDBSCAN (``min_cluster_size = K // 2 + 1``, ``min_samples = 1``, single cluster
   allowed) on the pairwise cosine distances ``1 - cos(Delta_i, Delta_j)`` of the clients'
   updates ``Delta_i = w_i - g``; the clients of the largest non-noise cluster are admitted.
2. Clipping: ``S = median_i ||Delta_i||`` over ALL clients of the round; every admitted update is
   scaled by ``min(1, S / ||Delta_i||)``.
3. Aggregation: ``g' = g + mean of the clipped admitted updates``: a plain mean, not
   sample-weighted (FLAME's Algorithm 1 divides the sum of the L admitted clipped models by L; the
   FedGrad authors' code takes ``np.average`` without weights).  Unequal sample counts therefore
   do not move the aggregate (tested with n = 1..6).
4. Noise: Gaussian with ``sigma = noise_factor * S`` (``noise_factor`` = FLAME's lambda, 0.001
   for image classification) on every float entry, drawn from a ``torch.Generator`` seeded from
   ``(seed, round_idx)``: deterministic and independent of the order of the clients.

Assumptions (``ValueError`` when they break): the benign clients are a majority whose updates
point in similar directions (the admitted cluster is the majority); ``noise_factor >= 0``.
``flagged`` = the clients outside the admitted cluster (HDBSCAN's noise points included).
If HDBSCAN labels every client noise (or K = 1), every client is admitted: clipping and noise
still bound each one's influence (recorded as ``"fallback": "no cluster"`` in the diagnostics).
A client whose update is exactly zero has cosine distance 1 to every other client.

Deviations from the FedGrad authors' runs (one line each):

- Cosine distances of updates w_i - g (FLAME's text: the directions of the model updates); the
  authors used full models, whose shared global part pushes every cosine distance towards 0 and
  can regroup the clients (a test shows a round where clustering the models admits the attackers).
- The admitted cluster is the largest non-noise cluster (the authors' code picks the label wrongly).
- The noise comes from a generator seeded by (seed, round_idx), not from the global numpy RNG.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
from sklearn.cluster import HDBSCAN
from torch import Tensor

from fedgrad_core.defenses.base import Aggregate, ClientUpdate, Defense, State, register
from fedgrad_core.defenses.base import cosine_similarities, gram64, sorted_updates, update_matrix


def round_generator(seed: int, round_idx: int) -> torch.Generator:
    """A CPU generator whose stream depends only on ``(seed, round_idx)``."""
    mixed = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(round_idx) & 0xFFFFFFFF])
    gen = torch.Generator()
    gen.manual_seed(int(mixed.generate_state(1, dtype=np.uint64)[0] & 0x7FFF_FFFF_FFFF_FFFF))
    return gen


def majority_cluster(cosine_distance: Tensor, client_ids: Sequence[int]) -> list[int] | None:
    """Positions of FLAME's admitted cluster, or ``None`` when HDBSCAN finds no cluster.

    Largest non-noise cluster; a tie (impossible with min_cluster_size > K/2, kept for safety)
    goes to the cluster holding the lowest client id.
    """
    k = cosine_distance.shape[0]
    if k < 2:
        return None
    dist = cosine_distance.to(torch.float64).numpy().copy()
    np.fill_diagonal(dist, 0.0)
    model = HDBSCAN(
        min_cluster_size=max(2, k // 2 + 1),
        min_samples=1,
        metric="precomputed",
        allow_single_cluster=True,
        copy=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        labels = model.fit(dist).labels_
    clusters = sorted(set(int(x) for x in labels) - {-1})
    if not clusters:
        return None

    def key(label: int) -> tuple[int, int]:
        members = [client_ids[i] for i in range(k) if labels[i] == label]
        return (-len(members), min(members))

    best = min(clusters, key=key)
    return [i for i in range(k) if labels[i] == best]


def flame(
    global_state: State,
    updates: Sequence[ClientUpdate],
    *,
    noise_factor: float = 0.001,
    generator: torch.Generator | None = None,
) -> Aggregate:
    """FLAME's filter, clip, average and noise over one round (see the module docstring).

    ``generator`` draws the noise; it is required when ``noise_factor > 0``.
    """
    if not noise_factor >= 0:
        raise ValueError(f"noise_factor must be >= 0, got {noise_factor}")
    if noise_factor > 0 and generator is None:
        raise ValueError("FLAME's noise needs a torch.Generator (seeded from seed and round)")
    updates = sorted_updates(updates)
    ids = [u.client_id for u in updates]
    layout, g, deltas = update_matrix(global_state, updates)
    gram = gram64(deltas)
    cos_dist = (1.0 - cosine_similarities(gram)).clamp_(0.0, 2.0)
    admitted = majority_cluster(cos_dist, ids)
    diagnostics: dict = {}
    if admitted is None:
        admitted = list(range(len(updates)))
        diagnostics["fallback"] = "no cluster"

    norms = gram.diagonal().clamp_min(0.0).sqrt()
    median_norm = float(torch.quantile(norms, 0.5))  # mean of the two middle values for even K
    scale = torch.ones(len(updates), dtype=torch.float64)
    positive = norms > 0
    scale[positive] = (median_norm / norms[positive]).clamp(max=1.0)
    coeffs = torch.zeros(len(updates), dtype=torch.float64)
    coeffs[admitted] = scale[admitted] / len(admitted)
    new = g + coeffs.to(torch.float32) @ deltas
    sigma = noise_factor * median_norm
    if sigma > 0:
        assert generator is not None
        new += sigma * torch.randn(new.shape, generator=generator, dtype=torch.float32)
    admitted_ids = {ids[i] for i in admitted}
    diagnostics.update(
        {
            "admitted": sorted(admitted_ids),
            "median_norm": median_norm,
            "noise_sigma": sigma,
            "clip_scale": {str(i): float(s) for i, s in zip(ids, scale.tolist())},
        }
    )
    return Aggregate(layout.unflatten(new, global_state), frozenset(set(ids) - admitted_ids), diagnostics)


@register("flame")
class Flame(Defense):
    name = "flame"

    def __init__(self, *, noise_factor: float = 0.001, seed: int = 0) -> None:
        if not noise_factor >= 0:
            raise ValueError(f"noise_factor must be >= 0, got {noise_factor}")
        self.noise_factor = float(noise_factor)
        self.seed = int(seed)

    def aggregate_finite(self, global_state, updates, round_idx) -> Aggregate:
        return flame(
            global_state,
            updates,
            noise_factor=self.noise_factor,
            generator=round_generator(self.seed, round_idx),
        )
