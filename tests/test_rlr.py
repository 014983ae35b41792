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


def test_function_defaults_to_server_lr_one_and_reports_it():
    # Prepare: global model 2, updates +1 and +3 with samples 1 and 3 -> weighted mean (1 + 9) / 4
    global_state = {"w": torch.tensor([2.0])}
    # Execute
    result = rlr(global_state, _updates([[3.0], [5.0]], samples=[1, 3]))
    # Assert: g + 1.0 * 2.5
    assert result.global_state["w"].item() == pytest.approx(4.5)
    assert result.diagnostics["server_lr"] == 1.0


@pytest.mark.parametrize("server_lr, rows, fraction", [
    (0.02, [[1.0], [2.0]], 0.0),  # all agree: a positive lr below 1 is not a reversal
    (1.0, [[1.0], [-2.0]], 1.0),  # one coordinate, reversed: the share is 1 / 1
])
def test_reversed_fraction_counts_negative_learning_rates(server_lr, rows, fraction):
    result = rlr({"w": torch.zeros(1)}, _updates(rows), threshold=2, server_lr=server_lr)
    assert result.diagnostics["reversed_fraction"] == fraction
    assert result.diagnostics["server_lr"] == server_lr


@pytest.mark.parametrize("frac", [1.0, 1.5, -0.1])
def test_default_threshold_rejects_a_fraction_outside_0_1(frac):
    with pytest.raises(ValueError, match=rf"^attacker_fraction must be in \[0, 1\), got {frac}$"):
        default_threshold(10, frac)


def test_zero_attacker_fraction_is_allowed_and_gives_threshold_one():
    defense = make_defense("rlr", attacker_fraction=0.0)
    defense.validate(4)
    result = defense.aggregate({"w": torch.zeros(1)}, _updates([[1.0], [-1.0], [2.0]]), round_idx=0)
    assert result.diagnostics["threshold"] == 1


def test_validate_with_the_default_threshold_and_message():
    make_defense("rlr").validate(10)  # theta = 3 <= 10
    with pytest.raises(ValueError, match="^RLR's threshold 5 exceeds the 4 clients per round: every coordinate "
                       "would be reversed$"):
        make_defense("rlr", threshold=5).validate(4)


def test_class_passes_its_threshold_and_server_lr():
    # Prepare: K = 4, attacker_fraction 0.5 -> theta = 3 (the function's default would be 2);
    # coordinate signs + + + - -> agreement 2 < 3 -> reversed.  Mean update (1+1+1-1)/4 = 0.5.
    global_state = {"w": torch.tensor([1.0])}
    rows = [[2.0], [2.0], [2.0], [0.0]]
    # Execute
    result = make_defense("rlr", attacker_fraction=0.5, server_lr=0.5).aggregate(global_state, _updates(rows), 0)
    # Assert: 1 - 0.5 * 0.5
    assert result.diagnostics["threshold"] == 3
    assert result.global_state["w"].item() == pytest.approx(0.75)
    assert "threshold_clamped_from" not in result.diagnostics


@pytest.mark.parametrize("threshold, clamped", [(3, None), (4, 4)])
def test_threshold_is_clamped_when_non_finite_updates_leave_fewer_than_theta(threshold, clamped):
    # 4 clients, one sends NaN -> K = 3 finite updates, all agreeing
    rows = [[1.0], [2.0], [3.0], [float("nan")]]
    result = make_defense("rlr", threshold=threshold).aggregate({"w": torch.zeros(1)}, _updates(rows), 0)
    assert result.diagnostics["threshold"] == 3
    assert result.diagnostics.get("threshold_clamped_from") == clamped
    assert result.global_state["w"].item() == pytest.approx(2.0)


def test_robust_lr_defaults_to_one_and_keeps_the_dtype():
    deltas = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    lr = robust_lr(deltas, threshold=2)
    assert lr.dtype == torch.float64
    assert lr.tolist() == [1.0, -1.0]


def test_robust_lr_error_messages():
    deltas = torch.ones(2, 1)
    with pytest.raises(ValueError, match=r"^RLR's threshold must be in \[1, K = 2\], got 3 \(a threshold above K "
                       r"would reverse every coordinate\)$"):
        robust_lr(deltas, threshold=3)
    with pytest.raises(ValueError, match=r"^server_lr must be > 0, got 0.0$"):
        robust_lr(deltas, threshold=1, server_lr=0.0)


def test_class_error_messages_and_threshold_one():
    with pytest.raises(ValueError, match=r"^attacker_fraction must be in \[0, 1\), got 1.0$"):
        make_defense("rlr", attacker_fraction=1.0)
    with pytest.raises(ValueError, match=r"^threshold must be an integer >= 1, got 0$"):
        make_defense("rlr", threshold=0)
    with pytest.raises(ValueError, match=r"^server_lr must be > 0, got -1.0$"):
        make_defense("rlr", server_lr=-1.0)
    assert make_defense("rlr", threshold=1).threshold == 1
