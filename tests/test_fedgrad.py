"""FedGrad: the plain functions on hand-made inputs, its parameters, then the defense on synthetic
rounds of the digits model (``conftest.synthetic_round``)."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pytest
import torch

from conftest import NUM_CLASSES, G, digits_global_state, synthetic_round
from fedgrad_core.defenses import ClientUpdate, make_defense
from fedgrad_core.defenses.fedavg import fedavg
from fedgrad_core.defenses.fedgrad import (
    FedGrad,
    by_class_vectors,
    clear_trusted,
    closeness_scores,
    column_min_max,
    compromising_scores,
    cosine_matrix,
    cosine_to,
    find_ultimate_layer,
    hard_filter_split,
    min_max_scale,
    normalize_rows,
    pairwise_sq_distances,
    parameter_keys,
    round_similarities,
    soft_filter,
    soft_filter_threshold,
)
from fedgrad_core.defenses.fedgrad_state import FedGradParams
from fedgrad_core.defenses.fedgrad_variants import PAPER, Variant
from fedgrad_core.models import make_model, ultimate_layer


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


def test_soft_threshold_defaults_to_zeta_one_half():
    # Execute / Assert: median 0.9 is capped by the default zeta = 0.5
    assert soft_filter_threshold([0.8, 0.9, 1.0]) == 0.5
    assert soft_filter([0.8, 0.9, 1.0])[0] == 0.5


def test_the_soft_filter_works_in_float64_whatever_the_scores_dtype():
    # Prepare: float32 scores.  The float64 median of 0.1f and 0.2f is not their float32 median;
    # a zeta just below the float32 score 0.3f is below it in float64 but equal to it in float32
    pair = np.array([0.1, 0.2], dtype=np.float32)
    zeta = float(np.float32(0.3)) - 1e-12
    scores = np.array([0.0, 0.3, 0.9], dtype=np.float32)
    # Execute
    median = soft_filter_threshold(pair, zeta=1.0)
    cut, mask = soft_filter(scores, zeta=zeta)
    # Assert
    assert median == (float(pair[0]) + float(pair[1])) / 2
    assert cut == zeta and mask.tolist() == [False, True, True]


def test_compromising_scores_favour_colluders():
    # Prepare: 1-D ultimate "weights", previous 0, equal sample weights: W* = 1
    rows = torch.tensor([[2.0], [2.0], [-1.0]])
    # Execute
    scores = compromising_scores(rows, torch.ones(3), torch.zeros(1))
    # Assert: W_i - W* = 1, 1, -2 against W* - W_prev = 1
    np.testing.assert_allclose(scores, [1.0, 1.0, -1.0])


def test_cosine_to_is_a_cosine_and_zero_for_a_zero_row():
    # Prepare: (3, 4) against (0, 2): 8 / (5 x 2) = 0.8; a zero row has cosine 0
    rows = torch.tensor([[3.0, 4.0], [0.0, 0.0], [-3.0, -4.0]])
    # Execute
    cos = cosine_to(rows, torch.tensor([0.0, 2.0]))
    # Assert
    np.testing.assert_allclose(cos, [0.8, 0.0, -0.8], rtol=1e-15)


def test_min_max_scalings():
    np.testing.assert_allclose(min_max_scale(np.array([1.0, 3.0, 2.0])), [0.0, 1.0, 0.5])
    np.testing.assert_allclose(min_max_scale(np.array([4.0, 4.0])), [0.0, 0.0])
    m = np.array([[1.0, 5.0], [3.0, 5.0], [2.0, 5.0]])
    np.testing.assert_allclose(column_min_max(m), [[0.0, 0.0], [1.0, 0.0], [0.5, 0.0]])


def test_min_max_scale_of_one_none_and_equal_values():
    # Execute / Assert: nothing to scale gives zeros (float64, also for integer input)
    one, none, equal = min_max_scale([0.7]), min_max_scale([]), min_max_scale([3, 3, 3])
    assert one.tolist() == [0.0] and none.tolist() == []
    assert equal.dtype == np.float64 and equal.tolist() == [0.0, 0.0, 0.0]


# --------------------------------------------------------------------------- distances, cosines, the model's parameters


def test_closeness_scores_by_hand():
    # Prepare: points 0, 1, 2, 10 on a line; f = 0 -> K - f - 2 = 2 neighbours
    rows = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    # Execute
    scores = closeness_scores(rows, 0)
    # Assert: 1+4, 1+1, 1+4, 64+81
    np.testing.assert_allclose(scores, [5.0, 2.0, 5.0, 145.0])
    assert scores.dtype == np.float64


def test_closeness_with_one_neighbour_is_the_distance_to_the_nearest_other_client():
    # Prepare: points 0, 1, 3 on a line (squared distances 1, 9, 4); K = 3, f = 1: 1 neighbour
    rows = torch.tensor([[0.0], [1.0], [3.0]])
    # Execute / Assert: float64 NumPy, as the diagnostics need
    scores = closeness_scores(rows, 1)
    assert scores.dtype == np.float64 and scores.tolist() == [1.0, 1.0, 4.0]


def test_closeness_scores_of_two_clients_and_the_error_for_one():
    # Prepare: K = 2: K - f - 2 = 0 neighbours, clipped to 1: each score is the one distance
    rows = torch.tensor([[0.0, 0.5], [1.5, 0.5]])
    # Execute / Assert
    np.testing.assert_array_equal(closeness_scores(rows, 0), [2.25, 2.25])
    with pytest.raises(ValueError, match="^closeness scores need at least two clients$"):
        closeness_scores(rows[:1], 0)


def test_pairwise_distances_match_cdist():
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(6, 3000, generator=gen)
    center = torch.randn(3000, generator=gen)
    expected = (torch.cdist(rows.double(), rows.double()) ** 2).numpy()
    np.testing.assert_allclose(pairwise_sq_distances(rows, chunk=1000), expected, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(pairwise_sq_distances(rows, center=center), expected, rtol=1e-5, atol=1e-3)


def test_distances_far_from_the_origin_are_exact_when_centred_on_the_global_model():
    # Prepare: models at 1024 + (0, 2^-6, 2^-5) in one entry.  Uncentred, float32 products
    # (1024 + 2^-6)^2 lose the 2^-12 that the distance is made of; centred on the global model
    # (1024) the changes are exact and so are the distances 2^-12, 2^-10, 2^-12
    center = torch.full((4,), 1024.0)
    rows = center.repeat(3, 1)
    rows[:, 2] += torch.tensor([0.0, 2.0**-6, 2.0**-5])
    expected = np.array([[0.0, 2.0**-12, 2.0**-10], [2.0**-12, 0.0, 2.0**-12], [2.0**-10, 2.0**-12, 0.0]])
    # Execute
    plain = pairwise_sq_distances(rows, center=center)
    by_runs = pairwise_sq_distances(rows, center=center, columns=[slice(0, 2), slice(2, 4)])
    scores = closeness_scores(rows, 1, center=center)  # 1 neighbour
    # Assert
    np.testing.assert_array_equal(plain, expected)
    np.testing.assert_array_equal(by_runs, expected)
    np.testing.assert_array_equal(scores, [2.0**-12] * 3)


def test_distances_summed_over_column_runs_in_float64():
    # Prepare: run 1 (column 0) gives every Gram entry 4096, run 2 (column 2) adds 2^-12 or less;
    # 4096 + 2^-12 is not a float32, so the runs' Gram matrices must be summed in float64
    rows = torch.tensor([[64.0, 9.0, 0.0], [64.0, 9.0, 2.0**-6], [64.0, 9.0, 2.0**-5]])
    # Execute
    dists = pairwise_sq_distances(rows, columns=[slice(0, 1), slice(2, 3)])
    # Assert
    assert dists.dtype == np.float64
    np.testing.assert_array_equal(dists[0], [0.0, 2.0**-12, 2.0**-10])
    np.testing.assert_array_equal(dists[1], [2.0**-12, 0.0, 2.0**-12])


def test_distances_over_column_runs_add_up_every_run():
    # Prepare: client 1 differs by 1 in run 1, by 2 in run 2 and by 5 in the column left out
    rows = torch.tensor([[0.0, 0.0, 0.0], [1.0, 5.0, 2.0]])
    # Execute
    dists = pairwise_sq_distances(rows, columns=[slice(0, 1), slice(2, 3)])
    # Assert: 1 + 4
    np.testing.assert_array_equal(dists, [[0.0, 5.0], [5.0, 0.0]])


def test_cosines_are_clipped_to_minus_one_and_one():
    # Prepare: rows [v, -v] whose unclipped product (the same stacked product cosine_matrix forms)
    # rounds past 1 in magnitude somewhere; which v do depends on the machine's BLAS, so the first
    # of seeded candidates, and a skip naming the reason where none does
    def unclipped(v):
        unit = normalize_rows(np.stack([v, -v]))
        return unit @ unit.T

    candidates = np.random.default_rng(0).normal(size=(2000, 3))
    v = next((c for c in candidates if np.abs(unclipped(c)).max() > 1.0), None)
    if v is None:
        pytest.skip("no candidate's cosine rounds past 1 on this machine's BLAS: clipping cannot be observed")
    # Execute
    cos = cosine_matrix(np.stack([v, -v]))
    # Assert
    np.testing.assert_array_equal(cos, [[1.0, -1.0], [-1.0, 1.0]])


def test_a_zero_row_stays_zero_and_has_cosine_zero():
    # Prepare
    rows = np.array([[3.0, 4.0], [0.0, 0.0]])
    # Execute / Assert
    np.testing.assert_array_equal(normalize_rows(rows), [[0.6, 0.8], [0.0, 0.0]])
    np.testing.assert_array_equal(cosine_matrix(rows), [[1.0, 0.0], [0.0, 0.0]])


def test_parameter_keys_errors_name_the_problem():
    # Prepare: six parameter names that the state lacks: the message lists the first five
    names = [f"m{i}.weight" for i in range(6)]
    empty = {"steps": torch.tensor(3)}
    # Execute / Assert
    with pytest.raises(ValueError, match="model_factory builds a different model$") as info:
        parameter_keys(G, names)
    assert "m4.weight" in str(info.value) and "m5.weight" not in str(info.value)
    with pytest.raises(ValueError, match="^the model's state holds no floating-point parameter$"):
        parameter_keys(empty)


def test_parameter_keys_drops_running_statistics_of_nested_layers():
    # Prepare: a normalisation layer inside a block: only the last name component counts
    g = dict(G)
    g["block.bn.running_mean"] = torch.zeros(2)
    g["block.bn.running_var"] = torch.ones(2)
    g["block.bn.weight"] = torch.ones(2)
    # Execute
    keys = parameter_keys(g)
    # Assert
    assert keys == ["body.weight", "body.bias", "fc.weight", "fc.bias", "block.bn.weight"]


def test_the_ultimate_layer_is_the_last_two_dimensional_weight_or_the_named_one():
    # Prepare: the digits model; the tiny model with a 1-D "post.weight" (a norm layer's scale)
    # after its last linear layer; states without a 2-D weight or without the bias
    g = digits_global_state()
    model = make_model("digits_mlp", in_channels=1, num_classes=NUM_CLASSES, seed=0)
    with_norm = dict(G, **{"post.weight": torch.ones(3), "post.bias": torch.zeros(3)})
    no_matrix = {"scale.weight": torch.ones(3), "scale.bias": torch.zeros(3)}
    no_bias = {k: v for k, v in G.items() if k != "fc.bias"}
    # Execute / Assert: the rule on a state and on a model agree
    assert find_ultimate_layer(g) == ultimate_layer(model) == ("classifier.weight", "classifier.bias")
    assert find_ultimate_layer(with_norm) == ("fc.weight", "fc.bias")
    no_weight = "^no 2-D floating weight in the model's state: cannot find the ultimate layer$"
    with pytest.raises(ValueError, match=no_weight):
        find_ultimate_layer(no_matrix)
    no_bias_message = r"'fc.weight' has no bias 'fc.bias'; name the layer with ultimate_layer=\(weight_key, bias_key\)$"
    with pytest.raises(ValueError, match=no_bias_message):
        find_ultimate_layer(no_bias)
    # a named layer is used as given; one not in the state is refused by name
    named = FedGrad(ultimate_layer=("features.3.weight", "features.3.bias"), switch_round=0)
    assert named.aggregate(g, synthetic_round(g), 0).diagnostics["hard_active"]
    with pytest.raises(ValueError, match="^ultimate layer key 'x.weight' is not in the model's state$"):
        FedGrad(ultimate_layer=("x.weight", "x.bias")).aggregate(g, synthetic_round(g), 0)


# --------------------------------------------------------------------------- hard filter


def test_by_class_sums_are_taken_in_float64_for_a_float32_change():
    # Prepare: one client, one class; in float32, 1e8 + 1 rounds back to 1e8, so the row would sum to 0
    weight_change = np.array([[[1e8, 1.0, -1e8]]], dtype=np.float32)
    # Execute
    mu_w, mu_b = by_class_vectors(weight_change, np.array([[2.0]]))
    # Assert: the float64 sum is 1, normalised to 1 (a zero sum would stay 0)
    assert mu_w.tolist() == [[1.0]] and mu_b.tolist() == [[1.0]]


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


def test_hard_filter_treats_rows_equal_to_12_decimals_as_identical():
    # Prepare: two pairs of rows 3e-13 apart (rounding noise of the running means): one point
    base = np.array([0.25, 0.75, 0.5, 1.0])
    near = np.stack([base, base, base + 3e-13, base + 3e-13])
    # Execute
    s2, labels = hard_filter_split(near, np.array([0.0, 1.0, 2.0, 3.0]), seed=0)
    # Assert
    assert not s2.any() and labels.tolist() == [0, 0, 0, 0] and labels.dtype == np.int64


def test_hard_filter_splits_groups_that_round_to_the_same_integers():
    # Prepare: two groups well apart at 0.1 / 0.3 (both round to 0 at 0 decimals); client 2 has
    # the lowest closeness score: its group {2, 3} is benign
    rows = np.array([[0.1, 0.2], [0.1, 0.2], [0.3, 0.4], [0.3, 0.4]])
    # Execute
    s2, labels = hard_filter_split(rows, np.array([2.0, 2.0, 1.0, 2.0]), seed=0)
    # Assert
    assert s2.tolist() == [True, True, False, False]
    assert labels.dtype == np.int64 and labels[0] == labels[1] != labels[2] == labels[3]


def test_hard_filter_splits_two_distinct_clients():
    # Prepare: K = 2 (the defense needs 4, the function does not): each its own cluster
    s2, labels = hard_filter_split(np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([3.0, 1.0]), seed=0)
    # Assert: client 1 is the anchor
    assert s2.tolist() == [True, False] and labels.dtype == np.int64 and labels[0] != labels[1]


def test_kmeans_gets_the_defenses_n_init_and_seed(kmeans_calls):
    # Prepare: record the KMeans settings (the data decide nothing here)
    seen = kmeans_calls
    rows = np.array([[0.1, 0.2], [0.1, 0.2], [0.3, 0.4], [0.3, 0.4]])
    # Execute
    hard_filter_split(rows, np.zeros(4), seed=5)
    hard_filter_split(rows, np.zeros(4), seed=6, n_init=3)
    # Assert: the documented default n_init is 10
    assert seen == [
        {"n_clusters": 2, "n_init": 10, "random_state": 5},
        {"n_clusters": 2, "n_init": 3, "random_state": 6},
    ]


# --------------------------------------------------------------------------- trust score


@pytest.mark.parametrize(
    "suspicious, trust, fallback, final, cleared",
    [
        # trust 0.9 >= gamma clears everybody: the fallback S1 (client 0) stays suspicious
        ([True, True, False], [0.9, 0.9, 0.9], [True, False, False], [True, False, False], [False, True, False]),
        # no fallback: everybody cleared
        ([True, True, False], [0.9, 0.9, 0.9], None, [False, False, False], [True, True, False]),
        # 0/1 lists (not bool arrays): the results are used with ``~`` (keep = ~final), so they must
        # be bool, since ~1 = -2; trust 0.75 equals gamma: cleared, then the fallback
        ([1, 1, 0], [0.75, 0.9, 0.1], [1, 0, 0], [True, False, False], [False, True, False]),
        ([1, 0, 1], [0.5, 0.9, 0.8], None, [True, False, False], [False, False, True]),
    ],
)
def test_clear_trusted_clears_trusted_suspicious_clients_and_falls_back_to_s1(
    suspicious, trust, fallback, final, cleared
):
    # Execute
    got_final, got_cleared = clear_trusted(suspicious, trust, gamma=0.75, fallback=fallback)
    # Assert
    assert got_final.dtype == bool and got_cleared.dtype == bool
    assert got_final.tolist() == final and got_cleared.tolist() == cleared
    assert (~got_final).tolist() == [not f for f in final]


def test_trust_clears_neither_persistent_attackers_nor_benign_clients_flagged_from_the_start():
    # Prepare
    g = digits_global_state()
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
    g = digits_global_state()
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
    g = digits_global_state()
    defense = FedGrad(switch_round=0, seed=1, **params)
    for r in range(3):
        agg = defense.aggregate(g, synthetic_round(g, seed=10 + r), r)
        assert {7, 8, 9} <= agg.flagged, (params, r, agg.diagnostics)


def test_reordering_clients_changes_nothing():
    # Prepare
    g = digits_global_state()
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
    g = digits_global_state()
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
    g = digits_global_state()
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
    g = digits_global_state()
    updates = synthetic_round(g, num_benign=k, attackers=())
    defense = FedGrad(switch_round=0)
    for r in range(2):
        agg = defense.aggregate(g, updates, r)
        assert agg.diagnostics["hard_active"] is (k >= 4)
        assert all(torch.isfinite(t).all() for t in agg.global_state.values())


def test_table4_rows_are_expressible():
    g = digits_global_state()
    rounds = [synthetic_round(g, seed=r) for r in range(3)]
    hard_only = FedGrad(use_soft=False, use_trust=False, switch_round=2)
    soft_only = FedGrad(use_hard=False, use_trust=False, switch_round=0)
    for r, updates in enumerate(rounds):
        h, s = hard_only.aggregate(g, updates, r), soft_only.aggregate(g, updates, r)
        assert s.diagnostics["s2"] == [] and not s.diagnostics["hard_active"]
        assert s.diagnostics["s1"] == s.diagnostics["suspicious"]
        assert h.diagnostics["s1"] == []
        assert h.flagged == (frozenset({7, 8, 9}) if r >= 2 else frozenset())


def test_diagnostics_are_json_friendly():
    import json

    g = digits_global_state()
    agg = FedGrad(switch_round=0).aggregate(g, synthetic_round(g), 0)
    text = json.dumps(agg.diagnostics)
    for key in ("s1", "s2", "cleared", "suspicious", "soft_scores", "soft_threshold", "trust",
                "hard_active", "closeness"):
        assert key in json.loads(text)


def test_num_attackers_is_the_fraction_of_the_round_rounded_down():
    # Execute / Assert: int(0.25 x 8) = 2, int(0.3 x 9) = 2; an estimate overrides the fraction
    assert FedGrad(attacker_fraction=0.25).num_attackers(8) == 2
    assert FedGrad(attacker_fraction=0.3).num_attackers(9) == 2
    assert FedGrad(num_attackers_estimate=3).num_attackers(8) == 3


def test_validate_accepts_one_client_and_refuses_none():
    # Execute / Assert
    FedGrad().validate(1)
    with pytest.raises(ValueError, match="^FedGrad needs at least one client per round$"):
        FedGrad().validate(0)


# --------------------------------------------------------------------------- parameters


def test_registered_and_context_filled():
    from fedgrad_core.defenses import available_defenses, build_defense

    assert "fedgrad" in available_defenses()
    d = build_defense("fedgrad", {"switch_round": 5}, {"seed": 3, "attacker_fraction": 0.4,
                                                       "num_classes": 10, "model_factory": None})
    assert (d.seed, d.attacker_fraction, d.switch_round) == (3, 0.4, 5)


@pytest.mark.parametrize(
    "params, names",
    [
        # the message starts with the parameter, names the rule it breaks and ends with the value
        ({"zeta": 1.5}, ("zeta", "[0.0, 1.0]", "1.5")),
        ({"zeta": -0.1}, ("zeta", "[0.0, 1.0]", "-0.1")),
        ({"zeta": math.nan}, ("zeta", "finite number", "nan")),
        ({"gamma": -0.5}, ("gamma", "[0.0, 1.0]", "-0.5")),
        ({"gamma": 1.5}, ("gamma", "[0.0, 1.0]", "1.5")),
        ({"lambda1": 1.5}, ("lambda1", "[0.0, 1.0]", "1.5")),
        ({"lambda2": 1.5}, ("lambda2", "[0.0, 1.0]", "1.5")),
        ({"lambda1": 0.5, "lambda2": 0.5}, ("lambda1", "suspicious client, 0.5", "below lambda2", "clean one, 0.5)")),
        ({"lambda1": 1.0, "lambda2": 0.25}, ("lambda1", "1.0", "below lambda2", "0.25)")),
        ({"switch_round": -1}, ("switch_round", "integer >= 0", "-1")),
        ({"switch_round": 2.5}, ("switch_round", "integer >= 0", "2.5")),
        ({"use_soft": "yes"}, ("use_soft", "True or False", "'yes'")),
        ({"use_hard": 1}, ("use_hard", "True or False", "1")),
        ({"use_trust": None}, ("use_trust", "True or False", "None")),
        ({"use_soft": False, "use_hard": False}, ("use_soft", "use_hard", "both False", "FedGrad would flag nobody")),
        ({"num_attackers_estimate": -1}, ("num_attackers_estimate", "integer >= 0", "-1")),
        ({"attacker_fraction": 1.5}, ("attacker_fraction", "[0.0, 1.0]", "1.5")),
        ({"attacker_fraction": 1.0}, ("attacker_fraction", "below 1", "1.0")),
        ({"strict_factor": 1.5}, ("strict_factor", "(0.0, 1.0]", "1.5")),
        ({"strict_factor": 0}, ("strict_factor", "(0.0, 1.0]", "0")),
        ({"strict_factor": 0.0}, ("strict_factor", "(0.0, 1.0]", "0.0")),
        (
            {"strict_factor": 0.5, "soft_threshold": "largest_gap"},
            ("strict_factor", "median threshold", "cannot be combined with 'largest_gap'"),
        ),
        ({"soft_threshold": "mean"}, ("soft_threshold", "['median', 'largest_gap']", "'mean'")),
        ({"trust_decay": 0.0}, ("trust_decay", "(0.0, 1.0]", "0.0")),
        ({"trust_decay": -0.5}, ("trust_decay", "(0.0, 1.0]", "-0.5")),
        ({"trust_decay": 1.5}, ("trust_decay", "(0.0, 1.0]", "1.5")),
        ({"trust_decay": math.nan}, ("trust_decay", "finite number", "nan")),
        ({"trust_decay": True}, ("trust_decay", "finite number", "True")),
        ({"trust_decay": "0.5"}, ("trust_decay", "finite number", "'0.5'")),
        ({"gradient": "raw"}, ("gradient", "['update', 'authors']", "'raw'")),
        ({"bias": "authors"}, ("bias", "['update', 'raw']", "'authors'")),
        ({"closeness": "krum"}, ("closeness", "['full', 'ultimate']", "'krum'")),
        ({"fallback": "all"}, ("fallback", "['s1', 'none']", "'all'")),
        ({"kmeans_n_init": 0}, ("kmeans_n_init", "integer >= 1", "0")),
        ({"seed": -1}, ("seed", "integer >= 0", "-1")),
        ({"ultimate_layer": ("fc.weight",)}, ("ultimate_layer", "(weight, bias)", "('fc.weight',)")),
        ({"ultimate_layer": "classifier.weight"}, ("ultimate_layer", "(weight, bias)", "'classifier.weight'")),
        ({"model_factory": 3}, ("model_factory", "zero-argument callable", "nn.Module")),
        ({"model_factory": dict}, ("model_factory", "must return an nn.Module", "dict")),
    ],
)
def test_invalid_parameters_are_refused_by_name(params, names):
    # Execute / Assert: the names, in this order, the first at the start and the last at the end
    with pytest.raises(ValueError, match="^" + ".*".join(re.escape(n) for n in names) + "$"):
        FedGrad(**params)


def test_the_registry_builds_fedgrad_with_its_checks_and_refuses_unknown_parameters():
    with pytest.raises(ValueError, match="^zeta must lie in"):
        make_defense("fedgrad", zeta=-0.1)
    with pytest.raises(ValueError, match="no_such_option"):
        make_defense("fedgrad", no_such_option=1)


def test_constructor_defaults_and_boundary_values():
    # Execute
    defense = FedGrad()
    edge = FedGrad(num_attackers_estimate=0, zeta=1.0, gamma=0.0, lambda1=0.0, lambda2=1.0, attacker_fraction=0.0,
                   strict_factor=1.0, trust_decay=1.0, ultimate_layer=["fc.weight", "fc.bias"])
    # Assert: the documented defaults; the closed ends of the ranges are accepted
    assert (defense.zeta, defense.gamma, defense.lambda1, defense.lambda2) == (0.5, 0.75, 0.25, 1.0)
    assert (defense.switch_round, defense.kmeans_n_init, defense.seed) == (50, 10, 0)
    assert (defense.attacker_fraction, defense.strict_factor, defense.num_attackers_estimate) == (0.25, None, None)
    assert (defense.gradient, defense.bias, defense.closeness, defense.fallback) == ("authors", "update", "full", "s1")
    assert defense.use_soft and defense.use_hard and defense.use_trust
    assert defense.ultimate_layer is None and defense.parameter_names is None
    assert defense.soft_threshold == "median" and defense.trust_decay is None  # the paper's rules
    assert edge.num_attackers(8) == 0 and edge.ultimate_layer == ("fc.weight", "fc.bias")
    assert (edge.zeta, edge.gamma, edge.lambda1, edge.strict_factor, edge.trust_decay) == (1.0, 0.0, 0.0, 1.0, 1.0)


def test_parameters_are_stored_as_plain_python_numbers():
    # Prepare: numpy integers and Python ints where reals are expected, as a sweep or a JSON config gives them
    defense = FedGrad(switch_round=np.int64(3), num_attackers_estimate=np.int64(1), attacker_fraction=0,
                      strict_factor=1, kmeans_n_init=np.int64(4), seed=np.int64(7), trust_decay=1, closeness_mad=2)
    ints = ("switch_round", "num_attackers_estimate", "kmeans_n_init", "seed")
    reals = ("attacker_fraction", "strict_factor", "trust_decay", "closeness_mad")
    # Execute
    types = {name: type(getattr(defense, name)) for name in ints + reals}
    # Assert: ints are int and reals float, so the settings go to JSON (a numpy integer would not)
    assert types == {**dict.fromkeys(ints, int), **dict.fromkeys(reals, float)}
    assert (defense.switch_round, defense.seed, defense.strict_factor, defense.closeness_mad) == (3, 7, 1.0, 2.0)
    json.dumps({**dataclasses.asdict(defense.params), **dataclasses.asdict(defense.variant)})


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


def test_the_parameter_classes_default_to_the_defenses_defaults():
    # Execute / Assert: FedGradParams, Variant and the registered class agree on every default
    defense = FedGrad()
    assert FedGradParams() == defense.params and Variant() == defense.variant == PAPER
    # the parameters read as attributes; anything else is an ordinary AttributeError
    assert (defense.zeta, defense.use_hard, defense.trust_decay) == (0.5, True, None)
    with pytest.raises(AttributeError, match="^'FedGrad' object has no attribute 'nope'$"):
        defense.nope  # noqa: B018


def test_an_instance_without_parameters_yet_answers_a_missing_attribute_by_its_name():
    # Prepare: as pickle and copy see the instance, before __init__ or __setstate__ has run
    bare = FedGrad.__new__(FedGrad)
    # Execute / Assert: an ordinary AttributeError for the asked name, not for the absent parameters
    with pytest.raises(AttributeError, match="^'FedGrad' object has no attribute 'zeta'$"):
        bare.zeta  # noqa: B018
