"""fedgrad_core.fairness: label distances, exclusion counts and per-class accuracy on small
hand-checkable inputs; one short digits run for the final model's per-class accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedgrad_core import ExperimentConfig
from fedgrad_core.fairness import (
    client_label_counts,
    excluded_in_round,
    exclusion_table,
    final_per_class_accuracy,
    final_per_class_many,
    label_counts,
    label_distances,
    per_class_accuracy,
    total_variation,
)
from fedgrad_core.results import RunResult


def test_label_counts_and_range_error():
    assert label_counts([2, 0, 2, 2], 4).tolist() == [1, 0, 3, 0]
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\], found 0..3"):
        label_counts([0, 3], 3)


def test_total_variation_of_unequal_totals():
    # Prepare: p = (3, 1) / 4 = (0.75, 0.25), q = (1, 1) / 2: half the L1 distance = 0.25
    # Execute / Assert: the totals differ (4 and 2); the mixes are compared
    assert total_variation([3, 1], [1, 1]) == pytest.approx(0.25)
    assert total_variation([2, 0], [0, 5]) == 1.0  # disjoint classes
    with pytest.raises(ValueError, match="different lengths"):
        total_variation([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="positive total"):
        total_variation([0, 0], [1, 1])


def test_label_distances_are_from_the_federations_mix():
    # Prepare: totals (4, 4, 2) -> mix (0.4, 0.4, 0.2)
    counts = [[2, 2, 1], [2, 0, 0], [0, 2, 1]]
    # Execute
    d = label_distances(counts)
    # Assert: client 0 has the mix (0); client 1 is all class 0: 1/2 (0.6 + 0.4 + 0.2) = 0.6;
    # client 2 is (0, 2/3, 1/3): 1/2 (0.4 + 0.2667 + 0.1333) = 0.4
    np.testing.assert_allclose(d, [0.0, 0.6, 0.4])


def test_client_label_counts_follow_the_runs_split():
    # Prepare
    config = ExperimentConfig(num_clients=10, partition="phi", noniid=1.0, seed=3)
    # Execute
    counts = client_label_counts(config)
    # Assert: every training example once; phi = 1 gives each class to one group of one client
    # (10 clients, 10 classes): every client holds exactly one class
    from fedgrad_core.simulation import setup_run

    labels = setup_run(config, "cpu").task.train.y.numpy()  # after the attack's set-up, as the run
    assert counts.shape == (10, 10) and counts.sum() == len(labels)
    assert ((counts > 0).sum(axis=1) == 1).all()
    assert np.allclose(label_distances(counts), 1 - counts.sum(axis=0)[counts.argmax(axis=1)] / len(labels))
    assert counts.sum(axis=0).tolist() == np.bincount(labels, minlength=10).tolist()


def record(rnd, selected, attackers, flagged, weights=None):
    r = {"round": rnd, "selected": selected, "attackers": attackers, "flagged": flagged}
    if weights is not None:
        r["defense"] = {"weights": {str(c): w for c, w in weights.items()}}
    return r


def test_exclusion_table_counts_benign_rounds_only():
    # Prepare: client 9 is an attacker; 1 joins 3 rounds, excluded in 2; 2 joins 2, excluded in 0
    history = [
        record(1, [1, 2, 9], [9], [1, 9]),
        record(2, [1, 3, 9], [9], [1, 3]),
        record(3, [1, 2], [], []),
    ]
    result = RunResult(ExperimentConfig(defense="fedgrad"), history, {})
    # Execute
    table = exclusion_table(result)
    # Assert
    assert table["client"].tolist() == [1, 2, 3]
    assert table["joined"].tolist() == [3, 2, 1] and table["excluded"].tolist() == [2, 0, 1]
    np.testing.assert_allclose(table["frequency"], [2 / 3, 0.0, 1.0])


def test_foolsgold_exclusion_is_a_weight_below_the_cut():
    # Prepare: weights 0.004 (excluded), 0.01 (not: the cut is strict), 0.5; flagged is ignored
    rec = record(1, [1, 2, 3], [], [], weights={1: 0.004, 2: 0.01, 3: 0.5})
    # Execute / Assert
    assert excluded_in_round(rec, "foolsgold") == {1}
    assert excluded_in_round(rec, "foolsgold", weight_below=0.6) == {1, 2, 3}
    assert excluded_in_round(record(1, [1, 2], [], [2]), "flame") == {2}
    with pytest.raises(ValueError, match="without diagnostics\\['weights'\\]"):
        excluded_in_round(record(4, [1], [], []), "foolsgold")


class Fixed(nn.Module):
    """Predicts the class stored in the input's first feature."""

    def forward(self, x):
        return nn.functional.one_hot(x[:, 0].long(), 3).float()


def test_per_class_accuracy_with_unequal_class_sizes_and_an_absent_class():
    # Prepare: class 0 has 3 examples (2 right), class 1 has 1 (wrong), class 2 none
    y = torch.tensor([0, 0, 0, 1])
    x = torch.tensor([[0.0], [0.0], [1.0], [0.0]])
    # Execute
    acc = per_class_accuracy(Fixed(), x, y, 3)
    # Assert
    assert acc[0] == pytest.approx(2 / 3) and acc[1] == 0.0 and np.isnan(acc[2])


@pytest.mark.slow
def test_final_per_class_accuracy_is_cached_and_averages_to_the_runs_accuracy(tmp_path):
    # Prepare
    config = ExperimentConfig(rounds=2, num_clients=10, clients_per_round=5, pretrain_epochs=1, seed=1)
    # Execute
    result, acc = final_per_class_accuracy(config, cache_dir=tmp_path)
    again, acc2 = final_per_class_accuracy(config, cache_dir=tmp_path)
    # Assert: weighted by the test set's class sizes, the per-class accuracies give the run's
    from fedgrad_core.data import load_task

    sizes = np.bincount(load_task("digits").test.y.numpy(), minlength=10)
    assert float((acc * sizes).sum() / sizes.sum()) == pytest.approx(result.last("main_acc"))
    assert acc2.tolist() == acc.tolist() and again.history == result.history
    assert len(list(tmp_path.glob("perclass-*.json"))) == 1


@pytest.mark.slow
def test_final_per_class_many_in_two_workers_equals_one_by_one(tmp_path):
    # Prepare: two tiny runs (seeds 0 and 1); one cache per way of running them
    configs = [
        ExperimentConfig(rounds=2, num_clients=10, clients_per_round=5, pretrain_epochs=1, seed=s) for s in (0, 1)
    ]
    # Execute
    parallel = final_per_class_many(configs, workers=2, cache_dir=tmp_path / "a")
    serial = final_per_class_many(configs, workers=1, cache_dir=tmp_path / "b")
    # Assert: same order and numbers; the workers run at another torch thread count, which moves
    # float sums in their last bits (runs.py), so allow one test example of a class (about 1/36)
    assert [r.config.seed for r, _ in parallel] == [0, 1]
    for (rp, ap), (rs, as_) in zip(parallel, serial):
        np.testing.assert_allclose(ap, as_, atol=0.03)
        assert rp.config == rs.config and rp.last("main_acc") == pytest.approx(rs.last("main_acc"), abs=0.01)
    with pytest.raises(ValueError, match="workers must be a positive integer, got 0"):
        final_per_class_many(configs, workers=0)
