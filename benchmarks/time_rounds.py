"""Seconds per round of real experiments (end to end), for calibrating the notebook profiles.

Not part of ``make bench`` (it needs the data: FEDGRAD_DATA_SOURCE, and minutes per experiment).
Wraps ``simulation.run_round`` with a timer and runs ``rounds`` rounds without pretraining;
round 1 includes one-off warm-up.  ``--repo`` times another checkout (e.g. a ``git worktree`` of
an older commit) with this script, for before/after comparisons.

    FEDGRAD_DATA_SOURCE=/work/shared/data python benchmarks/time_rounds.py mnist digits cifar
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
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiments", nargs="+", choices=list(EXPERIMENTS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repo", default=None, help="import fedgrad_core from this checkout")
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
            times.append(time.perf_counter() - start)
            return record

        sim.run_round = timed
        try:
            cfg = ExperimentConfig(clients_per_round=10, rounds=args.rounds, pretrain_epochs=0, device="cpu",
                                   **EXPERIMENTS[name])
            sim.run_experiment(cfg, progress=False)
        finally:
            sim.run_round = run_round
        print(json.dumps({"experiment": name, "code": sim.__file__, "threads": args.threads,
                          "round_seconds": [round(t, 2) for t in times]}), flush=True)


if __name__ == "__main__":
    main()
