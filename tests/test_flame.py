"""FLAME: HDBSCAN filter on cosine distances, clipping to the median norm, seeded noise."""

import pytest
import torch

from fedgrad_core.defenses import ClientUpdate, make_defense
from fedgrad_core.defenses.flame import flame, round_generator


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
