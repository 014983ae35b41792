"""Stateful defenses through the whole loop: a run stopped and resumed from its checkpoint, and a
second run with the same seed, end with exactly the same global model and history as one
uninterrupted run (issue 8, "Loop"; issue 12, resume).

FedGrad (hard filter and trust score acting from round 2, so both act after the resume), FoolsGold
(history of summed updates) and FLAME (noise drawn per round) on ``digits``; the final global
model is read from the run's last checkpoint.
"""

from __future__ import annotations

import pytest
import torch

from fedgrad_core import ExperimentConfig, run_experiment
from fedgrad_core.checkpoint import load_checkpoint
from fedgrad_core.defenses.fedgrad import FedGrad
from fedgrad_core.defenses.foolsgold import FoolsGold

SMALL = ExperimentConfig(
    rounds=4, num_clients=10, clients_per_round=5, attack="blackbox", eval_every=2, local_epochs=1
)
CONFIGS = {
    "fedgrad": SMALL.replace(defense="fedgrad", defense_params={"switch_round": 2}),
    "foolsgold": SMALL.replace(defense="foolsgold"),
    "flame": SMALL.replace(defense="flame"),
}


def _comparable(history):
    return [{k: v for k, v in r.items() if k != "aggregation_seconds"} for r in history]


def _assert_same_model(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _same_state(a, b):
    """Equal keys, and equal values (tensors: same dtype, shape and entries)."""
    if a.keys() != b.keys():
        return False
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            other = b[key]
            if not (isinstance(other, torch.Tensor) and value.dtype == other.dtype and value.shape == other.shape):
                return False
            if not torch.equal(value, other):
                return False
        elif value != b[key]:
            return False
    return True


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """name -> (result, final checkpoint) of one uninterrupted run, computed once per module."""
    runs = {}

    def get(name):
        if name not in runs:
            path = tmp_path_factory.mktemp(name) / "straight.ckpt"
            result = run_experiment(CONFIGS[name], checkpoint_path=path, checkpoint_every=1, progress=False)
            runs[name] = (result, load_checkpoint(path))
        return runs[name]

    return get


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_stopped_run_resumes_identically(tmp_path, straight, name):
    # Prepare: the uninterrupted run, and a run stopped after round 2
    config = CONFIGS[name]
    expected, final = straight(name)
    path = tmp_path / "run.ckpt"
    stopped = run_experiment(config, checkpoint_path=path, checkpoint_every=1, stop_after=2, progress=False)
    assert [r["round"] for r in stopped.history] == [1, 2] and load_checkpoint(path).round == 2
    # Execute
    resumed = run_experiment(config, checkpoint_path=path, checkpoint_every=1, resume=True, progress=False)
    # Assert
    after = load_checkpoint(path)
    assert after.round == 4
    assert _comparable(resumed.history) == _comparable(expected.history)
    _assert_same_model(after.global_state, final.global_state)
    assert _same_state(after.defense_state, final.defense_state)


@pytest.mark.slow  # a check of the test above (two more runs per defense)
@pytest.mark.parametrize("name, cls", [("fedgrad", FedGrad), ("foolsgold", FoolsGold)])
def test_resuming_without_the_defense_state_would_not_match(tmp_path, straight, name, cls, monkeypatch):
    # The control for the test above: the saved state is what makes the resumed run identical.
    config = CONFIGS[name]
    expected, final = straight(name)
    path = tmp_path / "run.ckpt"
    run_experiment(config, checkpoint_path=path, checkpoint_every=1, stop_after=2, progress=False)
    monkeypatch.setattr(cls, "load_state_dict", lambda self, state: None)  # the state is ignored

    resumed = run_experiment(config, checkpoint_path=path, checkpoint_every=1, resume=True, progress=False)

    # the state the run ends with differs; for FedGrad so do the records of rounds 3-4 (running
    # soft scores, trust).  FoolsGold's weights here are all 0 or 1 with or without the earlier
    # rounds, so its records alone would not tell.
    assert not _same_state(load_checkpoint(path).defense_state, final.defense_state)
    if name == "fedgrad":
        assert _comparable(resumed.history[2:]) != _comparable(expected.history[2:])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_same_seed_gives_the_same_final_model(tmp_path, straight, name):
    expected, final = straight(name)
    path = tmp_path / "again.ckpt"

    again = run_experiment(CONFIGS[name], checkpoint_path=path, checkpoint_every=4, progress=False)

    assert _comparable(again.history) == _comparable(expected.history)
    _assert_same_model(load_checkpoint(path).global_state, final.global_state)
    assert any(r["flagged"] for r in expected.history)  # the defense acted in these runs

