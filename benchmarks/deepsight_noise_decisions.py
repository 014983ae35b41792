"""Does DeepSight decide differently with fewer noise inputs?  Both settings judge the same rounds.

    python benchmarks/deepsight_noise_decisions.py [--samples 500] [--datasets mnist cifar10]

Plays the quick profile's Table 2 black-box run with DeepSight at its default (2,000 noise inputs
per seed) through the simulation's own set-up and rounds; in every round a second DeepSight with
``--samples`` inputs judges the very same updates (its verdict is recorded, not used).  Prints,
per round, both flagged sets, and the number of rounds where they agree.  Needs the data sets
(FEDGRAD_DATA_SOURCE); minutes on a CPU.

Measured 2026-11-26, seed 0, 1 torch thread, shared 2-core AMD EPYC CPU, at the quick profile of
then (N = 500 / 600, 12 rounds): with 500 inputs the flagged sets equal those with 2,000 in 12 of 12
rounds on MNIST (CNN) and 12 of 12 on CIFAR-10 (VGG-9-slim), each call about 4x faster.

Measured 2026-12-07 at commit 8c4900d, same machine and thread, at the quick profile of now (N = 32,
K = 10, 10 rounds, the settings below): with 100 inputs the flagged sets equal those with 2,000 in
10 of 10 rounds on MNIST and 10 of 10 on CIFAR-10, each call about 16x faster (0.9-1.0 s against
15.4-17.5 s on MNIST, 1.0 s against about 16.6 s on CIFAR-10).  The quick profile uses 100.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from fedgrad_core import simulation as sim
from fedgrad_core.config import ExperimentConfig, validate
from fedgrad_core.defenses.deepsight import DeepSight

QUICK = {  # notebooks/profiles.json, quick, table2_edge_case
    "cifar10": dict(model="vgg9_slim", poisoned_data_rate=0.33, pretrain_epochs=6, train_samples=4000),
    "mnist": dict(model="cnn_mnist", poisoned_data_rate=0.5, pretrain_epochs=2, train_samples=2400),
}


class _Twin:
    """The run's DeepSight, plus a second one that judges the same updates."""

    def __init__(self, defense, other: DeepSight):
        self.defense, self.other, self.rows = defense, other, []

    def __getattr__(self, name):
        return getattr(self.defense, name)

    def aggregate(self, global_state, updates, round_idx):
        started = time.perf_counter()
        mine = self.defense.aggregate(global_state, updates, round_idx)
        middle = time.perf_counter()
        theirs = self.other.aggregate(global_state, updates, round_idx)
        self.rows.append(
            (round_idx, sorted(mine.flagged), sorted(theirs.flagged), middle - started, time.perf_counter() - middle)
        )
        return mine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--datasets", nargs="+", default=["mnist", "cifar10"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for dataset in args.datasets:
        config = ExperimentConfig(
            dataset=dataset,
            num_clients=32,
            clients_per_round=10,
            rounds=10,
            local_epochs=1,
            lr=0.02,
            attack="blackbox",
            attack_params={"num_edge": 50},
            defense="deepsight",
            partition="phi",
            noniid=0.5,
            eval_samples=1000,
            pretrain_seed=0,
            eval_every=1,
            seed=args.seed,
            **QUICK[dataset],
        )
        validate(config)
        device = sim.resolve_device(config.device)
        run = sim.setup_run(config, device)
        sim.load_pretrained(run, config, device)
        other = DeepSight(model_factory=run.defense.model_factory, num_noise_samples=args.samples)
        twin = _Twin(run.defense, other)
        for _ in sim.play_rounds(config, dataclasses.replace(run, defense=twin), device, range(1, config.rounds + 1)):
            pass
        agree = sum(a == b for _, a, b, _, _ in twin.rows)
        for r, a, b, ta, tb in twin.rows:
            print(f"{dataset} round {r:2d}: 2,000 inputs flag {a} ({ta:.1f} s); {args.samples} flag {b} ({tb:.1f} s)")
        pool = len(run.pool)
        print(f"{dataset}: flagged sets equal in {agree} of {len(twin.rows)} rounds ({pool} attackers in pool)")


if __name__ == "__main__":
    main()
