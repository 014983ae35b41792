"""Krum and Multi-Krum on 1-D points whose scores can be checked by hand."""

import pytest
import torch

from fedgrad_core.defenses import ClientUpdate, make_defense
from fedgrad_core.defenses.krum import krum, krum_scores, krum_select


def _round(values, ids, samples):
    global_state = {"w": torch.zeros(1)}
    updates = [
        ClientUpdate(i, {"w": torch.tensor([float(v)])}, n) for v, i, n in zip(values, ids, samples)
    ]
    return global_state, updates


def test_scores_are_sums_of_squared_distances_to_the_n_minus_f_minus_2_nearest():
    # Prepare: points 0, 1, 2, 3, 20; n = 5, f = 1 -> 2 nearest neighbours
    deltas = torch.tensor([[0.0], [1.0], [2.0], [3.0], [20.0]])
    # Execute
    scores = krum_scores(deltas, f=1)
    # Assert: 0 -> 1 + 4, 1 -> 1 + 1, 2 -> 1 + 1, 3 -> 1 + 4, 20 -> 17^2 + 18^2
    assert scores.tolist() == [5.0, 2.0, 2.0, 5.0, 613.0]


def test_krum_picks_the_lowest_score_and_breaks_ties_by_client_id():
    # points 1 and 2 tie (score 2); the client holding 2 has the lower id (3)
    global_state, updates = _round([0, 1, 2, 3, 20], ids=[10, 11, 3, 12, 13], samples=[1] * 5)
    result = krum(global_state, updates, attacker_fraction=0.25)
    assert result.global_state["w"].item() == 2.0
    assert result.flagged == frozenset({10, 11, 12, 13})
    assert result.diagnostics["f"] == 1 and result.diagnostics["selected"] == [3]


def test_krum_class_returns_the_chosen_clients_exact_model():
    global_state, updates = _round([0, 1, 2.5, 3, 20], ids=range(5), samples=[1] * 5)
    result = make_defense("krum").aggregate(global_state, updates, round_idx=0)
    assert torch.equal(result.global_state["w"], torch.tensor([2.5]))


def test_multikrum_averages_the_m_best_weighted_by_samples():
    # m = n - f = 4 best: 0, 1, 2, 3 (the outlier 20 is dropped); weights 1, 2, 3, 4
    global_state, updates = _round([0, 1, 2, 3, 20], ids=range(5), samples=[1, 2, 3, 4, 100])
    result = make_defense("multikrum").aggregate(global_state, updates, round_idx=0)
    assert result.global_state["w"].item() == pytest.approx((0 + 2 + 6 + 12) / 10)
    assert result.flagged == frozenset({4})


def test_multikrum_with_explicit_m():
    global_state, updates = _round([0, 1, 2, 3, 20], ids=range(5), samples=[1] * 5)
    result = make_defense("multikrum", m=2).aggregate(global_state, updates, round_idx=0)
    assert result.global_state["w"].item() == pytest.approx(1.5)
    assert result.flagged == frozenset({0, 3, 4})


@pytest.mark.parametrize(
    "n, f, ok", [(4, 1, False), (5, 1, True), (6, 2, False), (7, 2, True), (3, 0, True)]
)
def test_validate_requires_n_greater_than_2f_plus_2(n, f, ok):
    defense = make_defense("krum", f=f)
    if ok:
        defense.validate(n)
    else:
        with pytest.raises(ValueError, match="n > 2f"):
            defense.validate(n)


@pytest.mark.parametrize("k, ok", [(4, False), (5, True), (10, True), (30, True)])
def test_validate_with_the_default_attacker_fraction(k, ok):
    for name in ("krum", "multikrum"):
        if ok:
            make_defense(name, attacker_fraction=0.25).validate(k)
        else:
            with pytest.raises(ValueError, match="n > 2f"):
                make_defense(name, attacker_fraction=0.25).validate(k)


def test_function_raises_when_the_assumption_breaks():
    global_state, updates = _round([0, 1, 2, 3], ids=range(4), samples=[1] * 4)
    with pytest.raises(ValueError, match="n > 2f"):
        krum(global_state, updates, f=1)


@pytest.mark.parametrize(
    "params", [{"f": -1}, {"attacker_fraction": 1.5}, {"attacker_fraction": -0.1}]
)
def test_invalid_parameters_raise(params):
    with pytest.raises(ValueError):
        make_defense("krum", **params)


def test_krum_rejects_m_and_multikrum_rejects_m_zero():
    with pytest.raises(ValueError):
        make_defense("krum", m=2)
    with pytest.raises(ValueError):
        make_defense("multikrum", m=0)


def test_f_shrinks_when_non_finite_updates_leave_too_few():
    # 5 clients planned with f = 1; one sends NaN -> 4 finite, f shrinks to 0
    global_state, updates = _round([0, 1, 2, 3, float("nan")], ids=range(5), samples=[1] * 5)
    result = make_defense("krum", f=1).aggregate(global_state, updates, round_idx=0)
    assert result.diagnostics["f_reduced_to"] == 0
    assert 4 in result.flagged
    assert torch.isfinite(result.global_state["w"]).all()


def test_two_finite_updates_keep_the_previous_global_model():
    # Prepare: three clients, one sends NaN -> 2 finite updates, too few for any Krum score
    global_state = {"w": torch.tensor([5.0])}
    updates = [
        ClientUpdate(0, {"w": torch.tensor([1.0])}, 1),
        ClientUpdate(1, {"w": torch.tensor([2.0])}, 1),
        ClientUpdate(2, {"w": torch.tensor([float("nan")])}, 1),
    ]
    # Execute
    result = make_defense("krum", f=0).aggregate(global_state, updates, round_idx=0)
    # Assert: the global model unchanged (a copy), only the NaN client flagged
    assert result.global_state["w"].tolist() == [5.0]
    assert result.global_state["w"] is not global_state["w"]
    assert result.flagged == frozenset({2})
    assert result.diagnostics["kept_previous_model"] == "Krum needs at least 3 finite updates, got 2"


def test_three_finite_updates_with_f_zero_run_krum():
    # n = 3, f = 0: one neighbour each; points 0, 1, 5 -> scores 1, 1, 16; tie 0/1 -> lower id 0
    global_state, updates = _round([0, 1, 5], ids=range(3), samples=[1] * 3)
    result = make_defense("krum", f=0).aggregate(global_state, updates, round_idx=0)
    assert result.global_state["w"].item() == 0.0
    assert result.diagnostics["selected"] == [0]
    assert "kept_previous_model" not in result.diagnostics


def test_class_uses_its_explicit_f_not_the_attacker_fraction():
    # n = 5 with f = 0 (attacker_fraction 0.25 would give f = 1): 3 nearest neighbours.
    # Points 0, 1, 2, 3, 20: scores 1+4+9=14, 1+1+4=6, 1+1+4=6, 1+4+9=14, 17^2+18^2+19^2=974
    global_state, updates = _round([0, 1, 2, 3, 20], ids=range(5), samples=[1] * 5)
    result = make_defense("krum", f=0).aggregate(global_state, updates, round_idx=0)
    assert result.diagnostics["f"] == 0
    assert result.diagnostics["scores"]["0"] == 14.0
    assert result.diagnostics["scores"]["4"] == 974.0


@pytest.mark.parametrize("n, f, f_used", [(5, 1, 1), (7, 2, 2), (6, 2, 1), (8, 3, 2)])
def test_f_shrinks_only_when_n_is_at_most_2f_plus_2(n, f, f_used):
    # the largest admissible f for n finite updates is (n - 3) // 2
    global_state, updates = _round(range(n), ids=range(n), samples=[1] * n)
    result = make_defense("multikrum", f=f).aggregate(global_state, updates, round_idx=0)
    assert result.diagnostics["f"] == f_used
    if f_used == f:
        assert "f_reduced_to" not in result.diagnostics
    else:
        assert result.diagnostics["f_reduced_to"] == f_used


def test_function_defaults_to_attacker_fraction_one_quarter():
    # n = 5 and no f: f = int(0.25 * 5) = 1 -> 2 nearest neighbours, as in the first test
    global_state, updates = _round([0, 1, 2, 3, 20], ids=range(5), samples=[1] * 5)
    result = krum(global_state, updates)
    assert result.diagnostics["f"] == 1
    assert result.diagnostics["scores"]["4"] == 613.0


def test_a_tie_among_many_clients_goes_to_the_lowest_id():
    # Prepare: 17 identical models (every score 0), given in reverse id order; 17 is enough for an
    # unstable sort to reorder ties
    global_state, updates = _round([1.0] * 17, ids=range(16, -1, -1), samples=[1] * 17)
    # Execute
    result = make_defense("krum", f=1).aggregate(global_state, updates, round_idx=0)
    # Assert
    assert result.diagnostics["selected"] == [0]
    assert result.flagged == frozenset(range(1, 17))


def test_multikrum_may_select_every_client():
    # m = n = 5: the sample-weighted mean of all five, (0 + 1 + 2 + 3 + 20 * 4) / 8
    global_state, updates = _round([0, 1, 2, 3, 20], ids=range(5), samples=[1, 1, 1, 1, 4])
    result = make_defense("multikrum", m=5).aggregate(global_state, updates, round_idx=0)
    assert result.global_state["w"].item() == pytest.approx(86 / 8)
    assert result.flagged == frozenset()


def test_krum_select_rejects_m_outside_1_n():
    with pytest.raises(ValueError, match=r"^Multi-Krum's m must be in \[1, n = 5\], got 6$"):
        krum_select(torch.zeros(5, 1), range(5), f=1, m=6)


def test_krum_keeps_the_global_models_integer_buffers():
    # Prepare: an integer buffer (like BatchNorm's num_batches_tracked) that differs per client
    global_state = {"w": torch.tensor([0.5]), "count": torch.tensor(7)}
    updates = [
        ClientUpdate(i, {"w": torch.tensor([float(v)]), "count": torch.tensor(100 + i)}, 1)
        for i, v in enumerate([0, 1, 2, 3, 20])
    ]
    # Execute
    result = make_defense("krum").aggregate(global_state, updates, round_idx=0)
    # Assert: the float weights are the chosen client's (id 1: scores tie with id 2), the buffer the global's
    assert result.global_state["w"].item() == 1.0
    assert result.global_state["count"].item() == 7
    assert result.diagnostics["m"] == 1


def test_krum_function_checks_the_attacker_fraction():
    global_state, updates = _round([0, 1, 5], ids=range(3), samples=[1] * 3)
    assert krum(global_state, updates, attacker_fraction=0.0).diagnostics["f"] == 0
    for frac in (1.0, 1.5):
        with pytest.raises(ValueError, match=rf"^attacker_fraction must be in \[0, 1\), got {frac}$"):
            krum(global_state, updates, attacker_fraction=frac)
    with pytest.raises(ValueError, match=r"^f must be >= 0, got -1$"):
        krum(global_state, updates, f=-1)


def test_assumption_message_counts_the_neighbours():
    with pytest.raises(ValueError, match=r"^Krum needs n > 2f \+ 2 clients per round; got n = 4, f = 1 "
                       r"\(n - f - 2 = 1 neighbours are too few for the scores to be robust\)$"):
        krum_scores(torch.zeros(4, 1), f=1)


def test_class_parameter_checks_and_messages():
    assert make_defense("krum", attacker_fraction=0.0).attacker_fraction == 0.0
    assert make_defense("multikrum", m=1).m == 1
    make_defense("multikrum", m=5).validate(5)  # m = n is allowed
    cases = [
        ("krum", {"attacker_fraction": 1.0}, r"^attacker_fraction must be in \[0, 1\), got 1.0$"),
        ("krum", {"f": -1}, r"^f must be >= 0, got -1$"),
        ("multikrum", {"m": 0}, r"^m must be >= 1, got 0$"),
        ("krum", {"m": 2}, r"^defense 'krum' has no parameter\(s\) \['m'\]"),
    ]
    for name, params, message in cases:
        with pytest.raises(ValueError, match=message):
            make_defense(name, **params)
    with pytest.raises(ValueError, match=r"^m = 6 exceeds the 5 clients per round$"):
        make_defense("multikrum", m=6).validate(5)
