"""DeepSight (Rieger, Nguyen, Miettinen and Sadeghi, "DeepSight: Mitigating Backdoor Attacks in
Federated Learning Through Deep Model Inspection", NDSS 2022).

DeepSight inspects every local model of the round in three ways and combines two components:

* **Classification of models** (suspicious or not).  Per model, the *energy update* of each
  output neuron i is ``E_i = |Δb_i| + sum_j |ΔW_ij|`` (Δ = local minus global, W and b the
  weight and bias of the output layer); the *normalised energy updates* (NEUPs) are
  ``c_i = E_i**2 / sum_k E_k**2``.  The *threshold exceedings* (TE) of the model are the number of
  NEUPs strictly above ``max(0.01, 1/P) * max_k c_k`` (P = number of output neurons).  A backdoor
  trained on data of few labels concentrates the energy on few neurons and so has few
  exceedings.  The *classification boundary* is half the median TE of the round; a model is
  labelled suspicious when ``TE <= boundary``.
* **Clustering ensemble.**  Three kinds of features, each clustered with HDBSCAN:

  - *DDifs* (division differences): for random inputs x_1..x_N,
    ``DDif_i = 1/N sum_s p_local(y=i | x_s) / p_global(y=i | x_s)``; computed for several seeds
    (one clustering per seed, the same noise for every model of the round);
  - the NEUP vectors;
  - pairwise cosine distances of the output-layer bias updates (precomputed metric).

  Each clustering becomes a co-membership distance matrix (0 when two models share a cluster,
  1 otherwise; HDBSCAN's noise points are singleton clusters).  The DDif matrices are averaged
  over the seeds, then the DDif, NEUP and cosine matrices are averaged, and HDBSCAN on that
  merged (precomputed) distance matrix gives the final clusters (noise again singletons).
* **Filtering.**  A cluster whose share of suspicious models is ``>= tau`` (1/3) is rejected in
  full; the models of the other clusters are accepted.
* **Clipping.**  The clipping bound is the median L2 norm of *all* the round's updates
  (accepted or not); every accepted update is scaled by ``min(1, bound / ||Δ||)`` and the
  clipped updates are averaged onto the previous global model.

Written from our reading of the paper's Algorithms 1-2 (its full text could not be reached while
writing this: only the abstract); where we could, checked against three public implementations:
the FedGrad authors' ``defense.py`` (judydnguyen/FedGrad_Backdoor_Attack), BackFed's
``deepsight_server.py`` (thinh-dao/BackFed) and FLPoison's ``aggregators/deepsight.py``.  All three
share our NEUPs, the boundary ``median(TE) / 2`` with ``TE <= boundary`` -> suspicious, DDifs as
the mean probability ratio on noise per seed, the three feature families and the co-membership
merge (DDifs averaged over the seeds first), tau = 1/3 and the clip bound = median norm of *all*
the round's updates.  They differ among themselves in details we chose as follows:

* Threshold exceedings are strict (``>``), as the FedGrad authors and FLPoison (BackFed: ``>=``).
* HDBSCAN settings (``min_cluster_size=5``, ``min_samples=None`` -> equal to min_cluster_size,
  ``allow_single_cluster=False``, for every clustering): the library defaults, which the FedGrad
  authors and BackFed use everywhere (FLPoison: ``min_samples=3``, and a single cluster allowed in
  the final clustering).  With K = 10 clients this means up to 4 colluding models never form a
  cluster of their own: they are noise points and are judged one by one (next point).  All
  three are parameters (``min_cluster_size``, ``min_samples``, ``allow_single_cluster``).  The
  sizes are capped at the round's size (``min(min_cluster_size, K)``, ``min(min_samples, K - 1)``).
* A noise point of the final clustering is its own cluster, so it is accepted exactly when it is
  not suspicious itself (the FedGrad authors and BackFed; FLPoison rejects every noise point).
* Noise inputs U[0, 1) (``noise="uniform"``), as all three (BackFed and FLPoison ``torch.rand``;
  the FedGrad authors torchvision's ``FakeData`` turned to [0, 1] by ``ToTensor``), although
  the project's inputs are normalised to mean 0 / std 1; ``noise="normal"`` gives N(0, 1).
  Noise for seed s is drawn from a ``torch.Generator`` seeded from ``(seed, s)``, fixed across
  rounds, the same for every model of the round.
* 3 seeds, as all three; ``num_noise_samples=2000`` inputs per seed, as the FedGrad authors'
  runs (``total_samples = 2000``), whose DeepSight numbers the paper reports; BackFed and FLPoison
  use 20,000 (pass ``num_noise_samples=20_000``).  Measured on four digits rounds (7 benign, 3
  attackers relabelling 7 -> 1) x 3 seeds: the flagged sets at 2,000 and 500 inputs equal those at
  20,000 in 12 of 12 cases (with these HDBSCAN settings and with min_cluster_size 2); the DDifs
  move by at most 1.2 % (2,000) and 3.6 % (500) of their largest value, and the per-seed DDif
  clusterings at min_cluster_size 2 changed in 2 (2,000) and 3 (500) of 12 cases.
* The average of the accepted, clipped updates is weighted by sample count (FedAvg) by default
  (``sample_weighted=True``), as the FedGrad authors; the paper and BackFed average them
  uniformly (``sample_weighted=False``).
* Clipping norms are taken over the model's parameters only (``named_parameters``); float
  buffers (BatchNorm running statistics) are averaged unclipped.
* When every cluster is rejected the previous global model is kept.
* Log probability ratios in the DDifs are clamped to [-80, 80] so that a model whose softmax
  underflows cannot produce inf.
* The bias cosine distance of two all-zero bias updates is 0, of a zero and a non-zero one 1.
* Input shape of the noise (``input_shape=None``): inferred from the first Conv2d / Linear of the
  model: for a Linear with ``F`` inputs, ``(1, s, s)`` if ``F = s*s``, ``(3, s, s)`` if
  ``F = 3*s*s``, else ``(F,)``; for a Conv2d with ``C`` input channels, ``(C, s, s)`` for the first
  ``s`` of (28, 32) for C = 1, (32, 28) otherwise, then 8, 16, 64, 96, 128, 224, for which a
  forward pass runs.  Pass ``input_shape`` to be sure.

Assumptions (ValueError otherwise): a ``model_factory`` is given (the simulation supplies it),
and builds the run's architecture (DeepSight keeps no state across rounds: checkpoints hold its
empty ``state_dict()``, never the factory); the model ends in an
``nn.Linear`` with a bias; ``num_classes``, when given, equals its output size.  DeepSight needs
at least 2 clients per round (``validate``); a round reduced to one finite update (the others
held NaN/inf) is still aggregated: the single model forms its own cluster.

Cost: the DDifs need ``num_seeds * (K + 1)`` forward passes over ``num_noise_samples`` inputs
(linear in it), batched by ``noise_batch_size`` (default 500: on a 2-core CPU with 1 torch thread,
one aggregation ran 1.88x faster with the MNIST CNN and 1.44x with VGG-9-slim than with one batch
of 2,000, whose activations do not stay in cache; the flagged sets were the same,
``benchmarks/deepsight_noise_batch.py``).  On the project's 2-core CPU (1 torch thread, machine
shared), with batches of 2,000: digits MLP, K = 10: 1.6 s per round at 2,000 inputs, 6.8 s at 20,000; LeNet
(28 x 28): 9.3 s per 2,000 forward passes, so about 5 min per round at 2,000 and 50 min at 20,000
with K = 10.  Lower ``num_noise_samples`` further for VGG-9 / ResNet-18 on a CPU and say so.  The
defense keeps no state between rounds.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import HDBSCAN
from torch import Tensor, nn

from fedgrad_core.defenses.base import (
    Aggregate,
    Defense,
    Layout,
    State,
    register,
    sample_weights,
    stack_states,
    weighted_average,
)
from fedgrad_core.models import ultimate_layer

_LOG_RATIO_CLAMP = 80.0
_SQUARE_SIDES_CONV_1 = (28, 32)
_SQUARE_SIDES_CONV_3 = (32, 28)
_SQUARE_SIDES_MORE = (8, 16, 64, 96, 128, 224)


# --------------------------------------------------------------------------- model inspection


def normalized_energy_updates(weight_delta: Tensor, bias_delta: Tensor) -> Tensor:
    """NEUPs of K models: ``weight_delta`` K x P x F, ``bias_delta`` K x P -> K x P (float64).

    Energy of neuron i: ``|Δb_i| + sum_j |ΔW_ij|``; NEUP ``c_i = E_i**2 / sum_k E_k**2``.  A model
    whose output layer did not change gets all-zero NEUPs.
    """
    energy = weight_delta.to(torch.float64).abs().flatten(2).sum(2) + bias_delta.to(torch.float64).abs()
    squared = energy.square()
    total = squared.sum(dim=1, keepdim=True)
    return torch.where(total > 0, squared / torch.where(total > 0, total, 1.0), 0.0)


def threshold_exceedings(neups: Tensor) -> Tensor:
    """Per model, the number of NEUPs strictly above ``max(0.01, 1/P) * max NEUP`` (K x P -> K)."""
    if neups.dim() == 1:
        neups = neups[None]
    factor = max(0.01, 1.0 / neups.shape[1])
    threshold = factor * neups.max(dim=1, keepdim=True).values
    return (neups > threshold).sum(dim=1)


def suspicious_labels(exceedings: Sequence[int] | Tensor) -> tuple[np.ndarray, float]:
    """(suspicious mask, boundary): suspicious when TE <= median(TE) / 2."""
    te = np.asarray(exceedings, dtype=np.float64)
    boundary = float(np.median(te)) / 2.0
    return te <= boundary, boundary


def bias_cosine_distances(bias_delta: Tensor) -> np.ndarray:
    """K x K cosine distances (1 - cosine similarity) of the output-layer bias updates."""
    b = bias_delta.to(torch.float64)
    norms = b.norm(dim=1)
    zero = norms == 0
    unit = b / torch.where(zero, 1.0, norms)[:, None]
    dist = (1.0 - unit @ unit.T).clamp(0.0, 2.0)
    both_zero = zero[:, None] & zero[None, :]
    one_zero = zero[:, None] ^ zero[None, :]
    dist = torch.where(both_zero, 0.0, torch.where(one_zero, 1.0, dist))
    dist.fill_diagonal_(0.0)
    return dist.numpy()


def hdbscan_labels(
    data: np.ndarray,
    *,
    precomputed: bool,
    min_cluster_size: int = 5,
    min_samples: Optional[int] = None,
    allow_single_cluster: bool = False,
) -> np.ndarray:
    """HDBSCAN cluster labels (-1 = noise) of K feature rows or a K x K distance matrix.

    ``min_samples=None`` means ``min_cluster_size`` (the library default); both are capped at the
    number of rows (``K`` and ``K - 1``) so that small rounds still run.
    """
    data = np.asarray(data, dtype=np.float64)
    n = data.shape[0]
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    if precomputed:
        data = np.maximum((data + data.T) / 2.0, 0.0)
        np.fill_diagonal(data, 0.0)
    clusterer = HDBSCAN(
        min_cluster_size=min(min_cluster_size, n),
        min_samples=min(min_cluster_size if min_samples is None else min_samples, n - 1),
        metric="precomputed" if precomputed else "euclidean",
        allow_single_cluster=allow_single_cluster,
        copy=True,
    )
    return clusterer.fit_predict(data).astype(np.int64)


def co_membership_distances(labels: np.ndarray) -> np.ndarray:
    """0 where two models share a cluster, 1 otherwise; noise points (-1) are singletons."""
    labels = np.asarray(labels)
    same = (labels[:, None] == labels[None, :]) & (labels[:, None] != -1)
    dist = 1.0 - same.astype(np.float64)
    np.fill_diagonal(dist, 0.0)
    return dist


def singleton_noise(labels: np.ndarray) -> np.ndarray:
    """Cluster labels with every noise point (-1) turned into its own cluster."""
    out = np.asarray(labels, dtype=np.int64).copy()
    nxt = int(out.max(initial=-1)) + 1
    for i in np.flatnonzero(out == -1):
        out[i] = nxt
        nxt += 1
    return out


def cluster_vote(clusters: np.ndarray, suspicious: np.ndarray, tau: float) -> np.ndarray:
    """Accepted mask: a cluster is rejected in full when its suspicious share is >= tau."""
    clusters = np.asarray(clusters)
    suspicious = np.asarray(suspicious, dtype=bool)
    accepted = np.zeros(len(clusters), dtype=bool)
    for c in np.unique(clusters):
        members = clusters == c
        accepted[members] = suspicious[members].mean() < tau
    return accepted


# --------------------------------------------------------------------------- input shape


def infer_input_shape(model: nn.Module) -> tuple[int, ...]:
    """The input shape (without batch) of ``model``; see the module docstring for the rule."""
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    if first is None:
        raise ValueError("DeepSight cannot infer the input shape (no Conv2d/Linear); pass input_shape")
    if isinstance(first, nn.Linear):
        f = first.in_features
        s = int(round(f**0.5))
        if s * s == f:
            candidates = [(1, s, s)]
        else:
            s3 = int(round((f / 3) ** 0.5))
            candidates = [(3, s3, s3)] if 3 * s3 * s3 == f else []
        candidates.append((f,))
    else:
        c = first.in_channels
        sides = (_SQUARE_SIDES_CONV_1 if c == 1 else _SQUARE_SIDES_CONV_3) + _SQUARE_SIDES_MORE
        candidates = [(c, s, s) for s in sides]
    was_training = model.training
    model.eval()
    try:
        for shape in candidates:
            try:
                with torch.inference_mode():
                    model(torch.zeros((2, *shape)))
                return shape
            except (RuntimeError, ValueError):
                continue
    finally:
        model.train(was_training)
    raise ValueError("DeepSight could not infer the model's input shape; pass input_shape")


# --------------------------------------------------------------------------- the defense


@register("deepsight")
class DeepSight(Defense):
    """DeepSight's filter and clipping (see the module docstring).

    Diagnostics (lists aligned with ``clients``, the round's client ids in ascending order):
    ``threshold_exceedings``, ``classification_boundary``, ``suspicious`` (0/1), the first-stage
    HDBSCAN labels ``clusters_ddif`` (one list per seed), ``clusters_neup``, ``clusters_cosine``,
    the final ``clusters`` (-1 = noise, a singleton cluster), ``accepted`` (ids), ``clip_bound``,
    ``update_norms`` and the noise ``input_shape``.
    """

    name = "deepsight"

    def __init__(
        self,
        *,
        model_factory: Optional[Callable[[], nn.Module]] = None,
        num_classes: Optional[int] = None,
        seed: int = 0,
        tau: float = 1.0 / 3.0,
        num_seeds: int = 3,
        num_noise_samples: int = 2_000,
        noise_batch_size: int = 500,
        noise: str = "uniform",
        input_shape: Optional[Sequence[int]] = None,
        min_cluster_size: int = 5,
        min_samples: Optional[int] = None,
        allow_single_cluster: bool = False,
        sample_weighted: bool = True,
    ):
        if model_factory is None:
            raise ValueError(
                "DeepSight needs model_factory: the DDifs run every local model on noise inputs, "
                "so the defense must be able to build the run's architecture"
            )
        if not callable(model_factory):
            raise ValueError("model_factory must be a zero-argument callable returning an nn.Module")
        if not 0.0 < tau <= 1.0:
            raise ValueError(f"tau must lie in (0, 1], got {tau}")
        if num_seeds < 1 or num_noise_samples < 1 or noise_batch_size < 1:
            raise ValueError("num_seeds, num_noise_samples and noise_batch_size must be >= 1")
        if noise not in ("normal", "uniform"):
            raise ValueError(f"noise must be 'normal' or 'uniform', got {noise!r}")
        if min_cluster_size < 2 or (min_samples is not None and min_samples < 1):
            raise ValueError(
                f"HDBSCAN needs min_cluster_size >= 2 and min_samples >= 1 (or None), got "
                f"{min_cluster_size} and {min_samples}"
            )
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.model_factory = model_factory
        self.num_classes = None if num_classes is None else int(num_classes)
        self.seed = int(seed)
        self.tau = float(tau)
        self.num_seeds = int(num_seeds)
        self.num_noise_samples = int(num_noise_samples)
        self.noise_batch_size = int(noise_batch_size)
        self.noise = noise
        self.input_shape = None if input_shape is None else tuple(int(v) for v in input_shape)
        self.min_cluster_size = int(min_cluster_size)
        self.min_samples = None if min_samples is None else int(min_samples)
        self.allow_single_cluster = bool(allow_single_cluster)
        self.sample_weighted = bool(sample_weighted)

    def validate(self, clients_per_round: int) -> None:
        if clients_per_round < 2:
            raise ValueError(
                f"DeepSight clusters the round's models and compares their threshold exceedings; "
                f"it needs at least 2 clients per round, got {clients_per_round}"
            )

    # ----------------------------------------------------------------------- helpers

    def _build_model(self, state: State) -> nn.Module:
        model = self.model_factory()
        if not isinstance(model, nn.Module):
            raise ValueError("model_factory must return an nn.Module")
        try:
            model.load_state_dict(dict(state))
        except RuntimeError as err:
            raise ValueError(
                f"model_factory builds a model whose state does not match the global model: {err}"
            ) from err
        return model.eval()

    def _noise_generator(self, seed_index: int) -> torch.Generator:
        entropy = np.random.SeedSequence([self.seed, seed_index]).generate_state(2, dtype=np.uint32)
        return torch.Generator().manual_seed(int(entropy[0]) << 31 ^ int(entropy[1]))

    def _noise_batch(self, generator: torch.Generator, count: int, shape: tuple[int, ...]) -> Tensor:
        if self.noise == "normal":
            return torch.randn((count, *shape), generator=generator)
        return torch.rand((count, *shape), generator=generator)

    @torch.inference_mode()
    def division_differences(
        self, global_model: nn.Module, states: Sequence[State], shape: tuple[int, ...]
    ) -> list[np.ndarray]:
        """One K x P DDif matrix per noise seed (the same noise for every model of the round).

        ``DDif_i = 1/N sum_s p_local(y=i | x_s) / p_global(y=i | x_s)`` over N noise inputs.
        """
        locals_ = [self._build_model(state) for state in states]
        per_seed = []
        for s in range(self.num_seeds):
            gen = self._noise_generator(s)
            sums = None
            for start in range(0, self.num_noise_samples, self.noise_batch_size):
                x = self._noise_batch(gen, min(self.noise_batch_size, self.num_noise_samples - start), shape)
                g = F.log_softmax(global_model(x).to(torch.float64), dim=1)
                logp = torch.stack([F.log_softmax(m(x).to(torch.float64), dim=1) for m in locals_])  # K x n x P
                ratio = (logp - g[None]).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP).exp().sum(dim=1)
                sums = ratio if sums is None else sums + ratio
            per_seed.append((sums / float(self.num_noise_samples)).numpy())
        return per_seed

    def _cluster(self, features: np.ndarray, precomputed: bool) -> np.ndarray:
        return hdbscan_labels(
            features,
            precomputed=precomputed,
            min_cluster_size=self.min_cluster_size,
            min_samples=self.min_samples,
            allow_single_cluster=self.allow_single_cluster,
        )

    # ----------------------------------------------------------------------- the rule

    def aggregate_finite(self, global_state, updates, round_idx) -> Aggregate:
        updates = sorted(updates, key=lambda u: u.client_id)  # order-free, ties broken by id
        ids = [u.client_id for u in updates]
        model = self._build_model(global_state)
        w_key, b_key = ultimate_layer(model)
        if b_key not in global_state:
            raise ValueError(f"DeepSight needs a bias in the output layer; {b_key!r} is missing")
        num_out = global_state[w_key].shape[0]
        if self.num_classes is not None and num_out != self.num_classes:
            raise ValueError(f"num_classes={self.num_classes} but the model's output layer has {num_out} neurons")
        if self.input_shape is None:
            self.input_shape = infer_input_shape(model)
        shape = self.input_shape

        layout = Layout.of(global_state)
        g = layout.flatten(global_state)
        deltas = stack_states(updates, layout) - g[None, :]  # K x d
        w_sl, b_sl = layout.slice_of(w_key), layout.slice_of(b_key)
        w_delta = deltas[:, w_sl].reshape(len(updates), num_out, -1)
        b_delta = deltas[:, b_sl]

        # -- classification: NEUPs, threshold exceedings, suspicious labels
        neups = normalized_energy_updates(w_delta, b_delta)
        te = threshold_exceedings(neups)
        suspicious, boundary = suspicious_labels(te.numpy())

        # -- clustering ensemble
        ddifs = self.division_differences(model, [u.state for u in updates], shape)
        ddif_labels = [self._cluster(d, precomputed=False) for d in ddifs]
        neup_labels = self._cluster(neups.numpy(), precomputed=False)
        cos_labels = self._cluster(bias_cosine_distances(b_delta), precomputed=True)
        ddif_dist = np.mean([co_membership_distances(lab) for lab in ddif_labels], axis=0)
        merged = (ddif_dist + co_membership_distances(neup_labels) + co_membership_distances(cos_labels)) / 3.0
        final_labels = self._cluster(merged, precomputed=True)
        clusters = singleton_noise(final_labels)

        # -- filtering
        accepted = cluster_vote(clusters, suspicious, self.tau)

        # -- clipping to the median norm of all updates, then averaging the accepted ones
        param_names = {name for name, _ in model.named_parameters()}
        mask = torch.zeros(layout.size, dtype=torch.bool)
        for name in layout.names:
            if name in param_names:
                mask[layout.slice_of(name)] = True
        norms = deltas[:, mask].to(torch.float64).norm(dim=1)
        bound = float(np.median(norms.numpy()))
        scales = torch.where(norms > bound, bound / torch.where(norms > 0, norms, 1.0), 1.0)

        keep = torch.from_numpy(np.flatnonzero(accepted))
        diagnostics = {
            "clients": ids,
            "threshold_exceedings": [int(v) for v in te.tolist()],
            "classification_boundary": boundary,
            "suspicious": [int(v) for v in suspicious],
            "clusters_ddif": [lab.tolist() for lab in ddif_labels],
            "clusters_neup": neup_labels.tolist(),
            "clusters_cosine": cos_labels.tolist(),
            "clusters": final_labels.tolist(),
            "accepted": [ids[i] for i in keep.tolist()],
            "clip_bound": bound,
            "update_norms": [float(v) for v in norms.tolist()],
            "input_shape": list(shape),
        }
        flagged = frozenset(ids[i] for i in np.flatnonzero(~accepted))
        if len(keep) == 0:
            diagnostics["kept_previous_model"] = "every cluster was rejected"
            return Aggregate(layout.unflatten(g, global_state), flagged, diagnostics)

        row_scale = torch.where(mask[None, :], scales[keep].to(deltas.dtype)[:, None], 1.0)
        clipped = deltas[keep] * row_scale
        if self.sample_weighted:
            weights = sample_weights([updates[i] for i in keep.tolist()])
        else:
            weights = torch.ones(len(keep), dtype=torch.float64)
        new = g + weighted_average(clipped, weights)
        return Aggregate(layout.unflatten(new, global_state), flagged, diagnostics)
