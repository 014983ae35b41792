"""FLAME: HDBSCAN filter on cosine distances, clipping to the median norm, seeded noise."""

import math

import pytest
import torch

from fedgrad_core.defenses import ClientUpdate, make_defense
from fedgrad_core.defenses.base import cosine_similarities, gram64
from fedgrad_core.defenses.flame import flame, majority_cluster, round_generator


def _updates(rows, ids=None):
    ids = list(range(len(rows))) if ids is None else ids
    return [ClientUpdate(i, {"w": torch.tensor(r, dtype=torch.float32)}, 1) for i, r in zip(ids, rows)]


BENIGN = [[float(c), 0.0] for c in (1, 2, 3, 4, 5, 6)]  # one direction, norms 1..6
ATTACK = [[0.0, 10.0]] * 4  # another direction, norm 10


def test_drops_the_minority_cluster_and_clips_to_the_median_norm():
    # Prepare: K = 10, min_cluster_size = 6.  Norms 1..6 and 4 x 10: median (5 + 6) / 2 = 5.5
    global_state = {"w": torch.zeros(2)}
    updates = _updates(BENIGN + ATTACK)
    # Execute (no noise: the result is exact)
    result = flame(global_state, updates, noise_factor=0.0)
    # Assert: attackers flagged; benign 6 clipped to 5.5; plain mean over the 6 admitted
    assert result.flagged == frozenset({6, 7, 8, 9})
    assert result.diagnostics["median_norm"] == pytest.approx(5.5)
    expected = (1 + 2 + 3 + 4 + 5 + 5.5) / 6
    assert result.global_state["w"].tolist() == pytest.approx([expected, 0.0])
    assert result.diagnostics["clip_scale"]["5"] == pytest.approx(5.5 / 6)


def test_noise_has_the_documented_scale_and_is_seeded_by_seed_and_round():
    d = 20000
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(d, generator=gen)
    rows = [base * (1 + 0.01 * i) for i in range(6)]
    global_state = {"w": torch.zeros(d)}
    updates = [ClientUpdate(i, {"w": r}, 1) for i, r in enumerate(rows)]
    quiet = flame(global_state, updates, noise_factor=0.0).global_state["w"]
    noisy = make_defense("flame", seed=3).aggregate(global_state, updates, round_idx=7)
    again = make_defense("flame", seed=3).aggregate(global_state, updates[::-1], round_idx=7)
    other = make_defense("flame", seed=3).aggregate(global_state, updates, round_idx=8)
    sigma = noisy.diagnostics["noise_sigma"]
    assert sigma == pytest.approx(0.001 * noisy.diagnostics["median_norm"])
    assert (noisy.global_state["w"] - quiet).std().item() == pytest.approx(sigma, rel=0.05)
    assert torch.equal(noisy.global_state["w"], again.global_state["w"])
    assert not torch.equal(noisy.global_state["w"], other.global_state["w"])


def test_round_generator_depends_on_seed_and_round_only():
    a = torch.randn(3, generator=round_generator(1, 2))
    assert torch.equal(a, torch.randn(3, generator=round_generator(1, 2)))
    assert not torch.equal(a, torch.randn(3, generator=round_generator(2, 1)))


def test_zero_update_does_not_break_the_clustering():
    rows = BENIGN + [[0.0, 0.0]]
    result = flame({"w": torch.zeros(2)}, _updates(rows), noise_factor=0.0)
    assert 6 in result.flagged
    assert torch.isfinite(result.global_state["w"]).all()


def test_single_client_is_admitted():
    result = flame({"w": torch.zeros(2)}, _updates([[1.0, 2.0]]), noise_factor=0.0)
    assert result.flagged == frozenset()
    assert result.global_state["w"].tolist() == pytest.approx([1.0, 2.0])


@pytest.mark.parametrize("params", [{"noise_factor": -0.001}, {"noise_factor": float("nan")}])
def test_invalid_parameters_raise(params):
    with pytest.raises(ValueError):
        make_defense("flame", **params)


def test_clusters_updates_not_models_and_takes_the_plain_mean():
    """Non-zero global model g = (-3.5, 0), unequal sample counts.

    Updates: benign (c, 0) for c = 1..6, attackers (0, 10) x 4: in update space the benign share
    one direction and the attackers are flagged.  Clustering the *models* g + Delta instead would
    split the benign into (-2.5..-0.5, 0) and (0.5..2.5, 0) (opposite directions) and put the
    attackers' (-3.5, 10) with the first half: it would admit them (checked below).
    Clip bound = median norm of all 10 updates = (5 + 6) / 2 = 5.5; the mean of the admitted
    clipped updates is plain (FLAME's Algorithm 1, G = sum_l W_l / L):
    (1 + 2 + 3 + 4 + 5 + 5.5) / 6 = 3.41667, where a sample-weighted mean with n = 1..6 would
    give (1 + 4 + 9 + 16 + 25 + 6 * 5.5) / 21 = 4.19048.
    """
    # Prepare
    g = torch.tensor([-3.5, 0.0])
    rows = torch.tensor(BENIGN + ATTACK)
    updates = [ClientUpdate(i, {"w": g + r}, n) for i, (r, n) in enumerate(zip(rows, [1, 2, 3, 4, 5, 6, 1, 1, 1, 1]))]
    # Execute
    result = flame({"w": g}, updates, noise_factor=0.0)
    # Assert
    assert result.flagged == frozenset({6, 7, 8, 9})
    assert result.diagnostics["median_norm"] == pytest.approx(5.5)
    assert result.global_state["w"].tolist() == pytest.approx([-3.5 + 20.5 / 6, 0.0], abs=1e-6)
    # the input matters: on the models the attackers would be admitted
    models = rows + g
    on_models = majority_cluster((1.0 - cosine_similarities(gram64(models))).clamp(0.0, 2.0), list(range(10)))
    assert {6, 7, 8, 9} <= set(on_models)


def _ray(theta):
    return [math.cos(theta), math.sin(theta)]


def test_min_cluster_size_is_half_the_round_plus_one():
    """K = 10: five benign updates within 0.04 rad, a sixth benign one at 0.4 rad, four attackers
    at 1.5 rad.  With min_cluster_size = K // 2 + 1 = 6 the cluster must hold the sixth benign
    client; with 5 (K // 2) it would be left out, with 7 the attackers would be admitted.
    """
    # Prepare
    rows = [_ray(0.01 * i) for i in range(5)] + [_ray(0.4)] + [_ray(1.5 + 0.01 * i) for i in range(4)]
    # Execute
    result = flame({"w": torch.zeros(2)}, _updates(rows), noise_factor=0.0)
    # Assert
    assert result.diagnostics["admitted"] == [0, 1, 2, 3, 4, 5]
    assert result.flagged == frozenset({6, 7, 8, 9})


def test_single_client_is_the_no_cluster_fallback_and_is_clipped_to_its_own_norm():
    # Prepare: K = 1, a non-zero global model
    result = flame({"w": torch.tensor([1.0, 1.0])}, _updates([[4.0, 5.0]]), noise_factor=0.0)
    # Assert: admitted through the fallback; the median norm is its own, so nothing is clipped
    assert result.diagnostics["fallback"] == "no cluster"
    assert result.diagnostics["median_norm"] == pytest.approx(5.0)
    assert result.global_state["w"].tolist() == pytest.approx([4.0, 5.0])


def test_round_generator_depends_on_the_seed_within_a_round():
    a = torch.randn(3, generator=round_generator(1, 2))
    assert not torch.equal(a, torch.randn(3, generator=round_generator(2, 2)))
    assert not torch.equal(a, torch.randn(3, generator=round_generator(0, 2)))


def test_class_defaults_to_seed_zero():
    rows = BENIGN + ATTACK
    result = make_defense("flame").aggregate({"w": torch.zeros(2)}, _updates(rows), round_idx=5)
    expected = flame({"w": torch.zeros(2)}, _updates(rows), noise_factor=0.001, generator=round_generator(0, 5))
    assert torch.equal(result.global_state["w"], expected.global_state["w"])


def test_zero_noise_factor_is_allowed_and_the_message_names_the_value():
    result = make_defense("flame", noise_factor=0.0).aggregate({"w": torch.zeros(2)}, _updates(BENIGN), 0)
    assert result.diagnostics["noise_sigma"] == 0.0
    with pytest.raises(ValueError, match=r"^noise_factor must be >= 0, got -0.5$"):
        make_defense("flame", noise_factor=-0.5)


def test_two_clients_form_one_cluster_and_three_drop_the_odd_one():
    # K = 2, min_cluster_size 2: HDBSCAN admits both (no fallback); mean of (1, 0) and (1, 0.1) after
    # clipping each to the median norm (1 + sqrt(1.01)) / 2
    two = flame({"w": torch.zeros(2)}, _updates([[1.0, 0.0], [1.0, 0.1]]), noise_factor=0.0)
    assert two.flagged == frozenset() and "fallback" not in two.diagnostics
    # K = 3, min_cluster_size 2: the update pointing the other way is flagged
    three = flame({"w": torch.zeros(2)}, _updates([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0]]), noise_factor=0.0)
    assert three.flagged == frozenset({2}) and "fallback" not in three.diagnostics
    assert three.diagnostics["admitted"] == [0, 1]


def test_cluster_size_and_single_linkage_decide_the_admitted_set():
    """K = 8: four updates along (-1, 0), two along (0, -1), two along (1, 1).  Cosine distances:
    0 within a direction, 1 between the first two directions, 1 + 1/sqrt(2) to the third.  With
    min_samples = 1 HDBSCAN is single linkage; min_cluster_size = K // 2 + 1 = 5 keeps the six updates
    of the first two directions together (4 alone would be too few); a size of 3 would admit four."""
    rows = [[-1.0, 0.0], [-2.0, 0.0], [0.0, -3.0], [1.0, 1.0], [-2.0, 0.0], [0.0, -3.0], [-1.0, 0.0], [2.0, 2.0]]
    result = flame({"w": torch.zeros(2)}, _updates(rows), noise_factor=0.0)
    assert result.diagnostics["admitted"] == [0, 1, 2, 4, 5, 6]
    assert result.flagged == frozenset({3, 7})


def test_six_scattered_updates_are_one_single_linkage_cluster():
    # K = 6, min_cluster_size 4: every update is within single-linkage reach of the others, so all
    # are admitted (min_samples = 2 or more, a euclidean metric on the rows, or a smaller minimum
    # cluster size would drop some)
    rows = [[1.0, -1.0], [2.0, 4.0], [9.0, 3.0], [1.0, 0.0], [0.0, 2.0], [0.0, -3.0]]
    result = flame({"w": torch.zeros(2)}, _updates(rows), noise_factor=0.0)
    assert result.flagged == frozenset()
    assert "fallback" not in result.diagnostics


def test_noise_is_added_with_the_rounds_generator():
    rows = BENIGN + ATTACK
    quiet = flame({"w": torch.zeros(2)}, _updates(rows), noise_factor=0.0).global_state["w"]
    noisy = flame({"w": torch.zeros(2)}, _updates(rows), generator=round_generator(4, 9))  # default 0.001
    draw = torch.randn(2, generator=round_generator(4, 9), dtype=torch.float32)
    assert noisy.diagnostics["noise_sigma"] == pytest.approx(0.001 * 5.5)
    assert torch.allclose(noisy.global_state["w"], quiet + 0.001 * 5.5 * draw, rtol=0, atol=1e-7)


def test_norms_below_one_are_clipped_to_the_median():
    # norms 0.1 .. 0.6, median (0.3 + 0.4) / 2 = 0.35: 0.4, 0.5 and 0.6 are clipped to 0.35
    rows = [[0.1 * c, 0.0] for c in range(1, 7)]
    result = flame({"w": torch.zeros(2)}, _updates(rows), noise_factor=0.0)
    assert result.diagnostics["median_norm"] == pytest.approx(0.35)
    assert result.global_state["w"][0].item() == pytest.approx((0.1 + 0.2 + 0.3 + 3 * 0.35) / 6)


def test_a_zero_median_norm_keeps_zero_updates_unscaled():
    # two zero updates and one non-zero: median norm 0 clips the non-zero one to 0; the zero
    # updates keep scale 1 (no 0 / 0)
    rows = [[1.0, 1.0], [1.0, 1.0], [4.0, 5.0]]  # updates (0, 0), (0, 0), (3, 4) from g = (1, 1)
    result = make_defense("flame", noise_factor=0.0).aggregate({"w": torch.tensor([1.0, 1.0])}, _updates(rows), 0)
    assert result.diagnostics["clip_scale"] == {"0": 1.0, "1": 1.0, "2": 0.0}
    assert "kept_previous_model" not in result.diagnostics
    assert result.global_state["w"].tolist() == [1.0, 1.0]


def test_function_parameter_checks():
    ups = _updates(BENIGN)
    with pytest.raises(ValueError, match=r"^noise_factor must be >= 0, got -1.0$"):
        flame({"w": torch.zeros(2)}, ups, noise_factor=-1.0)
    with pytest.raises(ValueError, match=r"^FLAME's noise needs a torch.Generator \(seeded from seed and round\)$"):
        flame({"w": torch.zeros(2)}, ups, noise_factor=0.5)
