"""FoolsGold: sybils with one objective get weight ~0, diverse clients weight 1."""

import math

import numpy as np
import pytest
import torch

from fedgrad_core.defenses import ClientUpdate, make_defense
from fedgrad_core.defenses.foolsgold import clip_rows_, foolsgold, foolsgold_weights


def test_identical_sybils_get_zero_weight_and_diverse_clients_full_weight():
    # Prepare: honest updates along e0, e1, e2 (cosine 0); three sybils along one direction
    history = torch.tensor(
        [[1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1.0], [0, 0, 0, 2.0], [0, 0, 0, 1.0]]
    )
    # Execute
    w = foolsgold_weights(history)
    # Assert: honest alpha = 1 -> 0.99 -> logit + 0.5 > 1 -> 1; sybils alpha 0 -> 0
    assert w.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


#: Histories e0, e0 + e1, e1 + e2 (see the next test): cosines 1/sqrt(2) (0-1), 1/2 (1-2), 0 (0-2).
HAND = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
_A = (1 - 2 ** -0.5) / (1 - 2 ** -0.5 / 2)  # client 0's and 1's alpha after rescaling, 0.45308
PARDONED_WEIGHT = math.log(_A / (1 - _A)) + 0.5  # 0.31177


def test_weights_strictly_between_zero_and_one_by_hand():
    """Algorithm 1 of Fung et al. step by step on three histories.

    v = max_j cs_ij = (0.7071, 0.7071, 0.5).  Pardoning: v_2 = 0.5 < v_1, so
    cs_21 = 0.5 * 0.5 / 0.7071 = 0.35355 (cs_01 is not pardoned: v_0 = v_1).
    alpha = 1 - max_j cs_ij = (0.29289, 0.29289, 0.64645); rescaled by the largest:
    (0.45308, 0.45308, 1 -> 0.99).  Logit + 0.5: ln(0.45308 / 0.54692) + 0.5 = 0.31177 and
    ln(99) + 0.5 = 5.0951 -> clipped to 1.
    """
    # Execute
    w = foolsgold_weights(HAND)
    # Assert
    assert w.tolist() == pytest.approx([PARDONED_WEIGHT, PARDONED_WEIGHT, 1.0], abs=1e-12)
    assert PARDONED_WEIGHT == pytest.approx(0.311774, abs=1e-6)
    # without pardoning alpha would be (0.29289, 0.29289, 0.5) -> 0.58579 -> ln(1.41421) + 0.5
    assert PARDONED_WEIGHT != pytest.approx(math.log(2 ** 0.5) + 0.5, abs=0.1)


def test_kappa_scales_the_logit_and_the_cap_is_0_99():
    # Execute
    small = foolsgold_weights(HAND, kappa=0.1)
    large = foolsgold_weights(HAND, kappa=2.0)
    # Assert: kappa * (logit + 0.5); the rescaled maximum 1 becomes 0.99: 0.1 * (ln 99 + 0.5)
    assert small.tolist() == pytest.approx(
        [0.1 * PARDONED_WEIGHT, 0.1 * PARDONED_WEIGHT, 0.1 * (math.log(99.0) + 0.5)], abs=1e-12
    )
    assert small[2].item() == pytest.approx(0.509512, abs=1e-6)
    assert large.tolist() == pytest.approx([2 * PARDONED_WEIGHT, 2 * PARDONED_WEIGHT, 1.0], abs=1e-12)


def _paper_weights(history, kappa):
    """Algorithm 1 of Fung et al. (2020) with explicit loops over client pairs (numpy)."""
    h = history.numpy().astype(np.float64)
    k = len(h)
    unit = h / np.linalg.norm(h, axis=1, keepdims=True)
    cs = unit @ unit.T
    np.fill_diagonal(cs, 0.0)
    v = cs.max(axis=1)
    for i in range(k):
        for j in range(k):
            if i != j and v[i] < v[j]:
                cs[i, j] *= v[i] / v[j]
    alpha = np.clip(1.0 - cs.max(axis=1), 0.0, 1.0)
    alpha = alpha / alpha.max()
    alpha[alpha == 1.0] = 0.99
    with np.errstate(divide="ignore"):
        alpha = kappa * (np.log(alpha / (1.0 - alpha)) + 0.5)
    return np.clip(alpha, 0.0, 1.0)


@pytest.mark.parametrize("kappa", [1.0, 0.3])
def test_weights_match_the_papers_algorithm_on_a_mixed_round(kappa):
    # Prepare: six random histories in 4 dimensions (this seed gives 4 of 6 weights in (0, 1))
    history = torch.randn(6, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    # Execute
    w = foolsgold_weights(history, kappa=kappa)
    # Assert
    expected = _paper_weights(history, kappa)
    assert w.tolist() == pytest.approx(expected.tolist(), abs=1e-9)
    assert ((expected > 0.01) & (expected < 0.99)).sum() >= 4  # the details matter on this input


def test_near_identical_sybils_get_near_zero_weight_over_rounds():
    gen = torch.Generator().manual_seed(0)
    d = 50
    goal = torch.randn(d, generator=gen)
    honest_dirs = [torch.randn(d, generator=gen) for _ in range(5)]
    defense = make_defense("foolsgold")
    global_state = {"w": torch.zeros(d)}
    for rnd in range(3):
        updates = [
            ClientUpdate(i, {"w": honest_dirs[i] + 0.5 * torch.randn(d, generator=gen)}, 10)
            for i in range(5)
        ] + [
            ClientUpdate(100 + j, {"w": goal + 0.01 * torch.randn(d, generator=gen)}, 10)
            for j in range(3)
        ]
        result = defense.aggregate(global_state, updates, round_idx=rnd)
    weights = result.diagnostics["weights"]
    assert all(weights[str(100 + j)] < 0.05 for j in range(3)), weights
    assert all(weights[str(i)] > 0.9 for i in range(5)), weights
    assert {100, 101, 102} <= result.flagged


def test_aggregate_is_the_weighted_average_of_the_trusted_updates():
    # honest 0 and 1 are orthogonal; sybils 2 and 3 identical -> weights 1, 1, 0, 0
    global_state = {"w": torch.tensor([1.0, 1.0, 1.0])}
    updates = [
        ClientUpdate(0, {"w": torch.tensor([3.0, 1.0, 1.0])}, 1),  # delta (2, 0, 0)
        ClientUpdate(1, {"w": torch.tensor([1.0, 5.0, 1.0])}, 3),  # delta (0, 4, 0)
        ClientUpdate(2, {"w": torch.tensor([1.0, 1.0, 9.0])}, 1),
        ClientUpdate(3, {"w": torch.tensor([1.0, 1.0, 9.0])}, 1),
    ]
    result = make_defense("foolsgold", clip_norm=None).aggregate(global_state, updates, round_idx=0)
    clipped = make_defense("foolsgold").aggregate(global_state, updates, round_idx=0)
    # (1 * (2, 0, 0) + 3 * (0, 4, 0)) / 4 = (0.5, 3, 0)
    assert result.global_state["w"].tolist() == pytest.approx([1.5, 4.0, 1.0])
    assert result.flagged == frozenset({2, 3})
    # clipped to norm 1: (1 * (1, 0, 0) + 3 * (0, 1, 0)) / 4 = (0.25, 0.75, 0)
    assert clipped.global_state["w"].tolist() == pytest.approx([1.25, 1.75, 1.0])
    assert clipped.flagged == frozenset({2, 3})


def test_history_is_kept_per_client_id_across_rounds():
    # Prepare: client 7 sends (1, 0) then (0, 2); client 8 sends (0, 1) once (no clipping here)
    defense = make_defense("foolsgold", clip_norm=None)
    g = {"w": torch.zeros(2)}
    # Execute
    defense.aggregate(g, [ClientUpdate(7, {"w": torch.tensor([1.0, 0.0])}, 1),
                          ClientUpdate(8, {"w": torch.tensor([0.0, 1.0])}, 1)], 0)
    defense.aggregate(g, [ClientUpdate(7, {"w": torch.tensor([0.0, 2.0])}, 1)], 1)
    # Assert
    assert defense.history[7].tolist() == [1.0, 2.0]
    assert defense.history[8].tolist() == [0.0, 1.0]


def test_history_sums_the_updates_clipped_to_norm_one():
    # Prepare: global model (1, 1); client 7 sends deltas (3, 4) (norm 5) then (0, 0.5) (norm 0.5)
    defense = make_defense("foolsgold")  # clip_norm = 1, as the original code
    g = {"w": torch.tensor([1.0, 1.0])}
    # Execute
    first = defense.aggregate(g, [ClientUpdate(7, {"w": torch.tensor([4.0, 5.0])}, 1)], 0)
    defense.aggregate(g, [ClientUpdate(7, {"w": torch.tensor([1.0, 1.5])}, 1)], 1)
    # Assert: (3, 4) / 5 + (0, 0.5) = (0.6, 1.3); a norm below 1 is left alone
    assert defense.history[7].tolist() == pytest.approx([0.6, 1.3])
    assert first.diagnostics["clip_scale"] == {"7": 0.2}  # 1 / 5, in float64


def test_the_round_average_uses_the_clipped_updates():
    # Prepare: the three histories of the hand-checked weights test (weights a, a, 1 with
    # a = 0.31177), sent as first-round updates of norms 0.5 * sqrt(1), 0.5 * sqrt(2) and
    # 2 * sqrt(2) (only the last is clipped, to (0, 1, 1) / sqrt(2)); global model (1, 2, 3)
    g = torch.tensor([1.0, 2.0, 3.0])
    deltas = [torch.tensor([0.5, 0.0, 0.0]), torch.tensor([0.5, 0.5, 0.0]), torch.tensor([0.0, 2.0, 2.0])]
    samples = [1, 2, 3]
    updates = [ClientUpdate(i, {"w": g + d}, n) for i, (d, n) in enumerate(zip(deltas, samples))]
    a = PARDONED_WEIGHT
    # Execute
    clipped = make_defense("foolsgold").aggregate({"w": g}, updates, 0)
    plain = make_defense("foolsgold", clip_norm=None).aggregate({"w": g}, updates, 0)
    # Assert: g + sum_i w_i n_i delta_i / sum_i w_i n_i with the clipped or the raw deltas
    coeffs = torch.tensor([a * 1, a * 2, 1.0 * 3], dtype=torch.float64)
    coeffs = coeffs / coeffs.sum()
    last = deltas[2] / (8 ** 0.5)
    expected_clipped = g + coeffs[0] * deltas[0] + coeffs[1] * deltas[1] + coeffs[2] * last
    expected_plain = g + coeffs[0] * deltas[0] + coeffs[1] * deltas[1] + coeffs[2] * deltas[2]
    assert clipped.global_state["w"].tolist() == pytest.approx(expected_clipped.tolist(), abs=1e-6)
    assert plain.global_state["w"].tolist() == pytest.approx(expected_plain.tolist(), abs=1e-6)
    assert clipped.diagnostics["weights"] == {"0": pytest.approx(a), "1": pytest.approx(a), "2": 1.0}
    assert clipped.flagged == plain.flagged == frozenset()


def test_ultimate_layer_features_keep_only_the_last_linear_layer():
    from fedgrad_core.models import make_model

    factory = lambda: make_model("digits_mlp", in_channels=1, num_classes=10, seed=0)  # noqa: E731
    defense = make_defense("foolsgold", features="ultimate", model_factory=factory)
    state = factory().state_dict()
    updates = [ClientUpdate(i, {k: v + 0.01 * (i + 1) for k, v in state.items()}, 1) for i in range(3)]
    defense.aggregate(state, updates, 0)
    assert defense.history[0].numel() == 64 * 10 + 10
    assert defense.features == "ultimate"


@pytest.mark.parametrize("params, message", [
    ({"kappa": 0.0}, "kappa"), ({"kappa": -1.0}, "kappa"), ({"features": "some"}, "features"),
    ({"features": "ultimate"}, "^features='ultimate' needs model_factory"), ({"clip_norm": 0.0}, "clip_norm"),
    ({"clip_norm": -1.0}, "clip_norm"), ({"clip_norm": float("nan")}, "clip_norm"),
])
def test_invalid_parameters_raise(params, message):
    with pytest.raises(ValueError, match=message):
        make_defense("foolsgold", **params)


def test_function_errors_name_the_problem():
    with pytest.raises(ValueError, match="kappa"):
        foolsgold_weights(HAND, kappa=0.0)
    g = {"w": torch.zeros(3)}
    updates = [ClientUpdate(i, {"w": HAND[i]}, 1) for i in range(3)]
    with pytest.raises(ValueError, match="history has 2 rows for 3 updates"):
        foolsgold(g, updates, HAND[:2])


def test_a_history_of_another_size_is_refused():
    defense = make_defense("foolsgold")
    defense.history[7] = torch.zeros(5)
    with pytest.raises(ValueError, match="client 7: history has 5 entries, update has 2"):
        defense.aggregate({"w": torch.zeros(2)}, [ClientUpdate(7, {"w": torch.ones(2)}, 1)], 0)


def test_the_diagonal_counts_as_zero_so_an_obtuse_client_keeps_weight_one():
    """i = (-1, -1), j = (1, 0), k = (0, 1): cos_ij = cos_ik = -0.7071, cos_jk = 0.  The diagonal
    counts as 0 in v_i = max_j cs_ij (the original code subtracts the identity), so v = (0, 0, 0):
    nobody is pardoned, alpha = (1, 1, 1) -> 0.99 -> weight 1 for all.  (Leaving the diagonal out
    would give v_i = -0.7071, alpha_i = 1.7071 and, rescaled, j and k 1 / 1.7071 = 0.586 -> 0.85.)
    Because v >= 0, alpha = 1 - max cs <= 1 always.
    """
    history = torch.tensor([[-1.0, -1.0], [1.0, 0.0], [0.0, 1.0]])
    assert foolsgold_weights(history).tolist() == [1.0, 1.0, 1.0]
    obtuse = torch.tensor([[1.0, 0.0], [-0.5, 0.866], [-0.6, -0.8]])  # every cosine negative
    assert foolsgold_weights(obtuse).tolist() == pytest.approx(_paper_weights(obtuse, 1.0).tolist())


def test_identical_histories_give_zero_weights_and_keep_the_previous_model():
    # Prepare: three clients with the same update (1, 2) around the global model (1, 1)
    g = {"w": torch.tensor([1.0, 1.0])}
    updates = [ClientUpdate(i, {"w": torch.tensor([2.0, 3.0])}, i + 1) for i in range(3)]
    history = torch.tensor([[1.0, 2.0]] * 3)
    # Execute
    w = foolsgold_weights(history)
    result = foolsgold(g, updates, history)  # the function itself: no NaN guard around it
    # Assert
    assert w.dtype == torch.float64 and w.tolist() == [0.0, 0.0, 0.0]
    assert result.global_state["w"].tolist() == [1.0, 1.0]
    assert result.flagged == frozenset({0, 1, 2})
    assert result.diagnostics["kept_previous_model"] == "every FoolsGold weight is 0"


def test_kappa_reaches_the_weights_through_the_function_and_the_class():
    g = torch.zeros(3)
    updates = [ClientUpdate(i, {"w": 0.5 * HAND[i]}, 1) for i in range(3)]
    via_function = foolsgold({"w": g}, updates, HAND, kappa=0.1)
    via_class = make_defense("foolsgold", kappa=0.1).aggregate({"w": g}, updates, 0)
    expected = {"0": pytest.approx(0.1 * PARDONED_WEIGHT), "1": pytest.approx(0.1 * PARDONED_WEIGHT),
                "2": pytest.approx(0.1 * (math.log(99.0) + 0.5))}
    assert via_function.diagnostics["weights"] == expected
    assert via_class.diagnostics["weights"] == expected


def test_clip_rows_scales_only_rows_above_the_bound():
    # Prepare: K = 3 rows in d = 2: norms 5, 0.5 and 0
    rows = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    # Execute
    scales = clip_rows_(rows, 1.0)
    # Assert
    assert scales.tolist() == [0.2, 1.0, 1.0]
    assert rows.flatten().tolist() == pytest.approx([0.6, 0.8, 0.3, 0.4, 0.0, 0.0])
    assert clip_rows_(rows, None).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="clip_norm"):
        clip_rows_(rows, 0.0)


def test_function_weights_the_round_with_default_kappa_and_clips_when_asked():
    # Prepare: HAND as this round's histories and updates, global model (1, 1, 1), n = (1, 1, 2)
    g = torch.ones(3)
    deltas = [torch.tensor([2.0, 0.0, 0.0]), torch.tensor([1.0, 1.0, 0.0]), torch.tensor([0.0, 1.0, 1.0])]
    updates = [ClientUpdate(i, {"w": g + d}, n) for i, (d, n) in enumerate(zip(deltas, [1, 1, 2]))]
    history = torch.stack(deltas)
    a = PARDONED_WEIGHT
    # Execute
    raw = foolsgold({"w": g}, updates, history)
    clipped = foolsgold({"w": g}, updates, history, clip_norm=1.0)
    # Assert: coefficients (a, a, 2) / (2a + 2) (kappa = 1); clipping scales the first two
    # updates by 1/2 and 1/sqrt(2), the third by 1/sqrt(2)
    c = torch.tensor([a, a, 2.0]) / (2 * a + 2)
    expected_raw = g + c[0] * deltas[0] + c[1] * deltas[1] + c[2] * deltas[2]
    expected_clipped = g + c[0] * deltas[0] / 2 + (c[1] * deltas[1] + c[2] * deltas[2]) / 2 ** 0.5
    assert raw.global_state["w"].tolist() == pytest.approx(expected_raw.tolist(), abs=1e-6)
    assert clipped.global_state["w"].tolist() == pytest.approx(expected_clipped.tolist(), abs=1e-6)


# --------------------------------------------------------------------------- from mutmut survivors (clip_norm re-run)


def test_pardoning_never_raises_a_similarity_towards_a_less_similar_client():
    # Prepare: histories h0..h3 with norms sqrt(5), 2, sqrt(14), sqrt(14).  Cosines: c01 = 1/sqrt(5),
    # c02 = 5/sqrt(70), c03 = 4/sqrt(70), c12 = -2/(2 sqrt(14)), c13 = -4/(2 sqrt(14)), c23 = 9/14.
    # v = (5/sqrt(70), 1/sqrt(5), 9/14, 9/14).  Client 0's similarities are pardoned only towards
    # clients with a larger v (2 and 3), never towards client 1 (v1 < v0): its largest becomes
    # c02 v0 / v2 = 5/9 (not c01 v0 / v1 = v0), so alpha0 = 4/9.  alpha1 = 1 - c01 v1 / v0 =
    # 1 - sqrt(70)/25, alpha2 = alpha3 = 1 - 9/14 (c23 between equal v: not pardoned)
    history = torch.tensor([[-1.0, 0.0, -2.0], [-2.0, 0.0, 0.0], [1.0, -2.0, -3.0], [2.0, 1.0, -3.0]],
                           dtype=torch.float64)
    alpha = np.array([4 / 9, 1 - math.sqrt(70) / 25, 5 / 14, 5 / 14]) / (1 - math.sqrt(70) / 25)
    alpha[alpha >= 1] = 0.99
    expected = np.clip(np.log(alpha / (1 - alpha)) + 0.5, 0.0, 1.0)
    # Execute
    weights = foolsgold_weights(history)
    # Assert: client 0 keeps weight 1 (logit(0.668) + 0.5 > 1); pardoning towards client 1 would give 0.925
    assert expected[0] == 1.0 and 0 < expected[2] < 1
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-12)


def test_weights_are_reported_in_ascending_client_id_whatever_the_arrival_order():
    # Prepare: three clients arriving as 9, 2, 5
    g = {"w": torch.zeros(2)}
    updates = [ClientUpdate(9, {"w": torch.tensor([0.5, 0.0])}, 1), ClientUpdate(2, {"w": torch.tensor([0.0, 0.5])}, 3),
               ClientUpdate(5, {"w": torch.tensor([0.25, 0.25])}, 2)]
    # Execute
    out = make_defense("foolsgold").aggregate(g, updates, 0)
    again = make_defense("foolsgold").aggregate(g, updates[::-1], 0)
    # Assert
    assert list(out.diagnostics["weights"]) == ["2", "5", "9"]
    assert out.diagnostics == again.diagnostics and torch.equal(out.global_state["w"], again.global_state["w"])


def test_clip_norms_are_taken_in_float64():
    # Prepare: |(1, 2^-12)|^2 = 1 + 2^-24, which float32 rounds to 1: only a float64 norm sees
    # that the row is (just) above the bound 1
    rows = torch.tensor([[1.0, 2.0**-12]])
    # Execute
    scales = clip_rows_(rows, 1.0)
    # Assert
    assert scales.tolist() == [1.0 / math.sqrt(1.0 + 2.0**-24)]


def two_rounds_of_history(**params):
    defense = make_defense("foolsgold", **params)
    g = {"w": torch.zeros(2)}
    defense.aggregate(g, [ClientUpdate(7, {"w": torch.tensor([0.5, 0.0])}, 1),
                          ClientUpdate(8, {"w": torch.tensor([0.0, 0.5])}, 1)], 0)
    defense.aggregate(g, [ClientUpdate(3, {"w": torch.tensor([0.25, 0.5])}, 1),
                          ClientUpdate(7, {"w": torch.tensor([0.0, 0.25])}, 1)], 1)
    return defense, g


def test_saved_history_has_ascending_ids_float32_rows_and_the_settings():
    # Prepare
    defense, _ = two_rounds_of_history()
    # Execute
    state = defense.state_dict()
    empty = make_defense("foolsgold").state_dict()
    # Assert
    assert (state["defense"], state["version"], state["features"], state["clip_norm"]) == ("foolsgold", 2, "all", 1.0)
    assert state["client_ids"].dtype == torch.int64 and state["client_ids"].tolist() == [3, 7, 8]
    assert state["history"].dtype == torch.float32
    assert state["history"].tolist() == [[0.25, 0.5], [0.5, 0.25], [0.0, 0.5]]
    assert empty["client_ids"].dtype == torch.int64 and empty["client_ids"].numel() == 0
    assert empty["history"].dtype == torch.float32 and empty["history"].shape == (0, 0)
    state["history"][0, 0] = 9.0  # a copy: the defense's history is not changed
    assert defense.history[3].tolist() == [0.25, 0.5]


def test_loaded_history_continues_like_the_uninterrupted_defense():
    # Prepare
    straight, g = two_rounds_of_history()
    resumed = make_defense("foolsgold")
    resumed.load_state_dict(two_rounds_of_history()[0].state_dict())
    make_defense("foolsgold").load_state_dict(make_defense("foolsgold").state_dict())  # empty round trip
    updates = [ClientUpdate(8, {"w": torch.tensor([0.25, 0.0])}, 2),
               ClientUpdate(3, {"w": torch.tensor([0.0, 0.5])}, 1)]
    # Execute
    a, b = straight.aggregate(g, updates, 2), resumed.aggregate(g, updates, 2)
    # Assert
    assert a.diagnostics == b.diagnostics and torch.equal(a.global_state["w"], b.global_state["w"])
    assert sorted(resumed.history) == [3, 7, 8]
    assert all(torch.equal(resumed.history[c], straight.history[c]) for c in (3, 7, 8))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"features": "ultimate"}, "defense 'foolsgold': the saved history is over features='ultimate', "
                                   "this run uses features='all'"),
        ({"clip_norm": None}, "defense 'foolsgold': the saved history is over clip_norm=None, "
                              "this run uses clip_norm=1.0"),
        ({"client_ids": torch.tensor([3, 7, 3])},
         "defense 'foolsgold': saved state entry 'client_ids' repeats a client id"),
        ({"history": torch.zeros((3, 2), dtype=torch.float64)},
         "defense 'foolsgold': saved state entry 'history' should be a torch.float32 tensor of shape (3, '*'), "
         "found a torch.float64 tensor of shape (3, 2)"),
        ({"client_ids": [3, 7, 8]},
         "defense 'foolsgold': saved state entry 'client_ids' should be a torch.int64 tensor of shape ('*',), "
         "found a list"),
    ],
)
def test_a_saved_history_that_does_not_fit_is_refused_by_name(change, message):
    # Prepare
    state = dict(two_rounds_of_history()[0].state_dict(), **change)
    # Execute
    with pytest.raises(ValueError) as info:
        make_defense("foolsgold").load_state_dict(state)
    # Assert
    assert str(info.value) == message


def test_a_saved_history_without_an_entry_is_refused():
    state = two_rounds_of_history()[0].state_dict()
    del state["history"]
    with pytest.raises(ValueError, match=r"lacks \['history'\]$"):
        make_defense("foolsgold").load_state_dict(state)


def test_the_function_reports_weights_by_ascending_id_and_keeps_the_rows_paired():
    # Prepare: rows given in the order 9, 2, 5 (the class sorts first; the function must too).
    # Clients 9 and 5 have parallel histories (weight 0), client 2 is orthogonal to them (weight 1)
    g = {"w": torch.zeros(2)}
    updates = [ClientUpdate(9, {"w": torch.tensor([0.5, 0.0])}, 1), ClientUpdate(2, {"w": torch.tensor([0.0, 0.5])}, 1),
               ClientUpdate(5, {"w": torch.tensor([0.25, 0.0])}, 1)]
    history = torch.tensor([[0.5, 0.0], [0.0, 0.5], [0.25, 0.0]])
    # Execute
    out = foolsgold(g, updates, history)
    # Assert: only client 2's update is averaged in
    assert list(out.diagnostics["weights"]) == ["2", "5", "9"]
    assert out.diagnostics["weights"] == {"2": 1.0, "5": 0.0, "9": 0.0}
    assert out.global_state["w"].tolist() == [0.0, 0.5]
