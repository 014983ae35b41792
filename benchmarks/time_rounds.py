"""Seconds per round of real experiments (end to end), for calibrating the notebook profiles.

Not part of ``make bench`` (it needs the data: FEDGRAD_DATA_SOURCE, and minutes per experiment).
Wraps ``simulation.run_round`` with a timer and runs ``rounds`` rounds without pretraining;
round 1 includes one-off warm-up.  ``--repo`` times another checkout (e.g. a ``git worktree`` of
an older commit) with this script, for before/after comparisons.

    FEDGRAD_DATA_SOURCE=/work/shared/data python benchmarks/time_rounds.py mnist digits cifar
    python benchmarks/time_rounds.py paper_cifar10 paper_emnist_sized --device cuda --defense fedgrad

The ``paper_*`` experiments are one round of the paper's profile (for a GPU): CIFAR-10 with VGG-9,
200 clients and K = 10 under the black-box attack; and LeNet with K = 30 clients of about 100
images each (EMNIST's 3,383 clients hold about 100 each; offline, MNIST split over 600 clients
stands in).  Each round evaluates (main and backdoor accuracy), as the paper's profile does every
``eval_every`` rounds.  On CUDA each timed round ends with ``torch.cuda.synchronize()``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

EXPERIMENTS: dict[str, dict[str, Any]] = {
    "mnist": dict(dataset="mnist", num_clients=100, attack="blackbox", eval_every=1),
    "digits": dict(dataset="digits", attack="blackbox", eval_every=1),
    # 2,000 clients: 25 CIFAR images each (a reduced round); the last round evaluates
    "cifar": dict(dataset="cifar10", num_clients=2000, attack="none", eval_every=100),
    "paper_cifar10": dict(dataset="cifar10", model="vgg9", num_clients=200, attack="blackbox",
                          poisoned_data_rate=0.33, eval_every=1),
    "paper_emnist_sized": dict(dataset="mnist", model="lenet", num_clients=600, clients_per_round=30,
                               attack="blackbox", poisoned_data_rate=0.5, eval_every=1),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiments", nargs="+", choices=list(EXPERIMENTS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repo", default=None, help="import fedgrad_core from this checkout")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--defense", default="fedavg", help="fedgrad runs with its hard filter from round 1")
    parser.add_argument("--client-batching", default="auto", choices=["auto", "on", "off"])
    args = parser.parse_args(argv)
    if args.repo:
        sys.path.insert(0, args.repo)
    import torch

    torch.set_num_threads(args.threads)
    import fedgrad_core.simulation as sim
    from fedgrad_core.config import ExperimentConfig

    for name in args.experiments:
        times: list[float] = []
        run_round = sim.run_round

        def timed(*a, times=times, run_round=run_round, **k):
            start = time.perf_counter()
            record = run_round(*a, **k)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            return record

        sim.run_round = timed
        try:
            settings = {"clients_per_round": 10, **EXPERIMENTS[name]}
            params = {"switch_round": 1} if args.defense == "fedgrad" else {}
            cfg = ExperimentConfig(rounds=args.rounds, pretrain_epochs=0, device=args.device,
                                   defense=args.defense, defense_params=params,
                                   client_batching=args.client_batching, **settings)
            sim.run_experiment(cfg, progress=False)
        finally:
            sim.run_round = run_round
        print(json.dumps({"experiment": name, "code": sim.__file__, "threads": args.threads,
                          "device": args.device, "defense": args.defense,
                          "client_batching": args.client_batching,
                          "hardware": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
                          "round_seconds": [round(t, 3) for t in times]}), flush=True)


if __name__ == "__main__":
    main()
