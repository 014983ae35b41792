"""What a run depends on: the code it executes (the cache key's fingerprint), the training
subsample its clients share and the test subsample its main accuracy is measured on."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from fedgrad_core import ExperimentConfig
from fedgrad_core.config import ConfigError, validate
from fedgrad_core.results import NOT_IN_RUNS, code_fingerprint
from fedgrad_core.simulation import cached_task, setup_run, stratified_subsample

SCRIPT = """
import json, sys, tempfile
from fedgrad_core import ExperimentConfig
from fedgrad_core.runs import run_many
from fedgrad_core.fairness import final_per_class_accuracy
config = ExperimentConfig(rounds=2, pretrain_epochs=1, defense="fedgrad", attack="blackbox",
                          defense_params={"switch_round": 1}, train_samples=400, eval_samples=100)
cache = tempfile.mkdtemp()
run_many([config], executor="sequential", cache_dir=cache)
final_per_class_accuracy(config, cache_dir=cache)
print(json.dumps(sorted(m for m in sys.modules if m.startswith("fedgrad_core"))))
"""


@pytest.mark.slow
def test_no_module_left_out_of_the_fingerprint_is_imported_by_a_run():
    # Prepare / Execute: a run, the run cache and the fairness cache in a fresh interpreter
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, check=True)
    imported = json.loads(out.stdout.strip().splitlines()[-1])
    # Assert: the presentation modules stayed out; the run's own modules were in
    left_out = [m for m in imported if m.removeprefix("fedgrad_core.").replace(".", "/") + ".py" in NOT_IN_RUNS
                or m.removeprefix("fedgrad_core.").startswith("integrations")]
    assert left_out == []
    assert {"fedgrad_core.simulation", "fedgrad_core.defenses.fedgrad", "fedgrad_core.fairness"} <= set(imported)


def test_fingerprint_changes_with_a_run_module_and_not_with_a_presentation_module(tmp_path, monkeypatch):
    import fedgrad_core.results as results

    package = tmp_path / "pkg"
    (package / "defenses").mkdir(parents=True)
    (package / "integrations").mkdir()
    for name in ("results.py", "report.py", "defenses/krum.py", "integrations/flower.py"):
        (package / name).write_text(f"# {name}\n")
    monkeypatch.setattr(results, "__file__", str(package / "results.py"))

    def fingerprint() -> str:
        results.code_fingerprint.cache_clear()
        return results.code_fingerprint()

    before = fingerprint()
    (package / "report.py").write_text("# a new table\n")
    (package / "integrations" / "flower.py").write_text("# a new strategy\n")
    assert fingerprint() == before
    (package / "defenses" / "krum.py").write_text("# another rule\n")
    assert fingerprint() != before
    results.code_fingerprint.cache_clear()


def test_stratified_subsample_keeps_class_shares_and_is_fixed_by_its_seed():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    first = stratified_subsample(labels, 10)
    assert np.bincount(labels.numpy()[first]).tolist() == [5, 3, 2]
    assert first.tolist() == stratified_subsample(labels, 10).tolist() == sorted(set(first.tolist()))
    assert stratified_subsample(labels, 10, seed=(1, 6)).tolist() != first.tolist()
    # shares that are not whole numbers go to the largest remainders: 7 x (.5, .3, .2) = 3.5, 2.1, 1.4
    assert np.bincount(labels.numpy()[stratified_subsample(labels, 7)]).tolist() == [4, 2, 1]


@pytest.mark.parametrize("size", [0, 101])
def test_stratified_subsample_refuses_sizes_outside_the_labels(size):
    with pytest.raises(ValueError, match="subsample size"):
        stratified_subsample(torch.zeros(100, dtype=torch.int64), size)


def test_clients_share_the_training_subsample_and_the_test_subsample_is_the_same_for_every_seed():
    base = ExperimentConfig(num_clients=20, partition="iid", train_samples=400, eval_samples=120)
    runs = [setup_run(base.replace(seed=s), "cpu") for s in (0, 1)]
    whole = setup_run(base.replace(train_samples=None, eval_samples=None), "cpu")
    for run in runs:
        assert sum(len(s) for s in run.shards) == 400
        assert len(run.task.test) == 120
        assert torch.equal(run.task.train.x, whole.task.train.x)  # pretraining keeps the whole split
    assert torch.equal(runs[0].task.test.x, runs[1].task.test.x)
    shard_rows = [torch.cat([s.x for s in run.shards]) for run in runs]
    assert shard_rows[0].shape == shard_rows[1].shape and not torch.equal(shard_rows[0], shard_rows[1])


def test_a_trigger_backdoor_set_larger_than_eval_samples_is_subsampled_the_same_for_every_seed():
    # Prepare: digits' 360 test images stamped with the trigger, less the target's (about 324)
    base = ExperimentConfig(num_clients=20, partition="iid", attack="pixel_trigger", eval_samples=120)
    whole = setup_run(base.replace(eval_samples=None), "cpu").backdoor

    # Execute
    runs = [setup_run(base.replace(seed=s), "cpu").backdoor for s in (0, 1)]
    larger = setup_run(base.replace(eval_samples=len(whole) + 10), "cpu").backdoor

    # Assert: 120 stamped images drawn from the whole set, the same rows for both seeds; a limit
    # above the set's size keeps it whole
    assert len(whole) > 120 and all(len(b) == 120 for b in runs)
    assert torch.equal(runs[0].x, runs[1].x) and bool((runs[0].y == whole.y[0]).all())
    rows = {tuple(x.flatten().tolist()) for x in whole.x}
    assert all(tuple(x.flatten().tolist()) in rows for x in runs[0].x)
    assert torch.equal(larger.x, whole.x)


def test_without_subsamples_the_clients_share_the_whole_training_split():
    run = setup_run(ExperimentConfig(num_clients=20, partition="iid"), "cpu")
    assert sum(len(s) for s in run.shards) == len(run.task.train)
    assert len(run.task.test) == len(cached_task("digits").test) == 360


@pytest.mark.parametrize(
    "changes, message",
    [({"train_samples": 0}, "train_samples"), ({"eval_samples": 2.5}, "eval_samples"),
     ({"train_samples": 19}, "at least num_clients"), ({"pretrain_seed": -1}, "pretrain_seed")],
)
def test_subsample_sizes_are_validated(changes, message):
    with pytest.raises(ConfigError, match=message):
        validate(ExperimentConfig(num_clients=20, **changes))


def test_the_fingerprint_is_part_of_a_results_provenance():
    assert len(code_fingerprint()) == 16


def test_one_pretrain_seed_gives_every_run_seed_the_same_starting_model(tmp_path, monkeypatch):
    from fedgrad_core.runs import pretrain_group
    from fedgrad_core.simulation import pretrained_state

    monkeypatch.setenv("FEDGRAD_CACHE", str(tmp_path))
    task = cached_task("digits")
    shared = [ExperimentConfig(seed=s, pretrain_epochs=1, pretrain_seed=7) for s in (0, 1)]
    own = [ExperimentConfig(seed=s, pretrain_epochs=1) for s in (0, 1)]
    states = [pretrained_state(c, task, "cpu") for c in shared + own]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[2][k], states[3][k]) for k in states[2])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])
    assert pretrain_group(shared[0]) == pretrain_group(shared[1]) != pretrain_group(own[0]) != pretrain_group(own[1])
    assert ExperimentConfig(seed=3).pretraining_seed == 3 and shared[1].pretraining_seed == 7
