import json
from fractions import Fraction

import pytest

import fedgrad_core.simulation as simulation
from fedgrad_core import ExperimentConfig, RunResult, run_experiment
from fedgrad_core.defenses import Aggregate, Defense
from fedgrad_core.results import HISTORY_KEYS

SMALL = ExperimentConfig(rounds=4, num_clients=10, clients_per_round=5, attack="blackbox", eval_every=2)


def _comparable(history):
    return [{k: v for k, v in r.items() if k != "aggregation_seconds"} for r in history]


def test_history_has_the_promised_records():
    result = run_experiment(SMALL, progress=False)

    assert [r["round"] for r in result.history] == [1, 2, 3, 4]
    for record in result.history:
        assert set(HISTORY_KEYS) <= set(record)
        assert set(record["attackers"]) <= set(record["selected"])
        assert record["aggregation_seconds"] >= 0
    assert result.history[0]["main_acc"] is None  # evaluated every 2 rounds
    assert 0 <= result.history[1]["main_acc"] <= 1 and 0 <= result.history[1]["backdoor_acc"] <= 1
    assert result.to_frame().shape[0] == 4


def test_same_seed_gives_an_identical_history_and_another_seed_does_not():
    a = run_experiment(SMALL, progress=False)
    b = run_experiment(SMALL, progress=False)
    c = run_experiment(SMALL.replace(seed=1), progress=False)

    assert _comparable(a.history) == _comparable(b.history)
    assert _comparable(a.history) != _comparable(c.history)


def test_attacker_pool_is_fixed_and_sized_by_the_fraction():
    pool = simulation.attacker_pool(ExperimentConfig(attack="blackbox", num_clients=20, attacker_fraction=0.25))

    assert len(pool) == 5 and len(set(pool)) == 5
    assert pool == simulation.attacker_pool(ExperimentConfig(attack="blackbox", num_clients=20))
    assert simulation.attacker_pool(ExperimentConfig(attack="none")) == ()


def test_rates_follow_the_flagged_set():
    assert simulation._share([1, 2], [1, 3]) == 0.5
    assert simulation._share([1], []) is None


def test_result_saves_atomically_and_loads_back(tmp_path):
    result = run_experiment(SMALL.replace(rounds=2), progress=False)
    path = tmp_path / "deep" / "run.json"

    result.save(path)
    loaded = RunResult.load(path)

    assert loaded.config == result.config
    assert loaded.history == json.loads(json.dumps(result.history))
    for key in ("fedgrad_core_version", "git_commit", "torch_version", "device", "hardware", "data_source"):
        assert key in loaded.meta
    assert [p.name for p in path.parent.iterdir()] == ["run.json"]  # no temporary file left behind


def test_an_interrupted_run_resumes_and_matches_an_uninterrupted_one(tmp_path, monkeypatch):
    config = SMALL.replace(rounds=5)
    out = tmp_path / "run.json"
    uninterrupted = run_experiment(config, progress=False)
    real_round = simulation.run_round

    def crash_in_round_4(config, round_idx, *args):
        if round_idx == 4:
            raise KeyboardInterrupt("killed")
        return real_round(config, round_idx, *args)

    monkeypatch.setattr(simulation, "run_round", crash_in_round_4)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, out=out, checkpoint_every=1, progress=False)
    monkeypatch.setattr(simulation, "run_round", real_round)
    resumed = run_experiment(config, out=out, checkpoint_every=1, resume=True, progress=False)

    assert _comparable(resumed.history) == _comparable(uninterrupted.history)
    assert RunResult.load(out).history == json.loads(json.dumps(resumed.history))


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    out = tmp_path / "run.json"
    run_experiment(SMALL.replace(rounds=2), out=out, checkpoint_every=1, progress=False)

    with pytest.raises(ValueError, match="different configuration"):
        run_experiment(SMALL.replace(rounds=3, seed=9), out=out, checkpoint_every=1, resume=True, progress=False)


class _FlagsChosenClients(Defense):
    """Keeps the global model and flags, of the round's clients, the lowest-numbered attacker and
    the two lowest-numbered benign clients: rates known by construction."""

    name = "flags_chosen"

    def __init__(self, pool):
        self.pool = set(pool)

    def aggregate_finite(self, global_state, updates, round_idx):
        ids = sorted(u.client_id for u in updates)
        attackers = [c for c in ids if c in self.pool]
        benign = [c for c in ids if c not in self.pool]
        flagged = frozenset(attackers[:1] + benign[:2])
        return Aggregate({k: v.clone() for k, v in global_state.items()}, flagged)


def test_tpr_and_fpr_of_a_round_are_the_flagged_shares_of_its_attackers_and_benign_clients(monkeypatch):
    # Prepare: a defense whose flagged set is known, in the real loop
    config = SMALL.replace(local_epochs=1, eval_every=4)
    pool = simulation.attacker_pool(config)
    monkeypatch.setattr(simulation, "build_defense", lambda *args: _FlagsChosenClients(pool))
    # Execute
    history = run_experiment(config, progress=False).history
    # Assert
    for record in history:
        attackers = [c for c in record["selected"] if c in pool]
        benign = [c for c in record["selected"] if c not in pool]
        assert record["attackers"] == attackers
        assert record["flagged"] == sorted(attackers[:1] + benign[:2])
        assert record["tpr"] == (1 / len(attackers) if attackers else None)
        assert record["fpr"] == 2 / len(benign)
    assert any(0 < r["tpr"] < 1 for r in history if r["tpr"] is not None)  # a round with 2+ attackers


def test_tpr_and_fpr_recomputed_from_a_real_rounds_record():
    # Prepare: FLAME flags clients on its own
    config = SMALL.replace(defense="flame", local_epochs=1, eval_every=4)
    # Execute
    result = run_experiment(config, progress=False)
    # Assert: the rates follow from the record's own sets (and the pool from the result's meta)
    pool = set(result.meta["attacker_pool"])
    for r in result.history:
        assert set(r["attackers"]) == set(r["selected"]) & pool and set(r["flagged"]) <= set(r["selected"])
        benign = set(r["selected"]) - set(r["attackers"])
        flagged = set(r["flagged"])
        tpr = Fraction(len(flagged & set(r["attackers"])), len(r["attackers"])) if r["attackers"] else None
        fpr = Fraction(len(flagged & benign), len(benign)) if benign else None
        assert r["tpr"] == (None if tpr is None else float(tpr))
        assert r["fpr"] == (None if fpr is None else float(fpr))
    assert any(r["attackers"] for r in result.history) and any(r["flagged"] for r in result.history)


@pytest.mark.slow
def test_fedavg_learns_digits_and_the_blackbox_attack_plants_its_backdoor():
    clean = run_experiment(ExperimentConfig(rounds=20, seed=0), progress=False)
    attacked = run_experiment(ExperimentConfig(rounds=20, seed=0, attack="blackbox"), progress=False)

    clean_ba = sum(r["backdoor_acc"] for r in clean.history) / 20
    attacked_ba = sum(r["backdoor_acc"] for r in attacked.history) / 20
    assert clean.last("main_acc") >= 0.90
    assert attacked.last("main_acc") >= 0.80
    assert clean_ba < 0.1 and attacked_ba > 0.5
