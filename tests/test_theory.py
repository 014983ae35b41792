"""Proposition 1 on real models, Theorem 1's bound and the expectations it is compared with."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedgrad_core.models import make_model
from fedgrad_core.theory import (
    expected_rounds_all_clients,
    expected_rounds_bound,
    proposition1_sign_pattern,
    simulate_rounds_until_connected,
    simulate_rounds_until_covered,
)


def sample(shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("label", [0, 3, 9])
@pytest.mark.parametrize("seed", [0, 1])
def test_proposition1_on_digits_mlp(label, seed):
    # Prepare: a real model with a ReLU penultimate layer (R >= 0, some R_c = 0)
    model = make_model("digits_mlp", in_channels=1, num_classes=10, seed=seed)
    x = sample((1, 1, 8, 8), seed + 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # Execute
    result = proposition1_sign_pattern(model, x, label, lr=0.1)
    # Assert
    assert (result.representation >= 0).all() and (result.representation == 0).any()
    assert result.target_bias_increases and result.other_biases_decrease
    assert result.target_row_follows_sign_of_r and result.other_rows_oppose_sign_of_r
    assert result.zero_representation_unchanged and result.holds
    assert result.max_error < 1e-12  # the closed form lr (y - p) R^T, lr (y - p)
    assert result.delta_b[label] == pytest.approx(0.1 * (1 - result.probabilities[label].item()))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched


def test_proposition1_with_signed_representation():
    # Prepare: no ReLU before the last layer, so R has both signs: row j follows sign(R_c),
    # the other rows the opposite sign
    torch.manual_seed(0)  # only for nn.Linear's init inside this test
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    x = torch.tensor([[0.5, -1.0, 2.0, 0.3, -0.7]])
    # Execute
    result = proposition1_sign_pattern(model, x, 2, lr=0.5)
    # Assert
    assert (result.representation > 0).any() and (result.representation < 0).any()
    assert result.holds
    signs = torch.sign(result.delta_w)
    assert torch.equal(signs[2], torch.sign(result.representation))
    assert torch.equal(signs[0], -torch.sign(result.representation))


def test_proposition1_named_layer_and_errors():
    model = make_model("digits_mlp", in_channels=1, num_classes=10, seed=0)
    x = sample((1, 1, 8, 8), 0)
    named = proposition1_sign_pattern(model, x, 4, ultimate_layer=("classifier.weight", "classifier.bias"))
    assert named.holds
    with pytest.raises(ValueError, match="label"):
        proposition1_sign_pattern(model, x, 10)
    with pytest.raises(ValueError, match="lr"):
        proposition1_sign_pattern(model, x, 1, lr=0.0)
    with pytest.raises(ValueError, match="nn.Linear"):  # features.2 is the ReLU
        proposition1_sign_pattern(model, x, 1, ultimate_layer=("features.2.weight", "features.2.bias"))
    with pytest.raises(ValueError, match="no layer"):
        proposition1_sign_pattern(model, x, 1, ultimate_layer=("head.weight", "head.bias"))


@pytest.mark.parametrize(
    "n, k, expected",
    [
        (5, 5, 1.0),  # everybody every round: the sum is empty
        (3, 2, 1 + 3 / (3 - 1)),  # i = 2: C(3,2) / (C(3,2) - C(2,2)) = 3 / 2
        (4, 2, 1 + 6 / 5 + 6 / 3),  # i = 2, 3: 6 / (6 - 1) + 6 / (6 - 3)
    ],
)
def test_theorem1_bound_by_hand(n, k, expected):
    assert expected_rounds_bound(n, k) == pytest.approx(expected)


def test_theorem1_bound_dominates_the_all_clients_expectation():
    # Figure 10's numbers (n = 100: about 25 rounds at K = 20, 50 at K = 10) are those of the
    # event "every client joined once"; the bound holds above them
    assert expected_rounds_all_clients(100, 20) == pytest.approx(23.85, abs=0.01)
    assert expected_rounds_all_clients(100, 10) == pytest.approx(49.94, abs=0.01)
    for n, k in [(10, 3), (50, 10), (100, 20)]:
        assert expected_rounds_bound(n, k) >= expected_rounds_all_clients(n, k)
    mc = simulate_rounds_until_covered(20, 5, pairs=False, repetitions=400, seed=0)
    assert mc == pytest.approx(expected_rounds_all_clients(20, 5), rel=0.08)
    # pairs take far longer than clients
    assert simulate_rounds_until_covered(20, 5, pairs=True, repetitions=50, seed=0) > 2 * mc


@pytest.mark.parametrize("n, k", [(3, 1), (3, 4), (2.0, 2), (True, 1)])
def test_theorem1_rejects_bad_sizes(n, k):
    with pytest.raises(ValueError):
        expected_rounds_bound(n, k)


def test_expected_rounds_all_clients_small_case():
    # n = 2, k = 1: coupon collector with two coupons, 1 + 2 = 3 rounds
    assert expected_rounds_all_clients(2, 1) == pytest.approx(3.0)
    assert math.isclose(expected_rounds_all_clients(7, 7), 1.0)


def test_connected_lies_between_every_client_joined_and_every_pair_met():
    # one repetition with the same seed draws the same rounds for all three events
    for seed in range(20):
        clients = simulate_rounds_until_covered(12, 3, pairs=False, repetitions=1, seed=seed)
        connected = simulate_rounds_until_connected(12, 3, repetitions=1, seed=seed)
        pairs = simulate_rounds_until_covered(12, 3, pairs=True, repetitions=1, seed=seed)
        assert clients <= connected <= pairs
    assert simulate_rounds_until_connected(9, 9, repetitions=5, seed=0) == 1.0


def test_connected_small_case_by_hand():
    # n = 3, K = 2: the first round joins one pair; every later round brings a new pair (and so
    # connects the graph) with probability 2/3: 1 + 3/2 = 2.5 rounds on average
    assert simulate_rounds_until_connected(3, 2, repetitions=4000, seed=0) == pytest.approx(2.5, abs=0.06)


def test_connected_at_n100_is_under_theorem1_bound_and_near_the_papers_numbers():
    # the transitive reading of Theorem 1: the graph of clients who have met is connected after
    # about 24 rounds at K = 20 and 50 at K = 10 (the paper: "roughly 25", "about 50"), under the
    # bound 90.3 / 116.8, and close to every client having joined (23.9 / 49.9)
    for k, expected, bound in [(20, 24.0, 90.3), (10, 50.0, 116.8)]:
        mean = simulate_rounds_until_connected(100, k, repetitions=60, seed=0)
        assert mean == pytest.approx(expected, abs=2.5)
        assert mean < expected_rounds_bound(100, k) == pytest.approx(bound, abs=0.05)
        assert mean >= expected_rounds_all_clients(100, k) - 2.0


@pytest.mark.parametrize("n, k, reps", [(3, 1, 1), (3, 4, 1), (3.0, 2, 1), (5, 2, 0)])
def test_connected_rejects_bad_sizes(n, k, reps):
    with pytest.raises(ValueError):
        simulate_rounds_until_connected(n, k, repetitions=reps)


# --------------------------------------------------------------------------- many steps on one class


def _one_class_inputs(count, seed):
    return torch.rand(count, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_one_class_training_keeps_proposition1_signs(momentum):
    # Prepare: a ReLU penultimate layer, 45 samples of class 3, several SGD steps, no weight decay
    from fedgrad_core.theory import one_class_change
    from fedgrad_core.training import LocalTraining

    model = make_model("digits_mlp", in_channels=1, num_classes=10, seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = LocalTraining(lr=0.05, epochs=2, batch_size=16, momentum=momentum, weight_decay=0.0)
    # Execute
    change = one_class_change(model, _one_class_inputs(45, 0), 3, settings, seed=1)
    # Assert: 3 batches x 2 epochs; row 3 and bias 3 grow, every other row and bias shrinks
    assert change.steps == 6 and change.nonnegative_representation
    assert change.agreement_w == 1.0 and change.agreement_b == 1.0
    assert change.delta_b[3] > 0 and (torch.cat([change.delta_b[:3], change.delta_b[4:]]) < 0).all()
    assert (change.delta_w[3] >= 0).all() and (change.delta_w[3] > 0).any()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched


def test_weight_decay_can_break_the_sign_pattern():
    # Prepare: weight decay pulls every weight towards 0, also those of units no sample activates
    from fedgrad_core.theory import one_class_change
    from fedgrad_core.training import LocalTraining

    model = make_model("digits_mlp", in_channels=1, num_classes=10, seed=2)
    settings = LocalTraining(lr=0.05, epochs=2, batch_size=16, momentum=0.0, weight_decay=0.5)
    # Execute
    change = one_class_change(model, _one_class_inputs(45, 0), 3, settings, seed=1)
    # Assert: some entries now move against Proposition 1's sign, but not most of them
    assert 0.5 < change.agreement_w < 1.0


def test_one_class_change_errors():
    from fedgrad_core.theory import one_class_change
    from fedgrad_core.training import LocalTraining

    model = make_model("digits_mlp", in_channels=1, num_classes=10, seed=0)
    settings = LocalTraining(lr=0.05, epochs=1, batch_size=8)
    with pytest.raises(ValueError, match="label 10"):
        one_class_change(model, _one_class_inputs(4, 0), 10, settings)
    with pytest.raises(ValueError, match="at least one sample"):
        one_class_change(model, _one_class_inputs(0, 0), 1, settings)


# --------------------------------------------------------------------------- a real round, recorded


@pytest.mark.slow
def test_capture_round_is_the_uninterrupted_runs_round():
    # Prepare: a small digits run under attack with FedGrad (history from round 1)
    from fedgrad_core import ExperimentConfig, run_experiment
    from fedgrad_core.theory import capture_round

    config = ExperimentConfig(
        dataset="digits", num_clients=8, clients_per_round=4, rounds=3, local_epochs=1, attack="blackbox",
        defense="fedgrad", defense_params={"switch_round": 2}, pretrain_epochs=1, seed=3, device="cpu",
    )
    # Execute
    capture = capture_round(config, 3)
    plain = run_experiment(config, progress=False).history[-1]
    # Assert: the same round as an uninterrupted run, and the layers the server saw
    drop = {"aggregation_seconds"}
    assert {k: v for k, v in capture.record.items() if k not in drop} == {
        k: v for k, v in plain.items() if k not in drop
    }
    assert list(capture.client_ids) == plain["selected"] and list(capture.attackers) == plain["attackers"]
    assert capture.w_clients.shape == (4, 10, 64) and capture.b_clients.shape == (4, 10)
    assert capture.w_prev.shape == (10, 64) and len(capture.num_samples) == 4
    assert "load_digits" in capture.data_source
    assert capture.is_attacker.tolist() == [c in plain["attackers"] for c in plain["selected"]]
    assert not np.allclose(capture.w_clients[0], capture.w_prev)  # local training moved the layer
    with pytest.raises(ValueError, match="round_idx"):
        capture_round(config, 4)


def test_round_capture_by_class_sums_by_hand():
    # Prepare: two clients, 2 classes x 2 features, unequal sample counts (1 and 3)
    from fedgrad_core.theory import RoundCapture

    w_prev = np.array([[1.0, 1.0], [0.0, 0.0]])
    capture = RoundCapture(
        round_idx=1, client_ids=(0, 1), attackers=(1,), num_samples=(1, 3),
        w_prev=w_prev, b_prev=np.array([0.5, 0.5]),
        w_clients=np.array([[[2.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 4.0]]]),
        b_clients=np.array([[0.5, 1.5], [1.5, 0.5]]), record={}, data_source="hand",
    )
    # Execute
    mu_w, mu_b = capture.by_class_sums("update")
    av_w, av_b = capture.by_class_sums("authors")
    # Assert: own change: row sums (1, 0) and (0, 4), biases (0, 1) and (1, 0), normalised
    np.testing.assert_allclose(mu_w, [[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(mu_b, [[0.0, 1.0], [1.0, 0.0]])
    # average W* = (1 x W_0 + 3 x W_1) / 4: row sums (2.25, 3.0); client 0: (0.75, -3), client 1: (-0.25, 1)
    np.testing.assert_allclose(av_w[0], np.array([0.75, -3.0]) / np.hypot(0.75, 3.0))
    np.testing.assert_allclose(av_w[1], np.array([-0.25, 1.0]) / np.hypot(0.25, 1.0))
    # b* = (1.25, 0.75): client 0: (-0.75, 0.75), client 1: (0.25, -0.25)
    np.testing.assert_allclose(av_b, [[-2**-0.5, 2**-0.5], [2**-0.5, -2**-0.5]])
    assert capture.is_attacker.tolist() == [False, True]
    with pytest.raises(ValueError, match="change"):
        capture.by_class_sums("paper")
