"""FedGrad tests written from mutmut survivors (issue 8; see tests/MUTATION.md).

Each test names, in its comment, the behaviour a surviving mutant changed.  The rounds use the
tiny model of ``tests/test_fedgrad_rounds.py`` (``body`` 2 x 2 + 2, ultimate layer ``fc`` with 3
classes x 2 features, dyadic values: sums and means are exact in float32).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedgrad_core.defenses import ClientUpdate
from fedgrad_core.defenses.fedgrad import (
    FedGrad,
    clear_trusted,
    closeness_scores,
    cosine_matrix,
    cosine_to,
    find_ultimate_layer,
    hard_filter_split,
    min_max_scale,
    normalize_rows,
    pairwise_sq_distances,
    parameter_keys,
    soft_filter,
    soft_filter_threshold,
)

from test_fedgrad_rounds import E, G, client, pair_block  # the tiny model of that file (see the docstring)


@pytest.fixture
def kmeans_calls(monkeypatch) -> list[dict]:
    """The keyword arguments of every ``sklearn.cluster.KMeans`` built during the test."""
    import sklearn.cluster

    seen: list[dict] = []

    class Recording(sklearn.cluster.KMeans):
        def __init__(self, **kwargs):
            seen.append(kwargs)
            super().__init__(**kwargs)

    monkeypatch.setattr(sklearn.cluster, "KMeans", Recording)
    return seen


# --------------------------------------------------------------------------- saved state


def mixed_round(ids: list[int], r: int) -> list[ClientUpdate]:
    """Clients with different weight and bias changes (both filters have something to score)."""
    out = []
    for j, cid in enumerate(ids):
        w = torch.zeros(3, 2)
        w[(cid + r) % 3, j % 2] = 0.25 * (1 + (cid % 4))
        b = torch.zeros(3)
        b[(cid + 2 * r) % 3] = 0.125 * (1 + j)
        out.append(client(cid, n=1 + cid % 3, fc__weight=w, fc__bias=b))
    return out


# Round 0 meets clients 10-40, round 1 adds client 5: the pair arrays index clients in the order
# first seen (10, 20, 30, 40, 5), not sorted by id.
ROUNDS = [[10, 20, 30, 40], [5, 10, 20, 30], [5, 20, 30, 40]]


def two_rounds(**params) -> FedGrad:
    params.setdefault("switch_round", 1)
    params.setdefault("num_attackers_estimate", 1)
    defense = FedGrad(**params)
    for r in range(2):
        defense.aggregate(G, mixed_round(ROUNDS[r], r), r)
    return defense


def test_state_dict_entries_have_their_dtypes_shapes_and_order():
    # Prepare
    defense = FedGrad(switch_round=1, num_attackers_estimate=1)
    outs = [defense.aggregate(G, mixed_round(ROUNDS[r], r), r) for r in range(2)]
    latest = {**outs[0].diagnostics["soft_scores"], **outs[1].diagnostics["soft_scores"]}
    # Execute
    state = defense.state_dict()
    # Assert: ids ascending for the per-client entries, first-seen order for the pair arrays,
    # trimmed to the 5 clients seen (the arrays' capacity is 16)
    assert state["soft_ids"].dtype == torch.int64 and state["soft_ids"].tolist() == [5, 10, 20, 30, 40]
    assert state["soft_rounds"].dtype == torch.int64 and state["soft_rounds"].tolist() == [1, 2, 2, 2, 1]
    assert state["soft_mean"].dtype == torch.float64
    assert state["soft_mean"].tolist() == [latest[str(c)] for c in (5, 10, 20, 30, 40)]  # the running means
    assert state["trust_ids"].dtype == torch.int64 and state["trust_ids"].tolist() == [5, 10, 20, 30, 40]
    assert state["trust_count"].dtype == torch.int64 and state["trust_count"].tolist() == [2, 3, 3, 3, 2]
    assert state["pair_ids"].tolist() == [10, 20, 30, 40, 5]
    assert defense.history.pair_w.shape == (16, 16)  # the capacity grows to 16 at once
    for key, dtype in (("pair_w", torch.float32), ("pair_b", torch.float32), ("pair_n", torch.int32)):
        assert state[key].dtype == dtype and state[key].shape == (5, 5), key
    np.testing.assert_array_equal(state["pair_n"].numpy()[:4, :4], np.full((4, 4), [[2, 2, 2, 1]] * 3 + [[1, 1, 1, 1]]))
    assert state["pair_n"][4].tolist() == [1, 1, 1, 0, 1]  # client 5 met 10, 20, 30 once, never 40


def test_state_of_a_fresh_defense_round_trips():
    # Prepare: no client seen: every entry is empty (an empty torch.tensor([]) would be float32)
    state = FedGrad().state_dict()
    # Execute
    loaded = FedGrad()
    loaded.load_state_dict(state)
    # Assert
    for key in ("soft_ids", "soft_rounds", "trust_ids", "trust_count", "pair_ids"):
        assert state[key].dtype == torch.int64 and state[key].numel() == 0, key
    assert loaded.state_dict().keys() == state.keys()
    assert loaded.trust_of(3) == 0.5


def test_loaded_state_continues_exactly_like_the_uninterrupted_defense():
    # Prepare: the third round meets clients 5 and 40, which never met (pair count 0)
    straight = two_rounds()
    resumed = FedGrad(switch_round=1, num_attackers_estimate=1)
    resumed.load_state_dict(two_rounds().state_dict())
    updates = mixed_round(ROUNDS[2], 2)
    # Execute
    a = straight.aggregate(G, updates, 2)
    b = resumed.aggregate(G, updates, 2)
    # Assert
    assert a.diagnostics == b.diagnostics and a.flagged == b.flagged
    for key in G:
        assert torch.equal(a.global_state[key], b.global_state[key]), key
    after, want = resumed.state_dict(), straight.state_dict()
    assert list(after) == list(want)
    for key in want:
        if isinstance(want[key], torch.Tensor):
            assert after[key].dtype == want[key].dtype and torch.equal(after[key], want[key]), key
        else:
            assert after[key] == want[key], key
    assert all(isinstance(v[1], int) for v in resumed.history.trust.values())  # round counts stay counts


def test_broken_saved_states_are_refused_with_the_entry_named():
    # Prepare
    good = two_rounds().state_dict()
    repeated = dict(good, pair_ids=torch.tensor([10, 20, 30, 10, 5]))
    not_a_tensor = dict(good, soft_ids=7)
    missing = {k: v for k, v in good.items() if k != "pair_n"}
    # Execute / Assert
    with pytest.raises(ValueError, match="'pair_ids' repeats a client id$"):
        FedGrad().load_state_dict(repeated)
    with pytest.raises(ValueError, match="'soft_ids' should be a torch.int64 tensor"):
        FedGrad().load_state_dict(not_a_tensor)
    with pytest.raises(ValueError, match=r"lacks \['pair_n'\]"):
        FedGrad().load_state_dict(missing)


# --------------------------------------------------------------------------- messages, names


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


def test_validate_accepts_one_client_and_refuses_none():
    # Execute / Assert
    FedGrad().validate(1)
    with pytest.raises(ValueError, match="^FedGrad needs at least one client per round$"):
        FedGrad().validate(0)


# --------------------------------------------------------------------------- plain functions


def test_num_attackers_is_the_fraction_of_the_round_rounded_down():
    # Execute / Assert: int(0.25 x 8) = 2, int(0.3 x 9) = 2; an estimate overrides the fraction
    assert FedGrad(attacker_fraction=0.25).num_attackers(8) == 2
    assert FedGrad(attacker_fraction=0.3).num_attackers(9) == 2
    assert FedGrad(num_attackers_estimate=3).num_attackers(8) == 3


def test_clear_trusted_turns_integer_masks_into_boolean_ones():
    # Prepare: 0/1 lists (not bool arrays); everybody suspicious is cleared, the fallback S1 is
    # client 0.  The results are used with ``~`` (keep = ~final): they must be bool, since ~1 = -2
    suspicious, s1 = [1, 1, 0], [1, 0, 0]
    # Execute
    final, cleared = clear_trusted(suspicious, [0.75, 0.9, 0.1], gamma=0.75, fallback=s1)
    kept, _ = clear_trusted([1, 0, 1], [0.5, 0.9, 0.8], gamma=0.75)
    # Assert
    assert final.dtype == bool and cleared.dtype == bool
    assert final.tolist() == [True, False, False] and cleared.tolist() == [False, True, False]
    assert kept.dtype == bool and (~kept).tolist() == [False, True, True]


def test_closeness_scores_of_two_clients_and_the_error_for_one():
    # Prepare: K = 2: K - f - 2 = 0 neighbours, clipped to 1: each score is the one distance
    rows = torch.tensor([[0.0, 0.5], [1.5, 0.5]])
    # Execute / Assert
    np.testing.assert_array_equal(closeness_scores(rows, 0), [2.25, 2.25])
    with pytest.raises(ValueError, match="^closeness scores need at least two clients$"):
        closeness_scores(rows[:1], 0)


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


def test_closeness_with_one_neighbour_is_the_distance_to_the_nearest_other_client():
    # Prepare: points 0, 1, 3 on a line (squared distances 1, 9, 4); K = 3, f = 1: 1 neighbour
    rows = torch.tensor([[0.0], [1.0], [3.0]])
    # Execute / Assert: float64 NumPy, as the diagnostics need
    scores = closeness_scores(rows, 1)
    assert scores.dtype == np.float64 and scores.tolist() == [1.0, 1.0, 4.0]


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


def test_distances_over_column_runs_add_up_every_run():
    # Prepare: client 1 differs by 1 in run 1, by 2 in run 2 and by 5 in the column left out
    rows = torch.tensor([[0.0, 0.0, 0.0], [1.0, 5.0, 2.0]])
    # Execute
    dists = pairwise_sq_distances(rows, columns=[slice(0, 1), slice(2, 3)])
    # Assert: 1 + 4
    np.testing.assert_array_equal(dists, [[0.0, 5.0], [5.0, 0.0]])


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


def test_bias_pair_history_is_a_running_mean_over_shared_rounds():
    # Prepare: as the weight history test in test_fedgrad_rounds.py, with the bias half:
    #   round 0, ids 0 1 2: biases (1,0,0) (0,1,0) (1,1,0) -> scaled [[1,0,0],[0,1,0],[r,r,1]]
    #   round 1, ids 0 1 3: (1,0,0) (1,1,0) (0,1,0) -> scaled [[1,0,0],[r,1,r],[0,0,1]]
    r = 1 / np.sqrt(2)
    defense = FedGrad(use_soft=False, use_trust=False, switch_round=9, gradient="update")
    rounds = [
        [(0, (1, 0, 0)), (1, (0, 1, 0)), (2, (1, 1, 0))],
        [(0, (1, 0, 0)), (1, (1, 1, 0)), (3, (0, 1, 0))],
    ]
    # Execute
    for t, members in enumerate(rounds):
        updates = [client(cid, fc__bias=0.25 * torch.tensor(v, dtype=torch.float32)) for cid, v in members]
        defense.aggregate(G, updates, t)
    # Assert
    expected = np.array([
        [1.0, 0.0, 0.0, 0.0],
        [r / 2, 1.0, 0.0, r],
        [r, r, 1.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ])
    np.testing.assert_allclose(pair_block(defense, "pair_b", range(4)), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(pair_block(defense, "pair_w", range(4)), np.zeros((4, 4)))


# --------------------------------------------------------------------------- through aggregate


def test_ultimate_layer_is_the_last_two_dimensional_weight_and_errors_name_the_problem():
    # Prepare: a 1-D "post.weight" (a norm layer's scale) after the last linear layer
    with_norm = dict(G, **{"post.weight": torch.ones(3), "post.bias": torch.zeros(3)})
    no_matrix = {"scale.weight": torch.ones(3), "scale.bias": torch.zeros(3)}
    no_bias = {k: v for k, v in G.items() if k != "fc.bias"}
    # Execute / Assert
    assert find_ultimate_layer(with_norm) == ("fc.weight", "fc.bias")
    no_weight = "^no 2-D floating weight in the model's state: cannot find the ultimate layer$"
    with pytest.raises(ValueError, match=no_weight):
        find_ultimate_layer(no_matrix)
    no_bias_message = r"'fc.weight' has no bias 'fc.bias'; name the layer with ultimate_layer=\(weight_key, bias_key\)$"
    with pytest.raises(ValueError, match=no_bias_message):
        find_ultimate_layer(no_bias)


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


def test_everyone_suspicious_says_why_the_previous_model_is_kept():
    # Prepare: two clients, the soft filter with zeta = 0 flags the one with scaled score 1 and,
    # after they swap, both (running means 1/2 > 0)
    defense = FedGrad(zeta=0.0, use_hard=False, use_trust=False)
    defense.aggregate(G, [client(0, fc__weight=3 * E), client(1, fc__weight=-E)], 0)
    # Execute
    out = defense.aggregate(G, [client(0, fc__weight=-E), client(1, fc__weight=3 * E)], 1)
    # Assert
    assert out.flagged == {0, 1}
    assert out.diagnostics["kept_previous_model"] == "every client was suspicious"


def test_the_defense_hands_its_kmeans_n_init_to_kmeans(kmeans_calls):
    # Prepare
    seen = kmeans_calls
    updates = [client(i, fc__bias=torch.tensor([0.25 * (-1) ** i, 0.0, 0.0])) for i in range(4)]
    # Execute
    FedGrad(use_soft=False, use_trust=False, switch_round=0, kmeans_n_init=3, seed=4).aggregate(G, updates, 0)
    # Assert
    assert seen == [{"n_clusters": 2, "n_init": 3, "random_state": 4}]


# --------------------------------------------------------------------------- soft filter details


def test_cosine_to_is_a_cosine_and_zero_for_a_zero_row():
    # Prepare: (3, 4) against (0, 2): 8 / (5 x 2) = 0.8; a zero row has cosine 0
    rows = torch.tensor([[3.0, 4.0], [0.0, 0.0], [-3.0, -4.0]])
    # Execute
    cos = cosine_to(rows, torch.tensor([0.0, 2.0]))
    # Assert
    np.testing.assert_allclose(cos, [0.8, 0.0, -0.8], rtol=1e-15)


def test_a_client_at_the_round_average_scores_zero_before_scaling():
    # Prepare: c = 1, 2, 3 with counts 1, 2, 1 (weights 1/4, 1/2, 1/4, exact): cbar = 2, so
    # client 1 sits exactly at W* (W_i - W* = 0): raw scores -1, 0, +1, scaled 0, 1/2, 1
    updates = [client(i, n, fc__weight=c * E) for i, (c, n) in enumerate(((1.0, 1), (2.0, 2), (3.0, 1)))]
    # Execute
    out = FedGrad(use_hard=False, switch_round=9).aggregate(G, updates, 0)
    # Assert
    assert out.diagnostics["soft_scores"] == {"0": 0.0, "1": 0.5, "2": 1.0}


def test_min_max_scale_of_one_none_and_equal_values():
    # Execute / Assert: nothing to scale gives zeros (float64, also for integer input)
    one, none, equal = min_max_scale([0.7]), min_max_scale([]), min_max_scale([3, 3, 3])
    assert one.tolist() == [0.0] and none.tolist() == []
    assert equal.dtype == np.float64 and equal.tolist() == [0.0, 0.0, 0.0]


def test_soft_threshold_defaults_to_zeta_one_half():
    # Execute / Assert: median 0.9 is capped by the default zeta = 0.5
    assert soft_filter_threshold([0.8, 0.9, 1.0]) == 0.5
    assert soft_filter([0.8, 0.9, 1.0])[0] == 0.5


def test_largest_gap_ignores_a_gap_that_ends_exactly_at_eps1():
    # Prepare: eps1 = min(0.5, median 0.5625) = 0.5.  The widest gap (0.125 -> 0.5) ends at
    # eps1, where nobody is flagged; of the gaps ending above it the widest is 0.625 -> 0.875
    scores = [0.0, 0.125, 0.5, 0.625, 0.875, 1.0]
    # Execute
    threshold, flagged = soft_filter(scores, rule="largest_gap")
    # Assert
    assert threshold == 0.625 and flagged.tolist() == [False] * 4 + [True] * 2


def test_threshold_and_range_errors_say_exactly_what_is_wrong():
    # Execute / Assert: the messages, whole (half-open ranges shown with "(")
    with pytest.raises(ValueError, match="^soft_filter_threshold needs at least one score$"):
        soft_filter_threshold([])
    message = "^strict_factor scales the median threshold; it cannot be combined with 'largest_gap'$"
    with pytest.raises(ValueError, match=message):
        soft_filter_threshold([0.5], strict_factor=0.5, rule="largest_gap")
    with pytest.raises(ValueError, match=r"^strict_factor must lie in \(0.0, 1.0\], got 0$"):
        FedGrad(strict_factor=0)
    with pytest.raises(ValueError, match=r"^zeta must lie in \[0.0, 1.0\], got 1.5$"):
        FedGrad(zeta=1.5)


# --------------------------------------------------------------------------- constructor


@pytest.mark.parametrize(
    "params, message",
    [
        ({"zeta": 1.5}, "zeta must lie in [0.0, 1.0], got 1.5"),
        ({"zeta": float("nan")}, "zeta must be a finite number, got nan"),
        ({"gamma": -0.5}, "gamma must lie in [0.0, 1.0], got -0.5"),
        ({"lambda1": 1.5}, "lambda1 must lie in [0.0, 1.0], got 1.5"),
        ({"lambda2": 1.5}, "lambda2 must lie in [0.0, 1.0], got 1.5"),
        (
            {"lambda1": 0.5, "lambda2": 0.5},
            "lambda1 (instant trust of a suspicious client, 0.5) must be below lambda2 (that of a clean one, 0.5)",
        ),
        ({"switch_round": -1}, "switch_round must be an integer >= 0, got -1"),
        ({"use_soft": "yes"}, "use_soft must be True or False, got 'yes'"),
        ({"use_hard": 1}, "use_hard must be True or False, got 1"),
        ({"use_trust": None}, "use_trust must be True or False, got None"),
        ({"use_soft": False, "use_hard": False}, "use_soft and use_hard are both False: FedGrad would flag nobody"),
        ({"num_attackers_estimate": -1}, "num_attackers_estimate must be an integer >= 0, got -1"),
        ({"attacker_fraction": 1.5}, "attacker_fraction must lie in [0.0, 1.0], got 1.5"),
        ({"attacker_fraction": 1.0}, "attacker_fraction must be below 1, got 1.0"),
        ({"strict_factor": 1.5}, "strict_factor must lie in (0.0, 1.0], got 1.5"),
        (
            {"strict_factor": 0.5, "soft_threshold": "largest_gap"},
            "strict_factor scales the median threshold; it cannot be combined with 'largest_gap'",
        ),
        ({"soft_threshold": "mean"}, "soft_threshold must be one of ['median', 'largest_gap'], got 'mean'"),
        ({"trust_decay": 0.0}, "trust_decay must lie in (0.0, 1.0], got 0.0"),
        ({"gradient": "raw"}, "gradient must be one of ['update', 'authors'], got 'raw'"),
        ({"bias": "authors"}, "bias must be one of ['update', 'raw'], got 'authors'"),
        ({"closeness": "krum"}, "closeness must be one of ['full', 'ultimate'], got 'krum'"),
        ({"fallback": "all"}, "fallback must be one of ['s1', 'none'], got 'all'"),
        ({"kmeans_n_init": 0}, "kmeans_n_init must be an integer >= 1, got 0"),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
        (
            {"ultimate_layer": ("fc.weight",)},
            "ultimate_layer must be a pair of state-dict keys (weight, bias), got ('fc.weight',)",
        ),
        ({"model_factory": 3}, "model_factory must be a zero-argument callable returning an nn.Module"),
        ({"model_factory": dict}, "model_factory must return an nn.Module, got dict"),
    ],
)
def test_each_invalid_parameter_gets_its_whole_message(params, message):
    # Execute
    with pytest.raises(ValueError) as info:
        FedGrad(**params)
    # Assert
    assert str(info.value) == message


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
    assert edge.num_attackers(8) == 0 and edge.ultimate_layer == ("fc.weight", "fc.bias")
    assert (edge.zeta, edge.gamma, edge.lambda1, edge.strict_factor, edge.trust_decay) == (1.0, 0.0, 0.0, 1.0, 1.0)
