"""FedGrad through ``FedGrad.aggregate`` on tiny hand-made rounds: every number checkable by hand.

The rounds use the tiny model of ``conftest.py`` (``G``, ``E``, ``client``, ``soft_client``): its
comment says why a HIGH client scores 1 and a LOW one 0 in the soft filter.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import E, G, HIGH, LOW, client, soft_client, tiny_global
from fedgrad_core.defenses import ClientUpdate
from fedgrad_core.defenses.base import Layout
from fedgrad_core.defenses.fedgrad import FedGrad, closeness_scores, fedgrad_round, parameter_columns, parameter_keys
from fedgrad_core.defenses.fedgrad_state import FedGradHistory, FedGradParams


def soft_only(**params) -> FedGrad:
    return FedGrad(use_hard=False, **params)


# --------------------------------------------------------------------------- trust score


H1, H2, L1, L2, L3, X = 10, 11, 20, 21, 22, 30


def warm_up(defense: FedGrad) -> None:
    """Rounds 0-3: H1, H2 always high; L1 always low; X high in round 0 only.

    round 0: running means H 1, L1 0, X 1; median 1 -> threshold min(0.5, 1) = 0.5: S1 = H1 H2 X
    round 1: X 1/2; means 0, 1/2, 1, 1 -> median 3/4, threshold 0.5: X (0.5) not strictly above
    round 2: X 1/3, median 2/3; round 3: X 1/4, median 5/8: S1 = H1 H2 both times
    X's trust history is then [0.5, 0.25, 1, 1, 1]: mean 3.75 / 5 = 0.75 exactly.
    """
    for r in range(4):
        out = defense.aggregate(
            G, [soft_client(H1, HIGH), soft_client(H2, HIGH), soft_client(L1, LOW),
                soft_client(X, HIGH if r == 0 else LOW)], r)
        assert out.diagnostics["s1"] == ([H1, H2, X] if r == 0 else [H1, H2]), r


def round_four_with_attackers() -> list[ClientUpdate]:
    """H1, H2, X high; L1 and two newcomers low.  Running means 1, 1, 0, 0, 0 and X's
    (1 + 0 + 0 + 0 + 1) / 5 = 0.4; median 0.2 -> threshold 0.2: S1 = H1 H2 X."""
    return [soft_client(H1, HIGH), soft_client(H2, HIGH), soft_client(L1, LOW),
            soft_client(L2, LOW), soft_client(L3, LOW), soft_client(X, HIGH)]


def test_a_client_whose_trust_equals_gamma_is_cleared_and_then_counted_clean():
    # Prepare
    defense = soft_only(switch_round=4, gamma=0.75)
    warm_up(defense)
    # Execute
    out = defense.aggregate(G, round_four_with_attackers(), 4)
    after = defense.aggregate(G, round_four_with_attackers(), 5)
    # Assert: trust 0.75 >= gamma clears X; H1, H2 (trust (0.5 + 4 x 0.25) / 5 = 0.3) stay
    d = out.diagnostics
    assert d["s1"] == [H1, H2, X]
    assert d["trust"][str(X)] == 0.75 and d["trust"][str(H1)] == pytest.approx(0.3)
    assert d["cleared"] == [X] and d["suspicious"] == [H1, H2] and out.flagged == {H1, H2}
    # the cleared client is averaged: L1, L2, L3, X with equal counts -> c = (1 + 1 + 1 + 3) / 4
    torch.testing.assert_close(out.global_state["fc.weight"], G["fc.weight"] + 1.5 * E, rtol=0, atol=0)
    # the entry appended for round 4 is the final decision (lambda2 = 1), not "suspicious"
    assert after.diagnostics["trust"][str(X)] == pytest.approx((3.75 + 1.0) / 6)
    assert defense.trust_of(X) == pytest.approx((3.75 + 1.0 + 1.0) / 7)


def test_a_client_whose_trust_is_just_below_gamma_stays_suspicious():
    # Prepare: the same rounds, gamma one float step above X's trust of 0.75
    defense = soft_only(switch_round=4, gamma=float(np.nextafter(0.75, 1.0)))
    warm_up(defense)
    # Execute
    out = defense.aggregate(G, round_four_with_attackers(), 4)
    # Assert
    assert out.diagnostics["cleared"] == [] and out.flagged == {H1, H2, X}
    assert defense.trust_of(X) == pytest.approx((3.75 + 0.25) / 6)


def test_trust_acts_only_from_switch_round():
    # Prepare: the same rounds with the switch one round later
    defense = soft_only(switch_round=5, gamma=0.75)
    warm_up(defense)
    # Execute
    out = defense.aggregate(G, round_four_with_attackers(), 4)
    # Assert
    assert out.diagnostics["cleared"] == [] and out.flagged == {H1, H2, X}


@pytest.mark.parametrize("fallback, flagged, cleared", [("s1", [X], []), ("none", [], [X])])
def test_clearing_everybody_falls_back_to_s1(fallback, flagged, cleared):
    # Prepare: round 4 without H1, H2: X is high among three low clients, running means
    # 0, 0, 0, 0.4 -> threshold min(0.5, 0) = 0: S1 = {X}, and X's trust 0.75 clears it
    defense = soft_only(switch_round=4, gamma=0.75, fallback=fallback)
    warm_up(defense)
    round4 = [soft_client(L1, LOW), soft_client(L2, LOW), soft_client(L3, LOW), soft_client(X, HIGH)]
    # Execute
    out = defense.aggregate(G, round4, 4)
    # Assert
    assert out.diagnostics["s1"] == [X]
    assert out.diagnostics["suspicious"] == flagged and out.diagnostics["cleared"] == cleared


def test_a_benign_client_flagged_in_its_first_round_stays_flagged():
    """What the trust score does not do (module docstring): four benign clients; client 1 leads
    the first round's update direction, then all four send the same model.  From round 1 on the
    raw scores are all 0 (``W_i = W*``), so everybody's scaled score is 0: client 1's running mean
    1 / (t + 1) stays above the median 0, it is flagged every round and its trust
    (0.5 + 0.25 t) / (t + 1) never reaches gamma, long after switch_round."""
    # Prepare
    defense = soft_only(switch_round=2)
    # Execute / Assert
    for r in range(12):
        out = defense.aggregate(
            G, [soft_client(c, HIGH if (c == 1 and r == 0) else LOW) for c in range(4)], r)
        assert out.flagged == {1} and out.diagnostics["cleared"] == [], r
        assert out.diagnostics["soft_scores"]["1"] == pytest.approx(1 / (r + 1))
        assert out.diagnostics["trust"]["1"] == pytest.approx((0.5 + 0.25 * r) / (r + 1))


# --------------------------------------------------------------------------- soft filter, weights


def test_sample_weights_in_w_star_decide_the_soft_scores():
    # Prepare: c = 1, 3, 4.  Equal counts: cbar = 8/3, client 1 above it (high).  Counts 1, 1, 4:
    # cbar = (1 + 3 + 16) / 6 = 10/3, client 1 below it (low)
    equal = [soft_client(0, 1.0), soft_client(1, 3.0), soft_client(2, 4.0)]
    unequal = [soft_client(0, 1.0, n=1), soft_client(1, 3.0, n=1), soft_client(2, 4.0, n=4)]
    # Execute
    a = soft_only(switch_round=9).aggregate(G, equal, 0).diagnostics
    b = soft_only(switch_round=9).aggregate(G, unequal, 0).diagnostics
    # Assert
    assert a["soft_scores"] == {"0": 0.0, "1": 1.0, "2": 1.0}
    assert b["soft_scores"] == {"0": 0.0, "1": 0.0, "2": 1.0}


def test_a_client_at_the_round_average_scores_zero_before_scaling():
    # Prepare: c = 1, 2, 3 with counts 1, 2, 1 (weights 1/4, 1/2, 1/4, exact): cbar = 2, so
    # client 1 sits exactly at W* (W_i - W* = 0): raw scores -1, 0, +1, scaled 0, 1/2, 1
    updates = [client(i, n, fc__weight=c * E) for i, (c, n) in enumerate(((1.0, 1), (2.0, 2), (3.0, 1)))]
    # Execute
    out = FedGrad(use_hard=False, switch_round=9).aggregate(G, updates, 0)
    # Assert
    assert out.diagnostics["soft_scores"] == {"0": 0.0, "1": 0.5, "2": 1.0}


def test_final_average_weights_the_kept_clients_by_sample_count():
    # Prepare: every tensor moves: client i is W_prev + c_i (all entries), c = 1, 3, 4 with
    # counts 1, 3, 12: cbar = (1 + 9 + 48) / 16 = 3.625 -> scaled scores 0, 0, 1, threshold
    # min(0.5, median 0) = 0 -> S1 = {2}; kept: clients 0 and 1, weights 1/4 and 3/4
    def shifted(cid, c, n):
        return ClientUpdate(cid, {k: v + 0.25 * c for k, v in G.items()}, n)

    updates = [shifted(0, 1.0, 1), shifted(1, 3.0, 3), shifted(2, 4.0, 12)]
    # Execute
    out = soft_only(switch_round=9).aggregate(G, updates, 0)
    # Assert: W_prev + 0.25 x (1 x 1 + 3 x 3) / 4 = W_prev + 0.625, exactly
    assert out.flagged == {2}
    for key, value in G.items():
        assert torch.equal(out.global_state[key], value + 0.625), key


def test_strict_factor_lowers_the_threshold_through_aggregate():
    # Prepare: round 0 scaled scores H1 1, H2 1, L 0, X 1; round 1 X is low: running means
    # 1, 1, 0, 1/2, median 3/4 -> eps1 = min(0.5, 3/4) = 0.5: X (0.5) is not strictly above;
    # 0.5 x eps1 = 0.25 flags X too
    def rounds(defense):
        for r in range(2):
            c = [3.0, 3.0, 1.0, 3.0 if r == 0 else 1.0]
            out = defense.aggregate(G, [client(i, fc__weight=c[i] * E) for i in range(4)], r)
        return out.diagnostics

    # Execute
    plain = rounds(FedGrad(use_hard=False, switch_round=9))
    strict = rounds(FedGrad(use_hard=False, switch_round=9, strict_factor=0.5))
    # Assert
    assert plain["soft_scores"] == {"0": 1.0, "1": 1.0, "2": 0.0, "3": 0.5}
    assert plain["soft_threshold"] == 0.5 and plain["s1"] == [0, 1]
    assert strict["soft_threshold"] == 0.25 and strict["s1"] == [0, 1, 3]
    assert "clusters" not in strict  # no hard-filter round: no cluster labels


def test_everyone_suspicious_keeps_the_previous_model_and_says_why():
    # Prepare: two clients, the soft filter with zeta = 0 flags the one with scaled score 1 and,
    # after they swap, both (running means 1/2 > min(zeta = 0, 1/2) = 0)
    defense = FedGrad(zeta=0.0, use_hard=False, use_trust=False)
    # Execute
    first = defense.aggregate(G, [client(0, fc__weight=3 * E), client(1, fc__weight=-E)], 0)
    second = defense.aggregate(G, [client(0, fc__weight=-E), client(1, fc__weight=3 * E)], 1)
    # Assert: W* = W_prev + E in round 0, client 0 moved along W* - W_prev (score 1)
    assert first.flagged == {0}
    assert second.diagnostics["soft_scores"] == {"0": 0.5, "1": 0.5}
    assert second.flagged == {0, 1}
    assert second.diagnostics["kept_previous_model"] == "every client was suspicious"
    for key in G:
        assert torch.equal(second.global_state[key], G[key]), key


# --------------------------------------------------------------------------- hard filter


# Hard-filter rounds use the hard filter alone (S2 is the answer) from round 0, four clients.


def hard_only(**params) -> FedGrad:
    params.setdefault("num_attackers_estimate", 1)  # K - f - 2 = 1 neighbour for K = 4
    return FedGrad(use_soft=False, use_trust=False, switch_round=0, **params)


def by_class(*rows: tuple[float, float, float]) -> list[torch.Tensor]:
    """Weight changes whose row sums (by-class vectors) are ``rows`` (second feature left 0)."""
    return [torch.tensor([[r[0], 0.0], [r[1], 0.0], [r[2], 0.0]]) for r in rows]


def test_the_bias_half_alone_changes_s2():
    # Prepare: the same weight change for everybody (W_i - W* = 0: the weight half is 0), bias
    # changes +e0, -e0, +e0, -e0: the bias half splits {0, 2} from {1, 3}; ultimate distances
    # d(0, 2) = d(1, 3) = 0 -> all closeness scores 0, client 0 is the benign anchor
    same = 0.5 * E
    b = [torch.tensor([s * 0.5, 0.0, 0.0]) for s in (1, -1, 1, -1)]
    updates = [client(i, fc__weight=same, fc__bias=b[i]) for i in range(4)]
    # Execute
    out = hard_only().aggregate(G, updates, 0)
    # Assert
    assert out.diagnostics["s2"] == [1, 3]
    assert out.diagnostics["clusters"]["0"] == out.diagnostics["clusters"]["2"]


@pytest.mark.parametrize("bias, s2", [("update", []), ("raw", [1, 3])])
def test_bias_update_and_raw_differ(bias, s2):
    # Prepare: weights unchanged (weight half 0); b_prev = (0.5, -0.25, 0.125); bias changes
    # 0.25 x (1, 5, 1, 5) along class 0.  "update": the changes are parallel, every cosine is 1,
    # every scaled column constant (0): identical attributes, no S2.  "raw": b_i = (0.75, -0.25,
    # 0.125) for clients 0, 2 and (1.75, -0.25, 0.125) for 1, 3; their cosine x < 1 becomes 0
    # after column min-max scaling (the diagonal 1 stays 1): {0, 2} vs {1, 3}; closeness ties at
    # 0 (d(0, 2) = d(1, 3) = 0), client 0 is the anchor
    changes = [torch.tensor([0.25 * c, 0.0, 0.0]) for c in (1, 5, 1, 5)]
    updates = [client(i, fc__bias=changes[i]) for i in range(4)]
    # Execute
    out = hard_only(bias=bias).aggregate(G, updates, 0)
    # Assert
    assert out.diagnostics["s2"] == s2


@pytest.mark.parametrize("gradient, s2", [("update", []), ("authors", [1, 3])])
def test_gradient_update_and_authors_differ(gradient, s2):
    # Prepare: by-class changes 0.25 x (1, 5, 1, 5) along class 0, biases unchanged.  "update"
    # (W_i - W_prev): all parallel, identical attributes, no S2.  "authors" (W_i - W*, row sums
    # 0.25 x (1, 5, 1, 5) - 0.75): -0.5, +0.5, -0.5, +0.5: {0, 2} vs {1, 3}; client 0 anchors
    changes = by_class(*[(0.25 * c, 0.0, 0.0) for c in (1, 5, 1, 5)])
    updates = [client(i, fc__weight=changes[i]) for i in range(4)]
    # Execute
    out = hard_only(gradient=gradient).aggregate(G, updates, 0)
    # Assert
    assert out.diagnostics["s2"] == s2


def two_groups(g: dict[str, torch.Tensor], far: str, far_shift: tuple[float, float]) -> list[ClientUpdate]:
    """Clients 0, 1: the same ultimate change (row sums (0.5, 0, 0)); clients 2, 3: row sums
    (0, 0.5, 0) spread over different features.  Ultimate squared distances: d(0, 1) = 0,
    d(2, 3) = 0.5, d(0, 2) = 0.0625 + 0.0625 + 0.25 = 0.375.  Clients 0 and 1 also move the
    tensor ``far`` (all entries) by ``far_shift``; clients 2 and 3 do not."""
    ult = [torch.tensor([[0.25, 0.25], [0.0, 0.0], [0.0, 0.0]])] * 2 + [
        torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.0, 0.0]]),
        torch.tensor([[0.0, 0.0], [0.0, 0.5], [0.0, 0.0]]),
    ]
    updates = []
    for i in range(4):
        changes = {"fc__weight": ult[i]}
        if i < 2:
            changes[far.replace(".", "__")] = torch.full_like(g[far], far_shift[i])
        updates.append(client(i, g=g, **changes))
    return updates


@pytest.mark.parametrize(
    "closeness, scores, s2",
    [
        # ultimate only: clients 0, 1 coincide (score 0), client 0 anchors -> S2 = {2, 3}
        ("ultimate", {"0": 0.0, "1": 0.0, "2": 0.375, "3": 0.375}, [2, 3]),
        # full: body.weight +4 / -4 on 4 entries: d(0, 1) = 4 x 64 = 256, d(0, 2) = 4 x 16 +
        # 0.375; clients 2, 3 are nearest each other (0.5): client 2 anchors -> S2 = {0, 1}
        ("full", {"0": 64.375, "1": 64.375, "2": 0.5, "3": 0.5}, [0, 1]),
    ],
)
def test_closeness_full_and_ultimate_differ(closeness, scores, s2):
    # Prepare
    updates = two_groups(G, "body.weight", (4.0, -4.0))
    # Execute
    out = hard_only(closeness=closeness).aggregate(G, updates, 0)
    # Assert
    assert out.diagnostics["closeness"] == pytest.approx(scores)
    assert out.diagnostics["s2"] == s2


@pytest.mark.parametrize("closeness", ["ultimate", "full"])
def test_closeness_is_measured_on_the_changes_so_a_model_far_from_the_origin_costs_no_precision(closeness):
    # Prepare: a model near 1e5 (float32 steps of 2^-7 there) with a 10 x 20 ultimate layer, and
    # small irregular changes.  A Gram matrix of the models themselves (about 2e5 an entry, 200
    # products a row) rounds away about 1 % of the 1e-1 the distances are made of; measured on
    # the changes (centred on the global model) they keep float32's precision
    gen = torch.Generator().manual_seed(3)
    shapes = {"body.weight": (20, 4), "body.bias": (20,), "fc.weight": (10, 20), "fc.bias": (10,)}
    g = {key: 1e5 + torch.rand(shape, generator=gen) for key, shape in shapes.items()}
    updates = [client(i, g=g, **{key.replace(".", "__"): 0.05 * torch.randn(shape, generator=gen)
                                 for key, shape in shapes.items()}) for i in range(5)]
    keys = ["fc.weight", "fc.bias"] if closeness == "ultimate" else list(g)
    changes = torch.stack([torch.cat([(u.state[k].double() - g[k].double()).reshape(-1) for k in keys])
                           for u in updates])
    # Execute
    out = hard_only(closeness=closeness).aggregate(g, updates, 0)
    # Assert: Krum's score of the changes (f = 1: K - f - 2 = 2 neighbours)
    expected = closeness_scores(changes, 1)
    got = np.array([out.diagnostics["closeness"][str(i)] for i in range(5)])
    np.testing.assert_allclose(got, expected, rtol=1e-6)


class TinyBN(nn.Module):
    """The module whose state is ``tiny_global(batchnorm=True)`` (same keys, same order)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(2, 2)
        self.bn = nn.BatchNorm1d(2)
        self.fc = nn.Linear(2, 3)


@pytest.mark.parametrize("factory", [None, TinyBN], ids=["name-rule", "model_factory"])
def test_full_closeness_ignores_batchnorm_statistics(factory):
    # Prepare: clients 0 and 1 differ wildly in bn.running_var only (+256 and +512, the
    # parameters as in the "ultimate" case above).  Counted, the buffer would make clients 2, 3
    # the nearest pair and flag {0, 1}; over the parameters client 0 anchors and S2 = {2, 3}
    g = tiny_global(batchnorm=True)
    assert list(g) == list(TinyBN().state_dict())
    updates = two_groups(g, "bn.running_var", (256.0, 512.0))
    # Execute
    out = hard_only(closeness="full", model_factory=factory).aggregate(g, updates, 0)
    # Assert
    assert out.diagnostics["closeness"] == pytest.approx({"0": 0.0, "1": 0.0, "2": 0.375, "3": 0.375})
    assert out.diagnostics["s2"] == [2, 3]
    # the kept clients' buffers are still averaged (equal counts): running_var + 384
    assert torch.equal(out.global_state["bn.running_var"], g["bn.running_var"] + 384.0)
    assert torch.equal(out.global_state["bn.num_batches_tracked"], g["bn.num_batches_tracked"])


class WithMask(nn.Module):
    """A model with a float buffer that is no normalisation statistic (``mask``)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(2, 2)
        self.fc = nn.Linear(2, 3)
        self.register_buffer("mask", torch.ones(2))


def test_full_closeness_uses_the_model_factorys_parameter_names():
    # Prepare: clients 0 and 1 make the same ultimate change and differ wildly in ``mask`` (a
    # buffer the name rule would count); clients 2, 3 differ in the ultimate layer only.  Over
    # the parameters: d(0, 1) = 0, d(2, 3) = 0.5, d(0, 2) = 0.375: client 0 anchors, S2 = {2, 3}
    g = dict(G, mask=torch.ones(2))
    assert set(g) == set(WithMask().state_dict())
    ult = [torch.tensor([[0.25, 0.25], [0.0, 0.0], [0.0, 0.0]])] * 2 + [
        torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.0, 0.0]]),
        torch.tensor([[0.0, 0.0], [0.0, 0.5], [0.0, 0.0]]),
    ]
    masks = [torch.full((2,), 64.0), torch.full((2,), -64.0), torch.zeros(2), torch.zeros(2)]
    updates = [client(i, g=g, fc__weight=ult[i], mask=masks[i]) for i in range(4)]
    defense = FedGrad(use_soft=False, use_trust=False, switch_round=0, num_attackers_estimate=1, model_factory=WithMask)
    # Execute
    out = defense.aggregate(g, updates, 0)
    # Assert
    assert out.diagnostics["closeness"] == pytest.approx({"0": 0.0, "1": 0.0, "2": 0.375, "3": 0.375})
    assert out.diagnostics["s2"] == [2, 3]


def test_full_closeness_of_models_far_from_the_origin_is_exact():
    # Prepare: every entry of the global model 1024 + x; clients move body.weight[0, 0] by
    # 0, 1, 2, 3 x 2^-6.  Centred on the global model the changes and the squared distances are
    # exact: nearest neighbours 2^-12 apart (1 neighbour for K = 4, f = 1)
    g = {k: v + 1024.0 for k, v in G.items()}
    step = torch.zeros(2, 2)
    step[0, 0] = 2.0**-6
    updates = [client(i, g=g, body__weight=i * step) for i in range(4)]
    defense = FedGrad(use_soft=False, use_trust=False, switch_round=0, num_attackers_estimate=1)
    # Execute
    out = defense.aggregate(g, updates, 0)
    # Assert
    assert out.diagnostics["closeness"] == {str(i): 2.0**-12 for i in range(4)}


def test_parameter_keys_by_name_rule_and_by_model():
    # Prepare: a float buffer that is not a normalisation statistic
    g = tiny_global(batchnorm=True)
    g["mask"] = torch.ones(2)
    names = tuple(n for n, _ in TinyBN().named_parameters())
    params = ["body.weight", "body.bias", "bn.weight", "bn.bias", "fc.weight", "fc.bias"]
    # Execute / Assert
    assert parameter_keys(g) == params + ["mask"]  # the name rule keeps "mask"
    assert parameter_keys(g, names) == params
    # columns: body.* and bn.weight/bias are 0-10, the running statistics 10-14, fc.* 14-23
    layout = Layout.of(tiny_global(batchnorm=True))
    assert parameter_columns(layout, params) == [slice(0, 10), slice(14, 23)]
    with pytest.raises(ValueError, match="not in the global model"):
        parameter_keys(G, names)
    with pytest.raises(ValueError, match="model_factory"):
        FedGrad(model_factory=lambda: "not a module")
    # the simulation's context hands the factory over; only the names are kept
    from fedgrad_core.defenses import build_defense

    built = build_defense("fedgrad", {}, {"model_factory": TinyBN, "seed": 0})
    assert built.parameter_names == names


@pytest.mark.parametrize("counts, s2", [((1, 1, 1, 1), [2, 3]), ((1, 1, 1, 9), [3])])
def test_sample_weights_in_w_star_decide_the_hard_split(counts, s2):
    # Prepare: by-class changes 0.25 x (1, 2, 4, 5) along class 0 ("authors": minus W*'s row
    # sum 0.25 x cbar).  Equal counts: cbar = 3, signs - - + +.  Counts 1, 1, 1, 9: cbar = 52/12,
    # signs - - - +.  Closeness: neighbours differ by 0.25 in one entry, all scores 0.0625, client
    # 0 anchors
    changes = by_class(*[(0.25 * c, 0.0, 0.0) for c in (1, 2, 4, 5)])
    updates = [client(i, counts[i], fc__weight=changes[i]) for i in range(4)]
    # Execute
    out = hard_only(gradient="authors").aggregate(G, updates, 0)
    # Assert
    assert out.diagnostics["s2"] == s2


def test_the_defense_hands_its_kmeans_n_init_to_kmeans(kmeans_calls):
    # Prepare
    seen = kmeans_calls
    updates = [client(i, fc__bias=torch.tensor([0.25 * (-1) ** i, 0.0, 0.0])) for i in range(4)]
    # Execute
    FedGrad(use_soft=False, use_trust=False, switch_round=0, kmeans_n_init=3, seed=4).aggregate(G, updates, 0)
    # Assert
    assert seen == [{"n_clusters": 2, "n_init": 3, "random_state": 4}]


def test_the_fallback_restores_s1_only_not_s2():
    """Rounds 0, 1: identical weights (raw soft scores 0: S1 empty), so every client's trust is
    (0.5 + 1 + 1) / 3 = 0.83 in round 2.  The weight changes are along D = [[1, -1], 0, 0], whose
    row sums are 0: the hard filter sees the biases only, +e0 for clients 0-2, -e0 for client 3,
    the same every round: S2 = {3} (closeness: clients 0, 2 coincide, client 0 anchors).  Round
    2: client 1 is high along D (running means 0, 1/3, 0, 0, threshold 0): S1 = {1}.  Trust clears
    {1, 3}; the fallback restores S1 = {1}, and client 3 stays cleared."""
    # Prepare
    D = torch.tensor([[0.25, -0.25], [0.0, 0.0], [0.0, 0.0]])
    bias = [torch.tensor([s * 0.5, 0.0, 0.0]) for s in (1, 1, 1, -1)]
    defense = FedGrad(switch_round=2, num_attackers_estimate=1)
    # Execute
    for r in range(3):
        c = [1.0, 3.0 if r == 2 else 1.0, 1.0, 1.0]
        out = defense.aggregate(G, [client(i, fc__weight=c[i] * D, fc__bias=bias[i]) for i in range(4)], r)
    # Assert
    d = out.diagnostics
    assert d["s1"] == [1] and d["s2"] == [3]
    assert d["trust"] == pytest.approx({str(i): 2.5 / 3 for i in range(4)})
    assert d["suspicious"] == [1] and d["cleared"] == [3]


# --------------------------------------------------------------------------- pairwise history


def pair_block(defense: FedGrad, key: str, ids) -> np.ndarray:
    """The saved pair array ``key`` (``pair_w``, ``pair_b`` or ``pair_n``) over ``ids``, in that order."""
    state = defense.state_dict()
    pos = [state["pair_ids"].tolist().index(c) for c in ids]
    return state[key].numpy()[np.ix_(pos, pos)]


@pytest.mark.parametrize("half", ["weight", "bias"])
def test_pairwise_history_is_a_running_mean_over_shared_rounds(half):
    # Prepare: by-class vectors of one half (gradient="update"; the other half unchanged: 0)
    #   round 0, ids 0 1 2: (1,0,0) (0,1,0) (1,1,0) -> cosines [[1,0,r],[0,1,r],[r,r,1]],
    #     r = 1/sqrt(2); column min-max: [[1,0,0],[0,1,0],[r,r,1]] (column 2 spans r..1)
    #   round 1, ids 0 1 3: (1,0,0) (1,1,0) (0,1,0) -> [[1,r,0],[r,1,r],[0,r,1]];
    #     scaled: [[1,0,0],[r,1,r],[0,0,1]] (column 1 spans r..1)
    r = 1 / np.sqrt(2)
    defense = FedGrad(use_soft=False, use_trust=False, switch_round=9, gradient="update")
    rounds = [
        [(0, (1, 0, 0)), (1, (0, 1, 0)), (2, (1, 1, 0))],
        [(0, (1, 0, 0)), (1, (1, 1, 0)), (3, (0, 1, 0))],
    ]
    # Execute
    for t, members in enumerate(rounds):
        if half == "weight":
            changes = by_class(*[tuple(0.25 * x for x in v) for _, v in members])
            updates = [client(cid, fc__weight=d) for (cid, _), d in zip(members, changes)]
        else:
            updates = [client(cid, fc__bias=0.25 * torch.tensor(v, dtype=torch.float32)) for cid, v in members]
        defense.aggregate(G, updates, t)
    # Assert: (i, j) is row i, column j; pairs that met twice hold the mean of two rounds
    expected = np.array([
        [1.0, 0.0, 0.0, 0.0],
        [r / 2, 1.0, 0.0, r],  # (1, 0): (0 + r) / 2 over two rounds
        [r, r, 1.0, 0.0],  # (2, 3) never met
        [0.0, 0.0, 0.0, 1.0],
    ])  # fmt: skip
    on, off = ("pair_w", "pair_b") if half == "weight" else ("pair_b", "pair_w")
    ids = range(4)
    np.testing.assert_allclose(pair_block(defense, on, ids), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(pair_block(defense, off, ids), np.zeros((4, 4)))
    np.testing.assert_array_equal(
        pair_block(defense, "pair_n", ids), [[2, 2, 1, 1], [2, 2, 1, 1], [1, 1, 1, 0], [1, 1, 0, 1]]
    )


def test_pair_history_grows_past_its_first_capacity():
    # Prepare: 20 clients in round 0 (more than the 16 first allocated), 40 in round 1 (more
    # than twice 20); bias changes along one of 3 classes, weights unchanged
    defense = FedGrad(use_soft=False, use_trust=False, switch_round=99, gradient="update")

    def round_of(ids):
        return [client(c, fc__bias=torch.eye(3)[c % 3] * 0.25) for c in ids]

    # Execute
    defense.aggregate(G, round_of(range(20)), 0)
    defense.aggregate(G, round_of(range(40)), 1)
    # Assert: every pair of the first 20 met twice, every pair with a newcomer once; the
    # by-class bias vectors of c and c' are equal (cosine 1, scaled 1) or orthogonal (0)
    n = pair_block(defense, "pair_n", range(40))
    assert n[:20, :20].min() == 2 and n[20:, :].max() == 1 and n[:, 20:].max() == 1
    same = (np.arange(40)[:, None] % 3) == (np.arange(40)[None, :] % 3)
    np.testing.assert_array_equal(pair_block(defense, "pair_b", range(40)), same.astype(np.float32))


def test_fedgrad_round_is_the_defenses_round():
    # Prepare: the plain function with a fresh history and the parameters alone (the paper's
    # rule, no variant), beside the registered defense with the same parameters
    params = {"switch_round": 1, "num_attackers_estimate": 1}
    defense, history = FedGrad(**params), FedGradHistory()
    rounds = [[soft_client(c, HIGH if (c + r) % 3 == 0 else LOW, n=1 + c % 2) for c in range(5)] for r in range(3)]
    # Execute / Assert: the same decisions, models and history, round after round
    for r, updates in enumerate(rounds):
        a = fedgrad_round(history, G, updates, r, params=FedGradParams(**params))
        b = defense.aggregate(G, updates, r)
        assert a.flagged == b.flagged and a.diagnostics == b.diagnostics
        assert all(torch.equal(a.global_state[k], b.global_state[k]) for k in G)
    mine, its = history.state_dict(), defense.state_dict()
    assert all(torch.equal(mine[k], its[k]) and mine[k].dtype == its[k].dtype for k in mine)
