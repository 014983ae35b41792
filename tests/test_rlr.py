"""RLR: per-coordinate sign agreement decides the sign of the server's learning rate."""

import pytest
import torch

from fedgrad_core.defenses import ClientUpdate, make_defense
from fedgrad_core.defenses.rlr import default_threshold, rlr, robust_lr


def _updates(rows, samples=None):
    samples = samples or [1] * len(rows)
    return [
        ClientUpdate(i, {"w": torch.tensor(r, dtype=torch.float32)}, n)
        for i, (r, n) in enumerate(zip(rows, samples))
    ]


def test_learning_rate_is_reversed_where_signs_do_not_agree():
    # Prepare: K = 4, theta = floor(0.25 * 4) + 1 = 2.  Coordinate 0: four +; coordinate 1: two +
    # and two - (|sum of signs| = 0 < 2).  Global model at (10, 10).
    global_state = {"w": torch.tensor([10.0, 10.0])}
    rows = [[11.0, 12.0], [11.0, 12.0], [11.0, 9.0], [11.0, 9.0]]
    # Execute
    result = make_defense("rlr").aggregate(global_state, _updates(rows), round_idx=0)
    # Assert: mean update (1, 0.5); lr (+1, -1) -> (10 + 1, 10 - 0.5)
    assert result.global_state["w"].tolist() == pytest.approx([11.0, 9.5])
    assert result.diagnostics["threshold"] == 2
    assert result.diagnostics["reversed_fraction"] == pytest.approx(0.5)
    assert result.flagged == frozenset()


@pytest.mark.parametrize("threshold, reversed_", [(1, False), (2, False), (3, True), (4, True)])
def test_threshold_sweep(threshold, reversed_):
    # three + and one -: |sum of signs| = 2
    deltas = torch.tensor([[1.0], [2.0], [3.0], [-1.0]])
    lr = robust_lr(deltas, threshold=threshold, server_lr=1.0)
    assert lr.item() == (-1.0 if reversed_ else 1.0)


def test_mean_update_is_sample_weighted_and_scaled_by_server_lr():
    global_state = {"w": torch.zeros(1)}
    result = rlr(global_state, _updates([[1.0], [4.0]], samples=[3, 1]), server_lr=0.02)
    # both positive: agreement 2 >= theta = floor(0.5) + 1 = 1; mean (3 + 4) / 4 = 1.75
    assert result.global_state["w"].item() == pytest.approx(0.02 * 1.75)


@pytest.mark.parametrize("k, frac, theta", [(10, 0.25, 3), (30, 0.25, 8), (4, 0.0, 1), (10, 0.1, 2)])
def test_default_threshold_is_floor_k_f_plus_one(k, frac, theta):
    assert default_threshold(k, frac) == theta


@pytest.mark.parametrize(
    "params", [{"server_lr": 0.0}, {"server_lr": -1.0}, {"threshold": 0}, {"threshold": 1.5},
               {"attacker_fraction": 1.0}]
)
def test_invalid_parameters_raise(params):
    with pytest.raises(ValueError):
        make_defense("rlr", **params)


def test_validate_rejects_a_threshold_above_k():
    with pytest.raises(ValueError, match="exceeds"):
        make_defense("rlr", threshold=11).validate(10)
    make_defense("rlr", threshold=10).validate(10)


def test_function_rejects_a_threshold_above_k():
    with pytest.raises(ValueError, match="threshold"):
        rlr({"w": torch.zeros(1)}, _updates([[1.0], [2.0]]), threshold=3)
