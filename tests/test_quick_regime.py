"""The quick profile runs the paper's regime: clients come back, seeds are enough to show a spread.

FedGrad's running compromising scores, its pairwise similarity means and its trust score all need
a client to join more than once.  Expected joins per client are rounds x K / N (K of N sampled
uniformly each round); the paper's runs have about 50 (CIFAR-10: 1,000 x 10 / 200) and 9
(EMNIST: 1,000 x 30 / 3,383).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedgrad_core.pages import expected_joins

PROFILES = json.loads((Path(__file__).resolve().parents[1] / "notebooks" / "profiles.json").read_text())
QUICK = PROFILES["quick"]


def federated_settings(page: dict) -> list[tuple[str, int, int, int]]:
    """(label, rounds, K, N) of every data set and every swept K of a page that runs rounds."""
    rows = []
    datasets = page.get("datasets") or [page.get("dataset")]
    for d in datasets:
        n = page["num_clients"][d] if isinstance(page["num_clients"], dict) else page["num_clients"]
        k = page["clients_per_round"][d] if isinstance(page["clients_per_round"], dict) else page["clients_per_round"]
        rows.append((d, page["rounds"], k, n))
        rows += [(f"{d}, K = {kv}", page["rounds"], kv, n) for kv in page.get("clients_per_round_values", [])]
    return rows


FEDERATED = {name: page for name, page in QUICK.items() if "num_clients" in page and "rounds" in page}


def test_the_expected_joins_are_rounds_times_k_over_n():
    assert expected_joins(1000, 10, 200) == 50.0 and round(expected_joins(1000, 30, 3383), 2) == 8.87


def test_every_federated_quick_page_is_checked():
    assert {"table2_edge_case", "fig6_ba_over_rounds", "table3_trigger", "table4_components", "fig7_stability",
            "fig8_noniid", "beyond_adaptive", "beyond_exclusion"} <= set(FEDERATED)


@pytest.mark.parametrize("name", sorted(FEDERATED))
def test_every_client_joins_at_least_three_rounds_on_average(name):
    for label, rounds, k, n in federated_settings(FEDERATED[name]):
        assert expected_joins(rounds, k, n) >= 3, f"{name}, {label}: {rounds} x {k} / {n} < 3"


@pytest.mark.parametrize("name", sorted(n for n, p in QUICK.items() if "seeds" in p))
def test_every_quick_page_with_seeds_has_at_least_three(name):
    assert len(QUICK[name]["seeds"]) >= 3


#: Pages of the paper's experiments (the exclusion page, beyond the paper, sets its own switch round).
PAPER_PAGES = sorted(n for n in FEDERATED if n != "beyond_exclusion")


def switch_round_for(rounds: int) -> int:
    """The authors' code switches at round 50 of 1,000 (rounds count from 1, the hard filter and
    trust act from the switch round on): 5% of the run, and at least one soft-filter-only round."""
    return max(2, round(0.05 * rounds))


def test_the_switch_rule_gives_the_authors_round_at_their_length():
    assert switch_round_for(1000) == 50 and switch_round_for(12) == 2 and switch_round_for(60) == 3


@pytest.mark.parametrize("name", PAPER_PAGES)
def test_fedgrads_switch_round_keeps_its_share_of_the_run_after_a_soft_filter_only_start(name):
    page = FEDERATED[name]
    assert page["switch_round"] == switch_round_for(page["rounds"])

