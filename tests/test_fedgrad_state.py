"""FedGrad's history as data: ``state_dict()`` entries, loading them back, refusing broken ones,
and a loaded defense continuing exactly like the uninterrupted one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import G, client, digits_global_state, synthetic_round
from fedgrad_core.defenses import ClientUpdate
from fedgrad_core.defenses.fedgrad import FedGrad
from fedgrad_core.defenses.fedgrad_state import FedGradHistory


def mixed_round(ids: list[int], r: int) -> list[ClientUpdate]:
    """Clients with different weight and bias changes (both filters have something to score)."""
    out = []
    for j, cid in enumerate(ids):
        w = torch.zeros(3, 2)
        w[(cid + r) % 3, j % 2] = 0.25 * (1 + (cid % 4))
        b = torch.zeros(3)
        b[(cid + 2 * r) % 3] = 0.125 * (1 + j)
        out.append(client(cid, n=1 + cid % 3, fc__weight=w, fc__bias=b))
    return out


# Round 0 meets clients 10-40, round 1 adds client 5: the pair arrays index clients in the order
# first seen (10, 20, 30, 40, 5), not sorted by id.
ROUNDS = [[10, 20, 30, 40], [5, 10, 20, 30], [5, 20, 30, 40]]



def two_rounds(**params) -> FedGrad:
    params.setdefault("switch_round", 1)
    params.setdefault("num_attackers_estimate", 1)
    defense = FedGrad(**params)
    for r in range(2):
        defense.aggregate(G, mixed_round(ROUNDS[r], r), r)
    return defense



def test_state_dict_entries_have_their_dtypes_shapes_and_order():
    # Prepare
    defense = FedGrad(switch_round=1, num_attackers_estimate=1)
    outs = [defense.aggregate(G, mixed_round(ROUNDS[r], r), r) for r in range(2)]
    latest = {**outs[0].diagnostics["soft_scores"], **outs[1].diagnostics["soft_scores"]}
    # Execute
    state = defense.state_dict()
    # Assert: ids ascending for the per-client entries, first-seen order for the pair arrays,
    # trimmed to the 5 clients seen (the arrays' capacity is 16)
    assert state["soft_ids"].dtype == torch.int64 and state["soft_ids"].tolist() == [5, 10, 20, 30, 40]
    assert state["soft_rounds"].dtype == torch.int64 and state["soft_rounds"].tolist() == [1, 2, 2, 2, 1]
    assert state["soft_mean"].dtype == torch.float64
    assert state["soft_mean"].tolist() == [latest[str(c)] for c in (5, 10, 20, 30, 40)]  # the running means
    assert state["trust_ids"].dtype == torch.int64 and state["trust_ids"].tolist() == [5, 10, 20, 30, 40]
    assert state["trust_count"].dtype == torch.int64 and state["trust_count"].tolist() == [2, 3, 3, 3, 2]
    assert state["pair_ids"].tolist() == [10, 20, 30, 40, 5]
    assert defense.history.pair_w.shape == (16, 16)  # the capacity grows to 16 at once
    for key, dtype in (("pair_w", torch.float32), ("pair_b", torch.float32), ("pair_n", torch.int32)):
        assert state[key].dtype == dtype and state[key].shape == (5, 5), key
    np.testing.assert_array_equal(state["pair_n"].numpy()[:4, :4], np.full((4, 4), [[2, 2, 2, 1]] * 3 + [[1, 1, 1, 1]]))
    assert state["pair_n"][4].tolist() == [1, 1, 1, 0, 1]  # client 5 met 10, 20, 30 once, never 40



def test_state_of_a_fresh_defense_round_trips():
    # Prepare: no client seen: every entry is empty (an empty torch.tensor([]) would be float32)
    state = FedGrad().state_dict()
    # Execute
    loaded = FedGrad()
    loaded.load_state_dict(state)
    # Assert
    for key in ("soft_ids", "soft_rounds", "trust_ids", "trust_count", "pair_ids"):
        assert state[key].dtype == torch.int64 and state[key].numel() == 0, key
    assert loaded.state_dict().keys() == state.keys()
    assert loaded.trust_of(3) == 0.5



def tiny_rounds():
    """(defense parameters, global state, rounds): two rounds of the tiny model, then a third that
    meets clients 5 and 40, which never met (pair count 0)."""
    return {"switch_round": 1, "num_attackers_estimate": 1}, G, [mixed_round(ROUNDS[r], r) for r in range(3)]


def digits_rounds():
    """The same on the digits model: two rounds, then two more (the hard filter and trust act)."""
    g = digits_global_state()
    return {"switch_round": 1}, g, [synthetic_round(g, seed=r) for r in range(4)]


@pytest.mark.parametrize("scenario", [tiny_rounds, digits_rounds], ids=["tiny", "digits"])
def test_loaded_state_continues_exactly_like_the_uninterrupted_defense(scenario):
    # Prepare: both play two rounds; one goes on, the other is rebuilt from its state_dict()
    params, g, rounds = scenario()
    straight, saved = FedGrad(**params), FedGrad(**params)
    for r in range(2):
        straight.aggregate(g, rounds[r], r)
        saved.aggregate(g, rounds[r], r)
    resumed = FedGrad(**params)
    resumed.load_state_dict(saved.state_dict())
    # Execute / Assert: the same rounds give the same decisions, models and history
    for r in range(2, len(rounds)):
        a, b = straight.aggregate(g, rounds[r], r), resumed.aggregate(g, rounds[r], r)
        assert a.diagnostics == b.diagnostics and a.flagged == b.flagged
        for key in g:
            assert torch.equal(a.global_state[key], b.global_state[key]), key
    after, want = resumed.state_dict(), straight.state_dict()
    assert list(after) == list(want)
    for key in want:
        if isinstance(want[key], torch.Tensor):
            assert after[key].dtype == want[key].dtype and torch.equal(after[key], want[key]), key
        else:
            assert after[key] == want[key], key
    assert all(isinstance(v[1], int) for v in resumed.history.trust.values())  # round counts stay counts


def test_broken_saved_states_are_refused_with_the_entry_named():
    # Prepare
    good = two_rounds().state_dict()
    repeated = dict(good, pair_ids=torch.tensor([10, 20, 30, 10, 5]))
    not_a_tensor = dict(good, soft_ids=7)
    missing = {k: v for k, v in good.items() if k != "pair_n"}
    # Execute / Assert
    with pytest.raises(ValueError, match="^defense 'fedgrad': saved state entry 'pair_ids' repeats a client id$"):
        FedGrad().load_state_dict(repeated)
    with pytest.raises(ValueError, match="'soft_ids' should be a torch.int64 tensor"):
        FedGrad().load_state_dict(not_a_tensor)
    with pytest.raises(ValueError, match=r"lacks \['pair_n'\]"):
        FedGrad().load_state_dict(missing)



def test_a_clients_first_running_mean_is_its_first_scaled_score_exactly():
    # Prepare: scores strictly between 0 and 1 (a running mean started anywhere but 0 rounds them)
    history = FedGradHistory()
    # Execute
    first = history.fold_soft([3, 1, 2], np.array([0.1, 0.3, 0.7]))
    second = history.fold_soft([1, 4], np.array([0.6, 0.2]))
    # Assert: a newcomer's mean is its score; client 1's is the mean of its two rounds
    assert first.tolist() == [0.1, 0.3, 0.7]
    assert second.tolist() == [pytest.approx(0.45), 0.2]
