"""The paper's two results as code: Proposition 1 (sign pattern) and Theorem 1 (expected rounds).

Proposition 1 (paper section 3).  Let ``R = R(x)`` be the penultimate representation of a sample
of class ``j``, ``L = W R + b`` the logits, ``p = softmax(L)`` and the loss the cross-entropy
``-log p_j`` (natural log).  Then

    dL/dw_rc = (p_r - y_r) R_c        dL/db_r = p_r - y_r,

so one plain SGD step (learning rate ``lr``, no momentum, no weight decay) changes the ultimate
layer by

    dw_jc = +lr (1 - p_j) R_c         db_j = +lr (1 - p_j) > 0
    dw_rc = -lr p_r R_c   (r != j)    db_r = -lr p_r < 0        (r != j).

Row ``j`` moves with ``sign(R_c)``, every other row with ``-sign(R_c)``; entries with ``R_c = 0``
do not move.  With a ReLU penultimate layer ``R >= 0``, so row ``j`` grows and every other row
shrinks wherever ``R_c > 0``.  The paper writes the loss with ``log_10``, which multiplies every
gradient by ``1 / ln 10``: a positive factor that changes no sign; it is an artefact of the log
base.  (Its equation (9) also drops the ``r != j`` bias term ``p_r``: the other biases do move,
downwards, which is what the proposition's statement needs.)

Theorem 1 (paper section 6.2).  With ``n`` clients and ``K`` drawn uniformly per round, the
paper states that the expected number of rounds ``delta`` "needed to estimate the similarity of
all client pairs" satisfies

    delta <= 1 + sum_{i=K}^{n-1} C(n, K) / (C(n, K) - C(i, K)).

Read as written, the sum's terms are the waits for the number of *clients seen so far* to grow
from ``i`` (a round brings nobody new with probability ``C(i, K) / C(n, K)``): it bounds the
rounds until every client has joined at least once, not until every pair has met.  Just before
the theorem the paper invokes the transitivity of cosine similarity (an unmet pair estimated
through common partners), which needs the graph of clients who have met to be *connected*.  Both
readings match Figure 10's numbers: for ``n = 100`` the exact expectation of "every client
joined" (``expected_rounds_all_clients``) is 23.9 rounds at ``K = 20`` and 49.9 at ``K = 10``,
and the graph is connected after about 24 and 50 rounds (``simulate_rounds_until_connected``;
paper: "roughly 25" and "about 50"), both under the bound's 90.3 and 116.8.  Every *pair*
meeting, the event the theorem names, takes about 234 and 987 rounds
(``simulate_rounds_until_covered(..., pairs=True)``), above the bound.  Each function is named
for what it computes.

For the book's notebooks: ``one_class_change`` checks Proposition 1 over many SGD steps on one
class (Figure 2's intuition), and ``capture_round`` returns the ultimate layers the server received
in one real round of a run, for Observation 2 (Figures 3 and 4).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional, Sequence

import numpy as np

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedgrad_core.defenses.base import Defense, find_ultimate_layer


@dataclass(frozen=True)
class SignPattern:
    """What one SGD step on one sample of class ``label`` did to the ultimate layer.

    ``delta_w`` (classes x features) and ``delta_b`` (classes) are the changes, ``representation``
    is ``R`` (features) and ``probabilities`` is ``p`` before the step; ``predicted_w`` and
    ``predicted_b`` are the closed forms ``lr (y - p) R^T`` and ``lr (y - p)``.  All float64.
    """

    label: int
    lr: float
    delta_w: Tensor
    delta_b: Tensor
    representation: Tensor
    probabilities: Tensor
    predicted_w: Tensor
    predicted_b: Tensor

    @property
    def target_bias_increases(self) -> bool:
        return bool(self.delta_b[self.label] > 0)

    @property
    def other_biases_decrease(self) -> bool:
        others = torch.ones_like(self.delta_b, dtype=torch.bool)
        others[self.label] = False
        return bool((self.delta_b[others] < 0).all())

    @property
    def target_row_follows_sign_of_r(self) -> bool:
        """Every entry of row ``label`` has the sign of ``R_c`` (0 where ``R_c = 0``)."""
        return bool(torch.equal(torch.sign(self.delta_w[self.label]), torch.sign(self.representation)))

    @property
    def other_rows_oppose_sign_of_r(self) -> bool:
        """Every entry of the other rows has the sign of ``-R_c`` (0 where ``R_c = 0``)."""
        others = [r for r in range(self.delta_w.shape[0]) if r != self.label]
        expected = -torch.sign(self.representation).expand(len(others), -1)
        return bool(torch.equal(torch.sign(self.delta_w[others]), expected))

    @property
    def zero_representation_unchanged(self) -> bool:
        """Columns with ``R_c = 0`` do not change at all."""
        return bool((self.delta_w[:, self.representation == 0] == 0).all())

    @property
    def holds(self) -> bool:
        """All parts of Proposition 1 hold for this sample."""
        return (
            self.target_bias_increases
            and self.other_biases_decrease
            and self.target_row_follows_sign_of_r
            and self.other_rows_oppose_sign_of_r
            and self.zero_representation_unchanged
        )

    @property
    def max_error(self) -> float:
        """Largest deviation of the measured change from the closed form."""
        return float(
            max(
                (self.delta_w - self.predicted_w).abs().max(),
                (self.delta_b - self.predicted_b).abs().max(),
            )
        )


def _linear_by_keys(model: nn.Module, keys: Optional[Sequence[str]]) -> nn.Linear:
    from fedgrad_core.models import ultimate_layer

    weight_key = (ultimate_layer(model) if keys is None else keys)[0]
    if not weight_key.endswith(".weight"):
        raise ValueError(f"ultimate_layer's weight key must end in '.weight', got {weight_key!r}")
    try:
        module = model.get_submodule(weight_key[: -len(".weight")])
    except AttributeError as exc:
        raise ValueError(f"the model has no layer {weight_key!r}: {exc}") from None
    if not isinstance(module, nn.Linear):
        raise ValueError(f"{weight_key!r} is not the weight of an nn.Linear")
    return module


def proposition1_sign_pattern(
    model: nn.Module,
    x: Tensor,
    label: int,
    *,
    lr: float = 0.1,
    ultimate_layer: Optional[Sequence[str]] = None,
) -> SignPattern:
    """Train a float64 copy of ``model`` for one plain SGD step on ``(x, label)``; report the change
    of its ultimate layer (``models.ultimate_layer``, or the one named by ``ultimate_layer``, a pair
    of state-dict keys (weight, bias)).

    The copy is put in eval mode (no dropout noise, batch norm uses its running statistics) and in
    float64, so that changes as small as ``lr p_r R_c`` stay visible.  ``model`` is not modified.
    """
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    work = copy.deepcopy(model).to(torch.float64).eval()
    layer = _linear_by_keys(work, ultimate_layer)
    if layer.bias is None:
        raise ValueError("the ultimate layer has no bias")
    num_classes = layer.out_features
    if not 0 <= int(label) < num_classes:
        raise ValueError(f"label {label} is not a class of a {num_classes}-class model")
    x = x.to(torch.float64)
    if x.dim() == 0 or x.shape[0] != 1:
        x = x.unsqueeze(0)

    captured: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach()))
    try:
        logits = work(x)
    finally:
        handle.remove()
    if logits.shape != (1, num_classes):
        raise ValueError(f"expected logits of shape (1, {num_classes}), got {tuple(logits.shape)}")
    rep = captured[0].reshape(-1)
    probs = torch.softmax(logits.detach(), dim=1).reshape(-1)

    before_w, before_b = layer.weight.detach().clone(), layer.bias.detach().clone()
    optimiser = torch.optim.SGD(work.parameters(), lr=lr, momentum=0.0, weight_decay=0.0)
    optimiser.zero_grad(set_to_none=True)
    F.cross_entropy(logits, torch.tensor([int(label)])).backward()
    optimiser.step()

    y = torch.zeros(num_classes, dtype=torch.float64)
    y[int(label)] = 1.0
    return SignPattern(
        label=int(label),
        lr=float(lr),
        delta_w=layer.weight.detach() - before_w,
        delta_b=layer.bias.detach() - before_b,
        representation=rep,
        probabilities=probs,
        predicted_w=lr * torch.outer(y - probs, rep),
        predicted_b=lr * (y - probs),
    )


def _check_clients(n: int, k: int, *, min_k: int, why: str = "") -> None:
    """``n`` clients, ``k`` per round: integers with ``min_k <= k <= n``, else ValueError."""
    for name, value in (("n", n), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if not min_k <= k <= n:
        raise ValueError(f"need {min_k} <= k <= n{why}, got n={n}, k={k}")


def expected_rounds_bound(n: int, k: int) -> float:
    """Theorem 1's bound, ``1 + sum_{i=K}^{n-1} C(n,K) / (C(n,K) - C(i,K))`` for ``n`` clients and
    ``K = k`` drawn per round.  The paper states it for the rounds until every pair has met; it
    bounds the expected rounds until every client has joined once (``expected_rounds_all_clients``),
    not those until every pair has met (see the module docstring).

    Exact rational arithmetic, then one rounding to float.
    """
    _check_clients(n, k, min_k=2, why=" (a round must hold a pair)")
    total = math.comb(n, k)
    bound = Fraction(1)
    for i in range(k, n):
        bound += Fraction(total, total - math.comb(i, k))
    return float(bound)


def expected_rounds_all_clients(n: int, k: int) -> float:
    """Exact expected rounds until every one of ``n`` clients has joined at least once, ``k``
    drawn uniformly without replacement per round (inclusion-exclusion over the unseen clients):
    ``sum_{j=1}^{n} (-1)^(j+1) C(n, j) / (1 - C(n-j, k) / C(n, k))``.  Exact rationals."""
    _check_clients(n, k, min_k=1)
    total = math.comb(n, k)
    expectation = Fraction(0)
    for j in range(1, n + 1):
        miss = Fraction(math.comb(n - j, k), total)
        expectation += (-1) ** (j + 1) * math.comb(n, j) / (1 - miss)
    return float(expectation)


def _check_draws(n: int, k: int, repetitions: int) -> None:
    """ValueError unless ``k`` of ``n`` clients can be drawn, ``repetitions`` times."""
    if not (isinstance(n, int) and isinstance(k, int) and 2 <= k <= n):
        raise ValueError(f"need integers 2 <= k <= n, got n={n!r}, k={k!r}")
    if not (isinstance(repetitions, int) and repetitions >= 1):
        raise ValueError(f"repetitions must be a positive integer, got {repetitions!r}")


def simulate_rounds_until_covered(n: int, k: int, *, pairs: bool, repetitions: int = 100, seed: int = 0) -> float:
    """Monte Carlo mean of the rounds until every client (``pairs=False``) or every pair of
    clients (``pairs=True``) has been drawn together at least once."""
    import numpy as np

    _check_draws(n, k, repetitions)
    rng = np.random.default_rng(seed)
    rounds = []
    for _ in range(repetitions):
        seen = np.eye(n, dtype=bool) if pairs else np.zeros(n, dtype=bool)
        t = 0
        while not seen.all():
            chosen = rng.choice(n, size=k, replace=False)
            t += 1
            if pairs:
                seen[np.ix_(chosen, chosen)] = True
            else:
                seen[chosen] = True
        rounds.append(t)
    return float(np.mean(rounds))


def simulate_rounds_until_connected(n: int, k: int, *, repetitions: int = 100, seed: int = 0) -> float:
    """Monte Carlo mean of the rounds until the graph of clients who have met is connected: clients
    are the nodes, and two are joined once they were drawn in the same round (``k`` of ``n`` drawn
    uniformly without replacement per round, independently).  Connected means that every pair is
    linked by a chain of pairs that met, which is what estimating an unmet pair's similarity
    through common partners (the paper's transitivity argument before Theorem 1) needs.  A client
    never drawn is a node of its own, so this takes at least as long as every client joining once,
    and at most as long as every pair meeting."""
    import numpy as np

    _check_draws(n, k, repetitions)
    rng = np.random.default_rng(seed)
    rounds = []
    for _ in range(repetitions):
        component = np.arange(n)  # a label per client; clients that met (directly or not) share one
        t = 0
        while True:
            chosen = rng.choice(n, size=k, replace=False)
            t += 1
            merged = np.isin(component, component[chosen])
            component[merged] = component[chosen].min()
            if (component == component[0]).all():
                break
        rounds.append(t)
    return float(np.mean(rounds))


# --------------------------------------------------------------------------- Proposition 1, many steps


@dataclass(frozen=True)
class OneClassChange:
    """The change of the ultimate layer after local SGD on samples of one class only.

    With a ReLU penultimate layer (``R >= 0`` for every sample, before and after training) and no
    weight decay, Proposition 1 holds step by step with the same signs, so the summed change keeps
    them: row ``label`` and bias ``label`` never decrease, every other row and bias never
    increases.  Momentum adds up gradients of those same signs and keeps the pattern; weight decay
    adds ``-wd W`` and can break it.
    """

    label: int
    delta_w: Tensor  # classes x features, float64
    delta_b: Tensor  # classes, float64
    steps: int
    nonnegative_representation: bool  # R >= 0 for every sample before and after training

    @property
    def expected_sign_w(self) -> Tensor:
        """Proposition 1's sign for every entry, for ``R >= 0``: +1 on row ``label``, -1 elsewhere."""
        signs = -torch.ones_like(self.delta_w)
        signs[self.label] = 1.0
        return signs

    @property
    def expected_sign_b(self) -> Tensor:
        signs = -torch.ones_like(self.delta_b)
        signs[self.label] = 1.0
        return signs

    @property
    def agreement_w(self) -> float:
        """Share of the weight entries that moved and moved with Proposition 1's sign."""
        moved = self.delta_w != 0
        if not moved.any():
            return math.nan
        return float((torch.sign(self.delta_w) == self.expected_sign_w)[moved].double().mean())

    @property
    def agreement_b(self) -> float:
        """Share of the biases that moved with Proposition 1's sign (all of them move)."""
        return float((torch.sign(self.delta_b) == self.expected_sign_b).double().mean())


def one_class_change(
    model: nn.Module,
    x: Tensor,
    label: int,
    settings,
    *,
    seed: int = 0,
    ultimate_layer: Optional[Sequence[str]] = None,
) -> OneClassChange:
    """Train a copy of ``model`` with ``fedgrad_core.training.local_train`` on the inputs ``x``,
    all labelled ``label`` (``settings``: a ``LocalTraining``); report the ultimate layer's change.

    ``model`` is not modified.  The representation check runs the copy in eval mode before and
    after training on every input of ``x``.
    """
    from fedgrad_core.data.task import Split
    from fedgrad_core.training import local_train

    work = copy.deepcopy(model).cpu()
    layer = _linear_by_keys(work, ultimate_layer)
    if layer.bias is None:
        raise ValueError("the ultimate layer has no bias")
    if not 0 <= int(label) < layer.out_features:
        raise ValueError(f"label {label} is not a class of a {layer.out_features}-class model")
    if len(x) == 0:
        raise ValueError("one_class_change needs at least one sample")

    def representation_nonnegative() -> bool:
        captured: list[Tensor] = []
        handle = layer.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach()))
        try:
            work.eval()
            with torch.no_grad():
                work(x)
        finally:
            handle.remove()
        return bool((captured[0] >= 0).all())

    nonneg_before = representation_nonnegative()
    before_w = layer.weight.detach().to(torch.float64).clone()
    before_b = layer.bias.detach().to(torch.float64).clone()
    data = Split(x, torch.full((len(x),), int(label), dtype=torch.int64))
    steps = local_train(work, data, settings, generator=torch.Generator().manual_seed(seed))
    nonneg_after = representation_nonnegative()
    return OneClassChange(
        label=int(label),
        delta_w=layer.weight.detach().to(torch.float64) - before_w,
        delta_b=layer.bias.detach().to(torch.float64) - before_b,
        steps=steps,
        nonnegative_representation=nonneg_before and nonneg_after,
    )


# --------------------------------------------------------------------------- Observation 2, a real round


@dataclass(frozen=True)
class RoundCapture:
    """The ultimate layers the server received in one real round of ``run_experiment``.

    Rows follow ``client_ids`` (sorted).  ``w_clients``: K x classes x features, ``b_clients``:
    K x classes, ``w_prev`` / ``b_prev``: the global model's before the round, all float64 numpy.
    ``record`` is the round's history record (attackers, flagged, the defense's diagnostics);
    ``data_source`` says where the data came from (as a run's ``meta["data_source"]``).
    """

    round_idx: int
    client_ids: tuple[int, ...]
    attackers: tuple[int, ...]
    num_samples: tuple[int, ...]
    w_prev: np.ndarray
    b_prev: np.ndarray
    w_clients: np.ndarray
    b_clients: np.ndarray
    record: dict
    data_source: str

    def by_class_sums(self, change: str = "update") -> tuple[np.ndarray, np.ndarray]:
        """(weight row sums, bias) of every client, L2-normalised (FedGrad's ``by_class_vectors``),
        from its own change ``W_i - W_prev`` (``change="update"``, the paper's Definitions 1-2
        up to ``-1/eta``) or from its deviation from the round's sample-weighted average
        ``W_i - W*`` (``"authors"``, FedGrad's default); the bias part is ``b_i - b_prev`` or
        ``b_i - b*`` alike."""
        from fedgrad_core.defenses.fedgrad import by_class_vectors

        if change == "update":
            w_ref, b_ref = self.w_prev, self.b_prev
        elif change == "authors":
            share = np.asarray(self.num_samples, dtype=np.float64) / sum(self.num_samples)
            w_ref, b_ref = np.tensordot(share, self.w_clients, 1), np.tensordot(share, self.b_clients, 1)
        else:
            raise ValueError(f"change must be 'update' or 'authors', got {change!r}")
        return by_class_vectors(self.w_clients - w_ref, self.b_clients - b_ref)

    @property
    def is_attacker(self) -> np.ndarray:
        return np.array([c in self.attackers for c in self.client_ids], dtype=bool)


class _RecordingDefense(Defense):
    """Wraps the run's own defense object for one round: records the ultimate layers it receives,
    then lets the wrapped defense aggregate exactly as it would have."""

    def __init__(self, inner: Defense, ultimate_layer: Optional[Sequence[str]]) -> None:
        self.inner = inner
        self.ultimate_layer = ultimate_layer
        self.seen: Optional[dict] = None

    def aggregate(self, global_state, updates, round_idx):
        wkey, bkey = self.ultimate_layer or find_ultimate_layer(global_state)
        ordered = sorted(updates, key=lambda u: u.client_id)

        def f64(t: Tensor):
            return t.detach().cpu().to(torch.float64).numpy()

        self.seen = {
            "client_ids": tuple(int(u.client_id) for u in ordered),
            "num_samples": tuple(int(u.num_samples) for u in ordered),
            "w_prev": f64(global_state[wkey]),
            "b_prev": f64(global_state[bkey]),
            "w_clients": np.stack([f64(u.state[wkey]) for u in ordered]),
            "b_clients": np.stack([f64(u.state[bkey]) for u in ordered]),
        }
        return self.inner.aggregate(global_state, updates, round_idx)


def capture_round(config, round_idx: int, *, ultimate_layer: Optional[Sequence[str]] = None) -> RoundCapture:
    """Play ``config`` round by round as ``run_experiment`` does, up to round ``round_idx``, and
    return the ultimate layers the server received in that round.

    The set-up and the rounds are the simulation's own (``fedgrad_core.simulation.run_round``); only
    the defense object is wrapped in round ``round_idx`` to record what it receives, and it then
    aggregates as it would have.  Since the simulation seeds every round by its index, the round
    equals that of an uninterrupted ``run_experiment`` (a test checks this record for record).
    """
    from fedgrad_core import simulation as sim
    from fedgrad_core.config import validate

    validate(config)
    if isinstance(round_idx, bool) or not isinstance(round_idx, int) or not 1 <= round_idx <= config.rounds:
        raise ValueError(f"round_idx must be an integer in [1, rounds={config.rounds}], got {round_idx!r}")
    device = sim.resolve_device(config.device)
    run = sim.setup_run(config, device)  # run_experiment's own set-up and starting model
    sim.load_pretrained(run, config, device)
    for _ in sim.play_rounds(config, run, device, range(1, round_idx)):
        pass
    recorder = _RecordingDefense(run.defense, ultimate_layer)
    record = sim.run_round(config, round_idx, dataclasses.replace(run, defense=recorder), device)
    if recorder.seen is None:
        raise RuntimeError(f"round {round_idx} did not reach the defense")
    return RoundCapture(
        round_idx=round_idx,
        attackers=tuple(int(c) for c in record["attackers"]),
        record=record,
        data_source=run.task.source,
        **recorder.seen,
    )
