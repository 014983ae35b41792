"""RFA: the geometric median by smoothed Weiszfeld."""

import pytest
import torch

from fedgrad_core.defenses import ClientUpdate, make_defense
from fedgrad_core.defenses.base import gram64
from fedgrad_core.defenses.rfa import rfa, weiszfeld_weights


def _updates(points, samples=None):
    samples = samples or [1] * len(points)
    return [
        ClientUpdate(i, {"w": torch.tensor(p, dtype=torch.float32)}, n)
        for i, (p, n) in enumerate(zip(points, samples))
    ]


def test_median_of_a_tight_cluster_and_one_far_outlier_stays_in_the_cluster():
    # Prepare: four points within 0.1 of (1, 1) and one at (100, 100); the mean is near (20.8, 20.8)
    points = [[1.0, 1.1], [1.1, 1.0], [0.9, 1.0], [1.0, 0.9], [100.0, 100.0]]
    global_state = {"w": torch.zeros(2)}
    # Execute
    result = make_defense("rfa").aggregate(global_state, _updates(points), round_idx=0)
    # Assert
    w = result.global_state["w"]
    assert ((w > 0.85) & (w < 1.15)).all(), w
    assert result.flagged == frozenset()
    weights = result.diagnostics["weiszfeld_weights"]
    assert weights["4"] < 0.01 and sum(weights.values()) == pytest.approx(1.0)


def test_one_dimensional_median_is_the_middle_point():
    # the weighted geometric median of {0, 1, 10} with equal weights is 1
    result = rfa({"w": torch.zeros(1)}, _updates([[0.0], [1.0], [10.0]]))
    assert result.global_state["w"].item() == pytest.approx(1.0, abs=1e-3)


def test_sample_weights_move_the_median():
    # weight 3 on 0 and 1 + 1 on 1 and 10: more than half the weight sits on 0
    result = rfa({"w": torch.zeros(1)}, _updates([[0.0], [1.0], [10.0]], samples=[3, 1, 1]))
    assert result.global_state["w"].item() == pytest.approx(0.0, abs=1e-3)


def test_weiszfeld_on_a_gram_matrix_matches_the_direct_objective():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    alphas = torch.full((7,), 1 / 7, dtype=torch.float64)
    beta, iterations, objective = weiszfeld_weights(gram64(x), alphas)
    z = beta @ x
    assert objective == pytest.approx(float((alphas * (x - z).norm(dim=1)).sum()), rel=1e-9)
    assert 1 <= iterations <= 500
    # the median is a stationary point: sum_i alpha_i (x_i - z) / ||x_i - z|| ~ 0
    grad = (alphas[:, None] * (x - z) / (x - z).norm(dim=1, keepdim=True)).sum(0)
    assert grad.norm() < 1e-3  # stopped by the relative objective tolerance 1e-7


@pytest.mark.parametrize(
    "params", [{"max_iter": 0}, {"eps": 0.0}, {"eps": -1e-5}, {"ftol": -1.0}, {"max_iter": 2.5}]
)
def test_invalid_parameters_raise(params):
    with pytest.raises(ValueError):
        make_defense("rfa", **params)
