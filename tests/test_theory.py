"""Proposition 1 on real models, Theorem 1's bound and the expectations it is compared with."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedgrad_core.models import make_model
from fedgrad_core.theory import (
    expected_rounds_all_clients,
    expected_rounds_bound,
    proposition1_sign_pattern,
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
