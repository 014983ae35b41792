"""FedGrad: the plain functions on hand-made inputs, then the stateful defense on synthetic rounds."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from fedgrad_core.defenses import ClientUpdate, make_defense
from fedgrad_core.defenses.fedavg import fedavg
from fedgrad_core.defenses.fedgrad import (
    FedGrad,
    clear_trusted,
    closeness_scores,
    column_min_max,
    compromising_scores,
    find_ultimate_layer,
    hard_filter_split,
    min_max_scale,
    pairwise_sq_distances,
    round_similarities,
    by_class_vectors,
    soft_filter,
    soft_filter_threshold,
)
from fedgrad_core.models import make_model, ultimate_layer

NUM_CLASSES = 10


# --------------------------------------------------------------------------- helpers


def global_state() -> dict[str, torch.Tensor]:
    model = make_model("digits_mlp", in_channels=1, num_classes=NUM_CLASSES, seed=0)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def synthetic_round(
    g: dict[str, torch.Tensor],
    *,
    num_benign: int = 7,
    attackers: tuple[int, ...] = (7, 8, 9),
    seed: int = 0,
) -> list[ClientUpdate]:
    """Benign clients: non-IID by-class patterns -1 + 5 e_c with their own dominant class
    c = 2 + cid % 8 (mutually orthogonal) plus a shared main-task pattern, small noise
    everywhere.  Attackers: one shared pattern
    (class 1, the poisoned label) and a shared shift of the whole model, plus small individual
    noise: colluders trained on the same poisoned data."""
    gen = torch.Generator().manual_seed(seed)
    rep = torch.rand(g["classifier.weight"].shape[1], generator=torch.Generator().manual_seed(99))
    main_task = 0.7 * torch.randn(NUM_CLASSES, generator=torch.Generator().manual_seed(5))

    def class_pattern(c: int) -> torch.Tensor:
        return -torch.ones(NUM_CLASSES) + 5 * torch.eye(NUM_CLASSES)[c]

    attack_shift = {
        k: 0.02 * torch.randn(v.shape, generator=torch.Generator().manual_seed(7)) for k, v in g.items()
    }
    ids = list(range(num_benign)) + list(attackers)
    updates = []
    for cid in ids:
        bad = cid in attackers
        state = {k: v + 0.002 * torch.randn(v.shape, generator=gen) for k, v in g.items()}
        if bad:
            pattern = class_pattern(1) + 0.2 * torch.randn(NUM_CLASSES, generator=gen)
            for k in state:
                state[k] = state[k] + attack_shift[k]
        else:
            pattern = class_pattern(2 + cid % 8) + main_task + 0.2 * torch.randn(NUM_CLASSES, generator=gen)
        state["classifier.weight"] = state["classifier.weight"] + 0.01 * torch.outer(pattern, rep)
        state["classifier.bias"] = state["classifier.bias"] + 0.01 * pattern
        updates.append(ClientUpdate(cid, state, 50 + 5 * (cid % 3)))
    return updates


# --------------------------------------------------------------------------- soft filter


@pytest.mark.parametrize(
    "scores, strict, threshold, flagged",
    [
        # median 0.3 < zeta: the median is the threshold; strictly above it
        ([0.1, 0.2, 0.3, 0.9, 1.0], None, 0.3, [False, False, False, True, True]),
        # median 0.7 > zeta = 0.5: zeta caps the threshold, all three flagged
        ([0.6, 0.7, 0.8], None, 0.5, [True, True, True]),
        # section 6.3, "0.35 x eps1": 0.35 x min(0.5, 0.3) = 0.105
        ([0.1, 0.2, 0.3, 0.9, 1.0], 0.35, 0.105, [False, True, True, True, True]),
        # median 0.7 > zeta: 0.35 x min(0.5, 0.7) = 0.175 (min(0.35, 0.35 x 0.7) would be 0.245)
        ([0.2, 0.6, 0.7, 0.8, 0.9], 0.35, 0.175, [True, True, True, True, True]),
        ([0.17, 0.2, 0.7, 0.8, 0.9], 0.35, 0.175, [False, True, True, True, True]),
        # all equal: nobody strictly above
        ([0.0, 0.0, 0.0, 0.0], None, 0.0, [False, False, False, False]),
    ],
)
def test_soft_filter_threshold_and_s1(scores, strict, threshold, flagged):
    # Execute
    got_threshold, mask = soft_filter(scores, zeta=0.5, strict_factor=strict)
    # Assert
    assert got_threshold == pytest.approx(threshold)
    assert soft_filter_threshold(scores, zeta=0.5, strict_factor=strict) == pytest.approx(threshold)
    assert mask.tolist() == flagged


def test_compromising_scores_favour_colluders():
    # Prepare: 1-D ultimate "weights", previous 0, equal sample weights: W* = 1
    rows = torch.tensor([[2.0], [2.0], [-1.0]])
    # Execute
    scores = compromising_scores(rows, torch.ones(3), torch.zeros(1))
    # Assert: W_i - W* = 1, 1, -2 against W* - W_prev = 1
    np.testing.assert_allclose(scores, [1.0, 1.0, -1.0])


def test_min_max_scalings():
    np.testing.assert_allclose(min_max_scale(np.array([1.0, 3.0, 2.0])), [0.0, 1.0, 0.5])
    np.testing.assert_allclose(min_max_scale(np.array([4.0, 4.0])), [0.0, 0.0])
    m = np.array([[1.0, 5.0], [3.0, 5.0], [2.0, 5.0]])
    np.testing.assert_allclose(column_min_max(m), [[0.0, 0.0], [1.0, 0.0], [0.5, 0.0]])


# --------------------------------------------------------------------------- hard filter


def test_closeness_scores_by_hand():
    # Prepare: points 0, 1, 2, 10 on a line; f = 0 -> K - f - 2 = 2 neighbours
    rows = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    # Execute
    scores = closeness_scores(rows, 0)
    # Assert: 1+4, 1+1, 1+4, 64+81
    np.testing.assert_allclose(scores, [5.0, 2.0, 5.0, 145.0])
    assert scores.dtype == np.float64


def test_pairwise_distances_match_cdist():
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(6, 3000, generator=gen)
    center = torch.randn(3000, generator=gen)
    expected = (torch.cdist(rows.double(), rows.double()) ** 2).numpy()
    np.testing.assert_allclose(pairwise_sq_distances(rows, chunk=1000), expected, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(pairwise_sq_distances(rows, center=center), expected, rtol=1e-5, atol=1e-3)


def test_hard_filter_separates_three_colluders():
    # Prepare: by-class patterns -1 + 5 e_c (class c pushed up, the others down; two such
    # patterns with different c are orthogonal).  7 benign clients, non-IID: dominant classes
    # 2..8; 3 attackers sharing class 1 (the poisoned label), plus a little noise
    gen = torch.Generator().manual_seed(3)
    classes = [2, 3, 4, 5, 6, 7, 8, 1, 1, 1]
    patterns = -torch.ones(10, 10) + 5 * torch.eye(10)[classes]
    patterns = (patterns + 0.1 * torch.randn(10, 10, generator=gen)).numpy()
    rep = np.linspace(0.1, 1.0, 16)
    weight_change = patterns[:, :, None] * rep[None, None, :]
    mu_w, mu_b = by_class_vectors(weight_change, patterns)
    sim_w, sim_b = round_similarities(mu_w, mu_b)
    attributes = np.concatenate([sim_w, sim_b], axis=1)
    # closeness: benign client 0 is the most central model
    closeness = np.array([1.0, 2, 2, 2, 2, 2, 2, 3, 3, 3])
    # Execute
    s2, labels = hard_filter_split(attributes, closeness, seed=0)
    # Assert
    assert s2.tolist() == [False] * 7 + [True] * 3
    assert len(set(labels[:7])) == 1 and len(set(labels[7:])) == 1


def test_hard_filter_identical_attributes_flag_nobody():
    s2, labels = hard_filter_split(np.ones((5, 10)), np.arange(5.0), seed=0)
    assert not s2.any() and labels.tolist() == [0] * 5


# --------------------------------------------------------------------------- trust score


def test_trust_fallback_to_s1_when_everything_is_cleared():
    suspicious = np.array([True, True, False])
    s1 = np.array([True, False, False])
    final, cleared = clear_trusted(suspicious, np.array([0.9, 0.9, 0.9]), gamma=0.75, fallback=s1)
    assert final.tolist() == [True, False, False] and cleared.tolist() == [False, True, False]
    final, cleared = clear_trusted(suspicious, np.array([0.9, 0.9, 0.9]), gamma=0.75)
    assert not final.any() and cleared.tolist() == [True, True, False]


def test_trust_clears_neither_persistent_attackers_nor_benign_clients_flagged_from_the_start():
    # Prepare
    g = global_state()
    defense = FedGrad(switch_round=3, seed=0)
    history = {cid: [0.5] for cid in range(10)}
    # Execute: 12 rounds of the same kind of attack
    for r in range(12):
        agg = defense.aggregate(g, synthetic_round(g, seed=r), r)
        d = agg.diagnostics
        # Assert: the trust reported is the mean of the history before this round
        for cid in range(10):
            assert d["trust"][str(cid)] == pytest.approx(float(np.mean(history[cid])))
            history[cid].append(0.25 if cid in d["suspicious"] else 1.0)
        assert d["hard_active"] == (r >= 3)
        # benign clients 1 and 3 sit above the soft filter's median from round 0: flagged in
        # every round, their trust (0.5 + 0.25 r) / (r + 1) never reaches gamma (module docstring)
        assert d["suspicious"] == [1, 3, 7, 8, 9] and d["cleared"] == [], (r, d)


# --------------------------------------------------------------------------- the defense


def test_synthetic_attack_is_caught_from_the_first_round():
    g = global_state()
    agg = FedGrad(switch_round=0, seed=0).aggregate(g, synthetic_round(g), 0)
    assert agg.diagnostics["s2"] == [7, 8, 9]
    assert {7, 8, 9} <= set(agg.diagnostics["s1"])
    assert {7, 8, 9} <= agg.flagged
    assert agg.diagnostics["hard_active"] is True
    assert set(agg.diagnostics["closeness"]) == {str(c) for c in range(10)}


@pytest.mark.parametrize(
    "params",
    [
        {"gradient": "update"},
        {"bias": "raw"},
        {"closeness": "ultimate"},
        {"gradient": "update", "bias": "raw", "closeness": "ultimate"},
    ],
)
def test_variants_catch_the_synthetic_attack(params):
    g = global_state()
    defense = FedGrad(switch_round=0, seed=1, **params)
    for r in range(3):
        agg = defense.aggregate(g, synthetic_round(g, seed=10 + r), r)
        assert {7, 8, 9} <= agg.flagged, (params, r, agg.diagnostics)


def test_reordering_clients_changes_nothing():
    # Prepare
    g = global_state()
    rounds = [synthetic_round(g, seed=r) for r in range(4)]
    a, b = FedGrad(switch_round=2), FedGrad(switch_round=2)
    perm = np.random.default_rng(0)
    # Execute / Assert
    for r, updates in enumerate(rounds):
        shuffled = [updates[i] for i in perm.permutation(len(updates))]
        out_a, out_b = a.aggregate(g, updates, r), b.aggregate(g, shuffled, r)
        assert out_a.flagged == out_b.flagged
        assert out_a.diagnostics == out_b.diagnostics
        for k in g:
            assert torch.equal(out_a.global_state[k], out_b.global_state[k])


def test_identical_updates_without_attackers_equal_fedavg():
    # Prepare
    g = global_state()
    gen = torch.Generator().manual_seed(5)
    common = {k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in g.items()}
    updates = [ClientUpdate(c, {k: v.clone() for k, v in common.items()}, 10 + c) for c in range(8)]
    defense = FedGrad(switch_round=0)
    # Execute
    for r in range(3):
        agg = defense.aggregate(g, updates, r)
        # Assert
        assert agg.flagged == frozenset() and agg.diagnostics["s2"] == []
        expected = fedavg(g, updates)
        for k in g:
            torch.testing.assert_close(agg.global_state[k], expected[k], rtol=0, atol=1e-7)


@pytest.mark.parametrize("bad_value", [math.nan, math.inf, -math.inf])
def test_non_finite_update_is_flagged_and_the_model_stays_finite(bad_value):
    g = global_state()
    updates = synthetic_round(g)
    broken = {k: v.clone() for k, v in updates[2].state.items()}
    broken["features.1.weight"][0, 0] = bad_value
    updates[2] = ClientUpdate(2, broken, updates[2].num_samples)
    defense = FedGrad(switch_round=0)
    for r in range(2):
        agg = defense.aggregate(g, updates, r)
        assert 2 in agg.flagged
        assert all(torch.isfinite(t).all() for t in agg.global_state.values())


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_few_clients_do_not_crash(k):
    g = global_state()
    updates = synthetic_round(g, num_benign=k, attackers=())
    defense = FedGrad(switch_round=0)
    for r in range(2):
        agg = defense.aggregate(g, updates, r)
        assert agg.diagnostics["hard_active"] is (k >= 4)
        assert all(torch.isfinite(t).all() for t in agg.global_state.values())


def test_everyone_suspicious_keeps_the_previous_model():
    # Prepare: two clients that swap roles; with two clients the scaled scores are 1 and 0,
    # so after two rounds both running means are 0.5 > min(zeta = 0, 0.5) = 0
    g = global_state()
    e = torch.zeros_like(g["classifier.weight"])
    e[0, 0] = 0.01

    def client(cid, shift):
        state = {k: v.clone() for k, v in g.items()}
        state["classifier.weight"] = state["classifier.weight"] + shift * e
        return ClientUpdate(cid, state, 10)

    defense = FedGrad(zeta=0.0, use_hard=False, use_trust=False)
    # Execute
    first = defense.aggregate(g, [client(0, 3.0), client(1, -1.0)], 0)
    second = defense.aggregate(g, [client(0, -1.0), client(1, 3.0)], 1)
    # Assert
    assert first.flagged == {0}  # W* = g + e: client 0 moved along W* - W_prev, score 1
    assert second.diagnostics["soft_scores"] == {"0": 0.5, "1": 0.5}
    assert second.flagged == {0, 1}
    assert "kept_previous_model" in second.diagnostics
    for k in g:
        assert torch.equal(second.global_state[k], g[k])


def test_table4_rows_are_expressible():
    g = global_state()
    rounds = [synthetic_round(g, seed=r) for r in range(3)]
    hard_only = FedGrad(use_soft=False, use_trust=False, switch_round=2)
    soft_only = FedGrad(use_hard=False, use_trust=False, switch_round=0)
    for r, updates in enumerate(rounds):
        h, s = hard_only.aggregate(g, updates, r), soft_only.aggregate(g, updates, r)
        assert s.diagnostics["s2"] == [] and not s.diagnostics["hard_active"]
        assert s.diagnostics["s1"] == s.diagnostics["suspicious"]
        assert h.diagnostics["s1"] == []
        assert h.flagged == (frozenset({7, 8, 9}) if r >= 2 else frozenset())


def test_ultimate_layer_found_and_named():
    g = global_state()
    model = make_model("digits_mlp", in_channels=1, num_classes=NUM_CLASSES, seed=0)
    assert find_ultimate_layer(g) == ultimate_layer(model) == ("classifier.weight", "classifier.bias")
    no_bias = {"a.weight": torch.zeros(3, 2)}
    with pytest.raises(ValueError, match="no bias"):
        find_ultimate_layer(no_bias)
    named = FedGrad(ultimate_layer=("features.3.weight", "features.3.bias"), switch_round=0)
    agg = named.aggregate(g, synthetic_round(g), 0)
    assert agg.diagnostics["hard_active"]
    with pytest.raises(ValueError, match="not in the model"):
        FedGrad(ultimate_layer=("x.weight", "x.bias")).aggregate(g, synthetic_round(g), 0)


def test_checkpoint_round_trip_continues_identically():
    g = global_state()
    rounds = [synthetic_round(g, seed=r) for r in range(4)]
    straight = FedGrad(switch_round=1)
    resumed = FedGrad(switch_round=1)
    for r in range(2):
        straight.aggregate(g, rounds[r], r)
        resumed.aggregate(g, rounds[r], r)
    buffer = io.BytesIO()
    torch.save(resumed, buffer)
    buffer.seek(0)
    resumed = torch.load(buffer, weights_only=False)
    for r in range(2, 4):
        a, b = straight.aggregate(g, rounds[r], r), resumed.aggregate(g, rounds[r], r)
        assert a.diagnostics == b.diagnostics


def test_diagnostics_are_json_friendly():
    import json

    g = global_state()
    agg = FedGrad(switch_round=0).aggregate(g, synthetic_round(g), 0)
    text = json.dumps(agg.diagnostics)
    for key in ("s1", "s2", "cleared", "suspicious", "soft_scores", "soft_threshold", "trust",
                "hard_active", "closeness"):
        assert key in json.loads(text)


def test_registered_and_context_filled():
    from fedgrad_core.defenses import available_defenses, build_defense

    assert "fedgrad" in available_defenses()
    d = build_defense("fedgrad", {"switch_round": 5}, {"seed": 3, "attacker_fraction": 0.4,
                                                       "num_classes": 10, "model_factory": None})
    assert (d.seed, d.attacker_fraction, d.switch_round) == (3, 0.4, 5)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"zeta": -0.1}, "zeta"),
        ({"zeta": math.nan}, "zeta"),
        ({"gamma": 1.5}, "gamma"),
        ({"lambda1": 1.0, "lambda2": 0.25}, "lambda1"),
        ({"switch_round": -1}, "switch_round"),
        ({"switch_round": 2.5}, "switch_round"),
        ({"use_soft": False, "use_hard": False}, "both False"),
        ({"use_trust": "yes"}, "use_trust"),
        ({"num_attackers_estimate": -2}, "num_attackers_estimate"),
        ({"attacker_fraction": 1.0}, "attacker_fraction"),
        ({"strict_factor": 0.0}, "strict_factor"),
        ({"gradient": "loss"}, "gradient"),
        ({"bias": "delta"}, "bias"),
        ({"closeness": "cosine"}, "closeness"),
        ({"fallback": "all"}, "fallback"),
        ({"kmeans_n_init": 0}, "kmeans_n_init"),
        ({"ultimate_layer": "classifier.weight"}, "ultimate_layer"),
        ({"no_such_option": 1}, "no_such_option"),
    ],
)
def test_invalid_parameters_raise(params, message):
    with pytest.raises(ValueError, match=message):
        make_defense("fedgrad", **params)


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_end_to_end_digits_blackbox():
    """Issue 3's done-when at CI scale: digits, black-box edge-case attack, 25% attackers."""
    from fedgrad_core import ExperimentConfig, run_experiment

    # Prepare
    base = ExperimentConfig(
        dataset="digits", attack="blackbox", attacker_fraction=0.25, num_clients=20,
        clients_per_round=10, rounds=5, seed=0,
    )
    # Execute (the clean level: the same start without attackers, two rounds suffice)
    clean = run_experiment(base.replace(attack="none", rounds=2), progress=False).to_frame()
    fedavg_run = run_experiment(base, progress=False).to_frame()
    fedgrad_run = run_experiment(
        base.replace(defense="fedgrad", defense_params={"switch_round": 3}), progress=False
    ).to_frame()
    # Assert
    clean_ba = clean.backdoor_acc.max()
    assert fedavg_run.backdoor_acc.max() >= clean_ba + 0.5  # the attack works without a defense
    assert fedgrad_run.backdoor_acc.max() <= clean_ba + 0.1
    assert fedgrad_run.main_acc.iloc[-1] >= fedavg_run.main_acc.iloc[-1] - 0.02
    assert fedgrad_run.tpr.dropna().mean() >= 0.9
    assert any(d["hard_active"] for d in fedgrad_run.defense)
