"""FedGrad's hardened options (``fedgrad_variants``) and the ``fedgrad_plus`` preset, on hand-made rounds."""

import warnings

import numpy as np
import pytest
import torch

from conftest import G, client
from fedgrad_core.defenses import make_defense
from fedgrad_core.defenses.fedgrad import FedGrad, soft_filter
from fedgrad_core.defenses.fedgrad_variants import FEDGRAD_PLUS, Variant, clip_scales, closeness_outliers

# --------------------------------------------------------------------------- closeness outliers


@pytest.mark.parametrize(
    "scores, k, flagged",
    [
        # median 3, absolute deviations [2, 1, 0, 1, 97] -> MAD 1 -> cut 3 + k x 1.4826
        ([1.0, 2.0, 3.0, 4.0, 100.0], 2.0, [False, False, False, False, True]),  # cut 5.97
        # median 12, deviations 2, 1, 0, 1, 18 -> MAD 1 -> cut 12 + 2 x 1.4826 = 14.97
        ([10.0, 11.0, 12.0, 13.0, 30.0], 2.0, [False, False, False, False, True]),
        ([1.0, 2.0, 3.0, 4.0, 100.0], 0.5, [False, False, False, True, True]),  # cut 3.74
        ([1.0, 2.0, 3.0, 4.0, 100.0], 0.0, [False, False, False, True, True]),  # strictly above the median
        # MAD 0: anything above the median is an outlier
        ([1.0, 1.0, 1.0, 5.0], 3.0, [False, False, False, True]),
        ([2.0, 2.0, 2.0, 2.0], 1.0, [False, False, False, False]),
    ],
)
def test_closeness_outliers_lie_above_median_plus_k_scaled_mads(scores, k, flagged):
    assert closeness_outliers(np.array(scores), k=k).tolist() == flagged


def test_a_far_out_decoy_moves_the_largest_gap_but_not_the_median_rule():
    """7 benign, 2 attackers (.70, .72), 1 far-out decoy (1.0): the median rule (eps1 = .375) flags both
    attackers; the largest gap (.72 -> 1.0) puts the threshold at .72 and flags only the decoy."""
    scores = [0.05, 0.1, 0.2, 0.3, 0.35, 0.4, 0.45, 0.70, 0.72, 1.0]
    cut, median_mask = soft_filter(scores, rule="median")
    gap_cut, gap_mask = soft_filter(scores, rule="largest_gap")
    assert cut == pytest.approx(0.375) and median_mask[7] and median_mask[8]
    assert gap_cut == pytest.approx(0.72) and gap_mask.tolist() == [False] * 9 + [True]


# --------------------------------------------------------------------------- clipping


@pytest.mark.parametrize(
    "changes, keep, scales",
    [
        # norms 5, 10 (kept) and 1 (dropped): the kept median 7.5 shrinks the norm-10 change by 0.75
        ([[3.0, 4.0], [6.0, 8.0], [0.0, 1.0]], [True, True, False], [1.0, 0.75, 1.0]),
        # norms 1, 2, 3 (kept), 10 (dropped, left alone): median 2
        ([[0.6, 0.8], [0.0, 2.0], [3.0, 0.0], [6.0, 8.0]], [True, True, True, False], [1.0, 1.0, 2 / 3, 1.0]),
        # an even count: the median is the mean of the middle two norms, (2 + 4) / 2 = 3
        ([[1.0, 0.0], [0.0, 2.0], [4.0, 0.0], [0.0, -8.0]], [True] * 4, [1.0, 1.0, 0.75, 0.375]),
        # norms below 1 (0.3125, 0.625 kept; 0.0625 dropped): median 0.46875, scale 0.75, as above
        ([[0.1875, 0.25], [0.375, 0.5], [0.0, 0.0625]], [True, True, False], [1.0, 0.75, 1.0]),
    ],
)
def test_clip_scales_bring_kept_changes_down_to_the_kept_median_norm(changes, keep, scales):
    # Prepare: rows around a non-zero centre (the scales see the changes, not the models)
    center = torch.tensor([1.0, -0.5])
    rows = center + torch.tensor(changes)
    # Execute
    got = clip_scales(rows, center, np.array(keep))
    # Assert
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, torch.tensor(scales, dtype=torch.float64))


def test_clip_scales_with_nobody_kept_are_ones_without_a_warning():
    # Execute: no median of an empty set is taken (numpy would warn)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = clip_scales(torch.tensor([[3.0, 4.0], [0.0, 2.0]]), torch.zeros(2), np.array([False, False]))
    # Assert
    assert got.tolist() == [1.0, 1.0]


# --------------------------------------------------------------------------- through the defense


def mimic_round() -> list:
    """Five clients with the same ultimate-layer change (the soft and hard filters see five equals);
    client 9's body moved far (its closeness score stands out), the others' a little, each differently.
    Sample counts 1 to 3."""
    fc = {"fc__weight": torch.full((3, 2), 0.125), "fc__bias": torch.tensor([0.25, 0.0, -0.25])}
    small = [torch.tensor([[0.01, 0.0], [0.0, 0.0]]) * (i + 1) for i in range(4)]
    updates = [client(i, 1 + i % 3, body__weight=small[i], **fc) for i in range(4)]
    updates.append(client(9, 2, body__weight=torch.tensor([[2.0, -1.0], [1.0, 3.0]]), **fc))
    return updates


def test_paper_fedgrad_misses_a_body_only_attacker_that_the_closeness_filter_catches():
    # Prepare
    paper = FedGrad(switch_round=0, use_trust=False)
    hardened = FedGrad(switch_round=0, use_trust=False, closeness_mad=2.0)
    # Execute
    missed = paper.aggregate(G, mimic_round(), 0)
    caught = hardened.aggregate(G, mimic_round(), 0)
    # Assert: the paper's rule keeps client 9; the hardened one flags it through S3 alone
    assert 9 not in missed.flagged
    assert caught.flagged == {9} and caught.diagnostics["s3"] == [9]
    assert caught.diagnostics["s1"] == [] and caught.diagnostics["s2"] == []
    # the model is the sample-weighted mean of the four others: body changes 1..4 x 0.01 with counts 1, 2, 3, 1
    body = G["body.weight"] + torch.tensor([[0.01, 0.0], [0.0, 0.0]]) * (1 * 1 + 2 * 2 + 3 * 3 + 4 * 1) / 7
    torch.testing.assert_close(caught.global_state["body.weight"], body)


@pytest.mark.parametrize("clients, s3", [(slice(1, None), [9]), (slice(2, None), [])], ids=["K=4", "K=3"])
def test_closeness_filter_needs_four_clients(clients, s3):
    # Prepare: client 9 and three (K = 4) or two (K = 3) of the small changes
    defense = FedGrad(switch_round=50, use_trust=False, closeness_mad=2.0)
    # Execute
    out = defense.aggregate(G, mimic_round()[clients], 0)
    # Assert: from four clients on the far body stands out; below four the filter does not act
    assert out.diagnostics["s3"] == s3 and out.flagged == set(s3)


def test_closeness_filter_acts_before_switch_round_and_joins_before_the_trust_score():
    # Prepare: hard filter and trust act from round 5 only; the closeness filter acts every round
    defense = FedGrad(switch_round=5, closeness_mad=2.0)
    # Execute
    out = defense.aggregate(G, mimic_round(), 1)
    state = defense.state_dict()
    # Assert: flagged in round 1 and recorded as suspicious (lambda1 = 0.25) in its trust history
    assert out.flagged == {9} and out.diagnostics["hard_active"] is False
    trust = dict(zip(state["trust_ids"].tolist(), (state["trust_sum"] / state["trust_count"]).tolist()))
    assert trust[9] == pytest.approx((0.5 + 0.25) / 2) and trust[0] == pytest.approx((0.5 + 1.0) / 2)


def test_clip_to_median_bounds_a_passed_update_by_the_kept_median_norm():
    # Prepare: nobody flagged (no filter catches the far body); clipping alone acts on client 9
    defense = FedGrad(switch_round=50, clip_to_median=True)
    updates = mimic_round()
    # Execute
    out = defense.aggregate(G, updates, 0)
    # Assert: the kept changes' norms are 0.01 x (1, 2, 3, 4) and |client 9| = sqrt(15) -> median 0.03
    assert out.flagged == set()
    changes = [u.state["body.weight"] - G["body.weight"] for u in updates]
    norms = [float(torch.sqrt(sum(((u.state[k] - G[k]) ** 2).sum() for k in G))) for u in updates]
    bound = float(np.median(norms))
    clipped = [c * min(1.0, bound / n) for c, n in zip(changes, norms)]
    counts = torch.tensor([1.0, 2.0, 3.0, 1.0, 2.0])
    want = G["body.weight"] + sum(w * c for w, c in zip(counts, clipped)) / counts.sum()
    torch.testing.assert_close(out.global_state["body.weight"], want)


def test_fedgrad_plus_is_fedgrad_with_the_preset_and_accepts_fedgrads_parameters():
    plus = make_defense("fedgrad_plus", switch_round=3, closeness_mad=1.5)
    assert plus.name == "fedgrad_plus" and plus.switch_round == 3
    assert plus.variant == Variant(**{**FEDGRAD_PLUS, "closeness_mad": 1.5})
    assert make_defense("fedgrad").variant == Variant()


@pytest.mark.parametrize("value", [0.0, 0.5, 100.0])
def test_closeness_mad_accepts_every_value_from_0_to_100(value):
    assert FedGrad(closeness_mad=value).closeness_mad == value


@pytest.mark.parametrize("value", [-1.0, 100.5, float("nan"), "2", True])
def test_bad_closeness_mad_names_the_parameter(value):
    with pytest.raises(ValueError, match="^closeness_mad must"):
        FedGrad(closeness_mad=value)


def test_bad_clip_to_median_names_the_parameter():
    with pytest.raises(ValueError, match="^clip_to_median must"):
        FedGrad(clip_to_median=1)
