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
    "params, message",
    [({"max_iter": 0}, "max_iter"), ({"eps": 0.0}, "eps"), ({"eps": -1e-5}, "eps"),
     ({"ftol": -1.0}, "ftol"), ({"max_iter": 2.5}, "max_iter")],
)
def test_invalid_parameters_raise(params, message):
    with pytest.raises(ValueError, match=message):
        make_defense("rfa", **params)


def test_zero_tolerance_is_allowed_and_stops_on_an_unchanged_objective():
    # Prepare: three identical points: the objective is 0 from the start and never changes
    x = torch.ones(3, 2, dtype=torch.float64)
    # Execute
    beta, iterations, objective = weiszfeld_weights(gram64(x), torch.ones(3), ftol=0.0)
    # Assert: |0 - 0| <= 0 * 0 stops after one iteration (a strict "<" would run 500)
    assert iterations == 1 and objective == 0.0
    assert beta.tolist() == pytest.approx([1 / 3] * 3)
    make_defense("rfa", ftol=0.0)  # a valid setting


def test_stopping_rule_is_relative_so_scaling_the_points_changes_nothing():
    # Prepare: seven random points (nobody on the estimate: the floor eps plays no part)
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    alphas = torch.arange(1.0, 8.0, dtype=torch.float32)  # any float dtype, normalised inside
    # Execute
    runs = [weiszfeld_weights(gram64(s * x), alphas) for s in (1e-2, 1.0, 1e2)]
    # Assert: same weights and iteration count at every scale
    assert len({it for _, it, _ in runs}) == 1
    for beta, _, _ in runs[1:]:
        assert beta.tolist() == pytest.approx(runs[0][0].tolist(), rel=1e-6)
    assert runs[2][2] == pytest.approx(1e4 * runs[0][2], rel=1e-9)


def test_the_class_passes_its_settings_to_the_rule():
    # Prepare: the one-step case of test_smoothing_floor_when_a_client_sits_on_the_estimate
    updates = _updates([[5.0], [6.0], [8.0]], samples=[2, 2, 1])
    global_state = {"w": torch.tensor([5.0])}
    # Execute
    one_step = make_defense("rfa", max_iter=1, eps=0.1).aggregate(global_state, updates, 0)
    loose = make_defense("rfa", ftol=0.5).aggregate(global_state, updates, 0)
    loose_function = rfa(global_state, updates, ftol=0.5)
    # Assert
    assert one_step.global_state["w"].item() == pytest.approx(6.0 - 0.02 / 0.45, abs=1e-6)
    assert one_step.diagnostics["iterations"] == 1
    # a relative change of 1.25e-6 is below ftol = 0.5: stop after the first iteration
    assert loose.diagnostics["iterations"] == loose_function.diagnostics["iterations"] == 1


def test_smoothing_floor_when_a_client_sits_on_the_estimate():
    """Points 0, 1, 3 with weights 2, 2, 1: the weighted mean, where Weiszfeld starts, is exactly
    client 1 (distance 0), so only the floor eps keeps beta finite.  With eps = 0.1 and one
    iteration: beta ~ (0.4 / 1, 0.4 / max(0.1, 0), 0.2 / 3 - 1) = (0.4, 4, 0.1), so
    z = (0.4 * 0 + 4 * 1 + 0.1 * 3) / 4.5 = 1 - 0.2 * 0.1 / 0.45 = 0.955556.  The models sit at
    the non-zero global model (5) plus those offsets (the median is shift-invariant).
    """
    # Prepare
    updates = _updates([[5.0], [6.0], [8.0]], samples=[2, 2, 1])
    global_state = {"w": torch.tensor([5.0])}
    # Execute
    one_step = rfa(global_state, updates, max_iter=1, eps=0.1)
    default = rfa(global_state, updates)
    # Assert
    assert one_step.global_state["w"].item() == pytest.approx(5.0 + 1.0 - 0.02 / 0.45, abs=1e-6)
    assert one_step.diagnostics["iterations"] == 1
    z = 1.0 - 0.02 / 0.45  # objective 0.4 |z| + 0.4 |1 - z| + 0.2 |3 - z| at the offset z
    assert one_step.diagnostics["objective"] == pytest.approx(0.4 * z + 0.4 * (1 - z) + 0.2 * (3 - z))
    assert one_step.diagnostics["weiszfeld_weights"] == {
        "0": pytest.approx(0.4 / 4.5), "1": pytest.approx(4.0 / 4.5), "2": pytest.approx(0.1 / 4.5)
    }
    # the default floor 1e-5 moves z by 0.2 * 1e-5 / 0.4 = 5e-6 from the weighted median 6
    assert default.global_state["w"].item() == pytest.approx(6.0, abs=1e-5)
    assert torch.isfinite(default.global_state["w"]).all()


def test_weiszfeld_stops_when_the_relative_decrease_is_below_ftol():
    # Prepare: the same three points as offsets.  Iteration 1 moves z from 1 to
    # 1 - 0.2 eps / (0.4 + 0.5 eps) ~ 1 - 5e-6 (objective up by 0.2 * 5e-6: relative 1.25e-6 >
    # ftol); client 1 is still closer than eps, so iteration 2 barely moves z (relative change of
    # the objective ~1e-11 < ftol = 1e-7) and the loop stops
    x = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    alphas = torch.tensor([2.0, 2.0, 1.0], dtype=torch.float64)
    # Execute
    beta, iterations, objective = weiszfeld_weights(gram64(x), alphas)
    z = float(beta @ x[:, 0])
    # Assert: objective = 0.4 |z| + 0.4 |1 - z| + 0.2 |3 - z|
    assert z == pytest.approx(1.0 - 0.2e-5 / 0.4, abs=1e-9)
    assert objective == pytest.approx(0.4 * z + 0.4 * (1 - z) + 0.2 * (3 - z), rel=1e-12)
    assert iterations == 2


def test_defaults_are_the_authors_settings():
    # at most 500 iterations, smoothing eps 1e-5, relative tolerance 1e-7 (module docstring)
    defense = make_defense("rfa")
    assert (defense.max_iter, defense.eps, defense.ftol) == (500, 1e-5, 1e-7)
