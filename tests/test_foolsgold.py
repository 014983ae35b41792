"""FoolsGold: sybils with one objective get weight ~0, diverse clients weight 1."""

import pytest
import torch

from fedgrad_core.defenses import ClientUpdate, make_defense
from fedgrad_core.defenses.foolsgold import foolsgold_weights


def test_identical_sybils_get_zero_weight_and_diverse_clients_full_weight():
    # Prepare: honest updates along e0, e1, e2 (cosine 0); three sybils along one direction
    history = torch.tensor(
        [[1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1.0], [0, 0, 0, 2.0], [0, 0, 0, 1.0]]
    )
    # Execute
    w = foolsgold_weights(history)
    # Assert: honest alpha = 1 -> 0.99 -> logit + 0.5 > 1 -> 1; sybils alpha 0 -> 0
    assert w.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


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
    result = make_defense("foolsgold").aggregate(global_state, updates, round_idx=0)
    # (1 * (2, 0, 0) + 3 * (0, 4, 0)) / 4 = (0.5, 3, 0)
    assert result.global_state["w"].tolist() == pytest.approx([1.5, 4.0, 1.0])
    assert result.flagged == frozenset({2, 3})


def test_history_is_kept_per_client_id_across_rounds():
    defense = make_defense("foolsgold")
    g = {"w": torch.zeros(2)}
    defense.aggregate(g, [ClientUpdate(7, {"w": torch.tensor([1.0, 0.0])}, 1),
                          ClientUpdate(8, {"w": torch.tensor([0.0, 1.0])}, 1)], 0)
    defense.aggregate(g, [ClientUpdate(7, {"w": torch.tensor([0.0, 2.0])}, 1)], 1)
    assert defense.history[7].tolist() == [1.0, 2.0]
    assert defense.history[8].tolist() == [0.0, 1.0]


def test_ultimate_layer_features_keep_only_the_last_linear_layer():
    from fedgrad_core.models import make_model

    factory = lambda: make_model("digits_mlp", in_channels=1, num_classes=10, seed=0)  # noqa: E731
    defense = make_defense("foolsgold", features="ultimate", model_factory=factory)
    state = factory().state_dict()
    updates = [ClientUpdate(i, {k: v + 0.01 * (i + 1) for k, v in state.items()}, 1) for i in range(3)]
    defense.aggregate(state, updates, 0)
    assert defense.history[0].numel() == 64 * 10 + 10


@pytest.mark.parametrize("params", [{"kappa": 0.0}, {"kappa": -1.0}, {"features": "some"},
                                    {"features": "ultimate"}])
def test_invalid_parameters_raise(params):
    with pytest.raises(ValueError):
        make_defense("foolsgold", **params)
