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
