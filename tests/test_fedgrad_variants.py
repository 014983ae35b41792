"""FedGrad's opt-in variants beyond the paper: ``soft_threshold="largest_gap"`` and ``trust_decay``
(the hardened options are in ``test_fedgrad_hardened.py``).  Hand-checkable inputs on which each
option gives a different answer from the faithful default, and the default reproducing the
faithful result.

The rounds use the tiny model of ``conftest.py``: client ``i`` sends ``fc.weight = W_prev + c_i E``
(``E`` all 0.25); with ``c_i`` either HIGH or LOW and both present the min-max scaled score is 1 for
HIGH and 0 for LOW, so the running means are fractions of high rounds.  Values are dyadic, so the
averages are exact in float32.  The options' parameter checks are with the others, in
``test_fedgrad.py``.
"""

from __future__ import annotations


import pytest
import torch

from conftest import E, G, HIGH, LOW, soft_client
from fedgrad_core.defenses import ClientUpdate
from fedgrad_core.defenses.fedgrad import FedGrad, soft_filter, soft_filter_threshold

# --------------------------------------------------------------------------- the threshold rule


def test_largest_gap_threshold_sits_in_the_widest_gap_above_the_median():
    # Prepare: median 0.4 -> eps1 = 0.4; gaps ending above it: 0.3 -> 0.5 (0.2), 0.5 -> 0.9 (0.4),
    # 0.9 -> 0.95 (0.05)
    scores = [0.1, 0.2, 0.3, 0.5, 0.9, 0.95]
    # Execute
    median_t, median_mask = soft_filter(scores, zeta=0.5)
    gap_t, gap_mask = soft_filter(scores, zeta=0.5, rule="largest_gap")
    # Assert: the median flags the top three, the gap rule only the two above the 0.5 -> 0.9 gap
    assert median_t == pytest.approx(0.4) and median_mask.tolist() == [False] * 3 + [True] * 3
    assert gap_t == 0.5 and gap_mask.tolist() == [False] * 4 + [True] * 2


def test_largest_gap_crossing_eps1_keeps_near_tied_top_scores_together():
    # Prepare: three attackers near 1 (gaps 0.001 and 0) far above three benign scores; median
    # 0.5245 -> eps1 = 0.5.  Gaps among the top three alone would split them at 0.999.
    scores = [0.0, 0.02, 0.05, 0.999, 1.0, 1.0]
    # Execute
    threshold, mask = soft_filter(scores, zeta=0.5, rule="largest_gap")
    # Assert: the widest gap is 0.05 -> 0.999, which starts below eps1: the threshold is eps1
    assert threshold == 0.5 and mask.tolist() == [False] * 3 + [True] * 3


def test_largest_gap_starts_at_zeta_when_zeta_is_below_the_median():
    # Prepare: median 0.725 > zeta 0.5 -> eps1 = 0.5; all four are candidates, gaps 0.1, 0.05, 0.25
    scores = [0.6, 0.7, 0.75, 1.0]
    # Execute
    median_t, median_mask = soft_filter(scores, zeta=0.5)
    gap_t, gap_mask = soft_filter(scores, zeta=0.5, rule="largest_gap")
    # Assert: the median rule flags all four, the gap rule only the client above the 0.25 gap
    assert median_t == 0.5 and median_mask.all()
    assert gap_t == 0.75 and gap_mask.tolist() == [False, False, False, True]


def test_largest_gap_ignores_a_gap_that_ends_exactly_at_eps1():
    # Prepare: eps1 = min(0.5, median 0.5625) = 0.5.  The widest gap (0.125 -> 0.5) ends at
    # eps1, where nobody is flagged; of the gaps ending above it the widest is 0.625 -> 0.875
    scores = [0.0, 0.125, 0.5, 0.625, 0.875, 1.0]
    # Execute
    threshold, flagged = soft_filter(scores, rule="largest_gap")
    # Assert
    assert threshold == 0.625 and flagged.tolist() == [False] * 4 + [True] * 2


def test_largest_gap_ties_choose_the_lowest_gap():
    # Prepare: eps1 = median = 0.5; gaps above it 0.25 and 0.25
    scores = [0.0, 0.25, 0.5, 0.75, 1.0]
    # Execute / Assert: the lower of the tied gaps, the same threshold as the median rule here
    assert soft_filter_threshold(scores, rule="largest_gap") == 0.5


@pytest.mark.parametrize("scores", [[0.3, 0.3, 0.3], [0.2], [0.0, 0.1, 0.4, 0.4]])
def test_largest_gap_without_two_distinct_scores_above_eps1_is_eps1(scores):
    # [0, 0.1, 0.4, 0.4]: median 0.25, the only candidates are the two equal 0.4
    assert soft_filter_threshold(scores, rule="largest_gap") == soft_filter_threshold(scores)


def test_threshold_rule_errors_name_the_problem():
    with pytest.raises(ValueError, match="^soft_filter_threshold needs at least one score$"):
        soft_filter_threshold([])
    with pytest.raises(
        ValueError, match="^strict_factor scales the median threshold; it cannot be combined with 'largest_gap'$"
    ):
        soft_filter_threshold([0.1, 0.9], strict_factor=0.35, rule="largest_gap")
    with pytest.raises(
        ValueError, match=r"^soft threshold rule must be one of \['median', 'largest_gap'\], got 'mean'$"
    ):
        soft_filter_threshold([0.1, 0.9], rule="mean")


# --------------------------------------------------------------------------- through aggregate

A, B, C, D, P, Q = 1, 2, 3, 4, 5, 6


def four_rounds(defense: FedGrad):
    """A, B high in rounds 0-3; C high in rounds 0 and 3; D high in round 0; P, Q always low.

    Running means after round 3: A 1, B 1, C 1/2, D 1/4, P 0, Q 0; median 3/8 -> eps1 = 3/8.
    Sample counts differ (1 to 3); the weighted mean of HIGH and LOW stays strictly between them.
    """
    counts = {A: 1, B: 2, C: 3, D: 1, P: 2, Q: 3}
    out = None
    for r in range(4):
        high = {A, B} | ({C} if r in (0, 3) else set()) | ({D} if r == 0 else set())
        out = defense.aggregate(G, [soft_client(c, HIGH if c in high else LOW, counts[c]) for c in counts], r)
    return out


@pytest.mark.parametrize(
    "rule, threshold, flagged, c",
    [
        # median: C (1/2) is above 3/8; kept D, P, Q with counts 1, 2, 3 all LOW -> c = 1
        ("median", 0.375, {A, B, C}, 1.0),
        # largest gap: gaps ending above 3/8 are 1/4 -> 1/2 and 1/2 -> 1 -> threshold 1/2; C (HIGH in
        # round 3, count 3) is averaged in: (3 x 3 + 1 x 1 + 1 x 2 + 1 x 3) / (3 + 1 + 2 + 3) = 15 / 9
        ("largest_gap", 0.5, {A, B}, 15 / 9),
    ],
)
def test_soft_threshold_rule_through_aggregate(rule, threshold, flagged, c):
    # Prepare
    defense = FedGrad(use_hard=False, use_trust=False, soft_threshold=rule)
    # Execute
    out = four_rounds(defense)
    # Assert
    want = {"1": 1.0, "2": 1.0, "3": 0.5, "4": 0.25, "5": 0.0, "6": 0.0}
    assert out.diagnostics["soft_scores"] == pytest.approx(want, abs=1e-12)
    assert out.diagnostics["soft_threshold"] == pytest.approx(threshold, abs=1e-12)
    assert out.flagged == flagged
    torch.testing.assert_close(out.global_state["fc.weight"], G["fc.weight"] + c * E)


# --------------------------------------------------------------------------- forgiving trust

H1, H2, L1, L2, L3, X = 10, 11, 20, 21, 22, 30


def warm_up(defense: FedGrad) -> None:
    """Rounds 0-3: H1, H2 always high, L1 always low, X high in round 0 only: X is flagged in
    round 0 only, so its trust history is [0.5, 0.25, 1, 1, 1] (plain mean 0.75)."""
    for r in range(4):
        defense.aggregate(
            G,
            [
                soft_client(H1, HIGH),
                soft_client(H2, HIGH),
                soft_client(L1, LOW),
                soft_client(X, HIGH if r == 0 else LOW),
            ],
            r,
        )


def round_four() -> list[ClientUpdate]:
    """X high again (running mean 0.4) among three low clients and H1, H2: median 0.2: S1 = H1 H2 X."""
    return [
        soft_client(H1, HIGH),
        soft_client(H2, HIGH),
        soft_client(L1, LOW),
        soft_client(L2, LOW),
        soft_client(L3, LOW),
        soft_client(X, HIGH),
    ]


# X's weighted trust with decay 1/2: entries [0.5, 0.25, 1, 1, 1] weighted 1/16, 1/8, 1/4, 1/2, 1
X_DECAYED = (0.5 / 16 + 0.25 / 8 + 1 / 4 + 1 / 2 + 1) / (1 / 16 + 1 / 8 + 1 / 4 + 1 / 2 + 1)  # 0.935...
# H1's: entries [0.5, 0.25, 0.25, 0.25, 0.25] -> 0.5 / 1.9375 = 0.258...
H_DECAYED = (0.5 / 16 + 0.25 * (1 / 8 + 1 / 4 + 1 / 2 + 1)) / 1.9375


@pytest.mark.parametrize(
    "decay, x_trust, flagged",
    [
        (None, 0.75, {H1, H2, X}),  # the plain mean 0.75 is below gamma 0.8: X stays excluded
        (1.0, 0.75, {H1, H2, X}),  # decay 1 is the plain mean
        (0.5, X_DECAYED, {H1, H2}),  # its clean recent rounds count more: X is forgiven
    ],
)
def test_trust_decay_forgives_a_client_whose_recent_rounds_were_clean(decay, x_trust, flagged):
    # Prepare
    defense = FedGrad(use_hard=False, switch_round=4, gamma=0.8, trust_decay=decay)
    warm_up(defense)
    # Execute
    out = defense.aggregate(G, round_four(), 4)
    # Assert
    assert out.diagnostics["trust"][str(X)] == pytest.approx(x_trust, abs=1e-12)
    assert out.diagnostics["trust"][str(H1)] == pytest.approx(0.3 if decay in (None, 1.0) else H_DECAYED)
    assert out.flagged == flagged


def test_trust_decay_one_gives_the_faithful_history_bit_for_bit():
    # Prepare
    faithful, decayed = (
        FedGrad(use_hard=False, switch_round=4, gamma=0.8),
        FedGrad(use_hard=False, switch_round=4, gamma=0.8, trust_decay=1.0),
    )
    # Execute
    for defense in (faithful, decayed):
        warm_up(defense)
        defense.aggregate(G, round_four(), 4)
    # Assert: same sums and counts; only the saved count's dtype differs (float64 with a decay)
    a, b = faithful.state_dict(), decayed.state_dict()
    assert a["trust_sum"].tolist() == b["trust_sum"].tolist()
    assert a["trust_count"].tolist() == b["trust_count"].tolist()
    assert a["trust_count"].dtype == torch.int64 and b["trust_count"].dtype == torch.float64


def test_decayed_trust_survives_a_state_round_trip_and_is_refused_by_the_faithful_defense():
    # Prepare
    defense = FedGrad(use_hard=False, switch_round=4, gamma=0.8, trust_decay=0.5)
    warm_up(defense)
    state = defense.state_dict()
    # Execute
    restored = FedGrad(use_hard=False, switch_round=4, gamma=0.8, trust_decay=0.5)
    restored.load_state_dict(state)
    # Assert
    assert restored.trust_of(X) == pytest.approx(defense.trust_of(X)) and restored.trust_of(X) > 0.75
    assert restored.aggregate(G, round_four(), 4).flagged == {H1, H2}
    with pytest.raises(ValueError, match="'trust_count' should be a torch.int64 tensor"):
        FedGrad().load_state_dict(state)


def test_trust_decay_ages_an_entry_by_the_clients_own_rounds_not_by_the_rounds_it_skipped():
    # Prepare: clients 0 (HIGH: flagged) and 1, 2 (LOW: clean) take part in two rounds.  The
    # defense "gaps" runs eight rounds of three other clients between them; "no_gaps" does not.
    # A skipped round must not age the history: both end with the same trust, the hand value of
    # two participations.
    def together():
        return [soft_client(0, HIGH), soft_client(1, LOW), soft_client(2, LOW)]

    gaps, no_gaps = (FedGrad(use_hard=False, switch_round=1000, trust_decay=0.5) for _ in range(2))
    # Execute
    no_gaps.aggregate(G, together(), 1)
    no_gaps.aggregate(G, together(), 2)
    gaps.aggregate(G, together(), 1)
    for r in range(2, 10):
        gaps.aggregate(G, [soft_client(100, HIGH), soft_client(101, LOW), soft_client(102, LOW)], r)
    out = gaps.aggregate(G, together(), 10)
    # Assert: decay 0.5 per participation, start 0.5 included:
    # flagged twice: (0.5 * 0.25 + 0.25 * 0.5 + 0.25) / (0.25 + 0.5 + 1) = 0.5 / 1.75
    # clean twice:   (0.5 * 0.25 + 1 * 0.5 + 1) / 1.75 = 1.625 / 1.75
    assert out.flagged == {0}
    for defense in (gaps, no_gaps):
        assert defense.trust_of(0) == pytest.approx(0.5 / 1.75, abs=1e-12)
        assert defense.trust_of(1) == pytest.approx(1.625 / 1.75, abs=1e-12)
    # a client seen only in the skipped rounds aged by its eight rounds, not by the others'
    clean_eight = (0.5 * 0.5**8 + sum(0.5**a for a in range(8))) / sum(0.5**a for a in range(9))
    assert gaps.trust_of(101) == pytest.approx(clean_eight)
