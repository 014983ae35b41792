"""End to end: each attack, under FedAvg on digits at a small scale, raises backdoor accuracy well
above its clean level (the same backdoor test set measured on a run without attackers).

Backdoor accuracy per round swings with how many attackers the round drew, so the runs are
compared on the mean over their last ``TAIL`` rounds.  About 10 short digits runs (seconds each).
"""

import pytest

from fedgrad_core.config import ExperimentConfig
from fedgrad_core.simulation import run_experiment

ROUNDS = 10
TAIL = 5
#: attack -> (attack_params, attacker_fraction).  PGD's radius 0.5: the authors' eps = 2 never
#: binds on digits_mlp (an unconstrained poisoned update is about 1.4 from the global model).
#: The unconstrained trigger attack runs with Table 1's attacker ratio 0.4, the others with 0.25.
ATTACKS = {
    "pgd": ({"eps": 0.5}, 0.25),
    "pgd_mr": ({"eps": 0.5}, 0.25),
    "pixel_trigger": ({}, 0.4),
    "constrain_scale": ({}, 0.25),
    "dba": ({}, 0.25),
}
#: Attacks sharing a backdoor test set share one clean run: the edge-case set, the full trigger.
CLEAN_REFERENCE = {"pgd": "pgd", "pgd_mr": "pgd", "pixel_trigger": "dba", "constrain_scale": "dba", "dba": "dba"}


def _config(**changes):
    return ExperimentConfig(dataset="digits", defense="fedavg", rounds=ROUNDS, seed=0, device="cpu", **changes)


def tail_mean(result, key):
    values = [r[key] for r in result.history[-TAIL:]]
    return sum(values) / len(values)


@pytest.fixture(scope="module")
def clean_runs():
    return {
        name: run_experiment(_config(attack="none", attack_params={"backdoor": name}), progress=False)
        for name in sorted(set(CLEAN_REFERENCE.values()))
    }


@pytest.mark.slow
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_attack_raises_backdoor_accuracy_well_above_the_clean_level(attack, clean_runs):
    # Prepare
    params, fraction = ATTACKS[attack]
    clean = clean_runs[CLEAN_REFERENCE[attack]]
    # Execute
    result = run_experiment(_config(attack=attack, attack_params=params, attacker_fraction=fraction), progress=False)
    # Assert
    clean_ba, attacked_ba = tail_mean(clean, "backdoor_acc"), tail_mean(result, "backdoor_acc")
    print(
        f"{attack}: clean BA {clean_ba:.3f}, attacked BA {attacked_ba:.3f}, "
        f"main acc {tail_mean(result, 'main_acc'):.3f} (clean {tail_mean(clean, 'main_acc'):.3f})"
    )
    assert clean_ba < 0.2
    assert attacked_ba > clean_ba + 0.4
