"""Peak resident memory: a round of K = 100 LeNet clients, and FedGrad's history at EMNIST scale.

Each measurement runs in a fresh subprocess and reads the kernel's peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``), next to the resident size just before the work
(after imports and set-up), so the difference is what the work itself added at its peak.

* ``round``: K = 100 LeNet clients (1.2M parameters each) train on 20 synthetic MNIST-shaped
  samples each (the data size barely matters: the clients' models dominate), then FedGrad
  aggregates them with its hard filter on.  Expected: 100 trained models (100 x 4.8 MB) plus
  the server's K x d workspace (another 480 MB) plus the Gram blocks.
* ``history``: FedGrad's per-client and per-pair history after every one of EMNIST's 3,383
  clients (the paper's N) took part once in rounds of K = 30 (113 rounds; the model is a small
  one: the history's size depends on the client ids, not the model).  The pair arrays are dense
  (N x N running means of two similarities and a count: 12 bytes a pair).

    python benchmarks/bench_memory.py
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

MB = 1024 * 1024


def rss_now() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def child_round(k: int) -> dict:
    import torch

    from fedgrad_core.data.task import Split
    from fedgrad_core.defenses import build_defense
    from fedgrad_core.models import make_model
    from fedgrad_core.simulation import train_clients
    from fedgrad_core.training import LocalTraining

    gen = torch.Generator().manual_seed(0)
    data = {c: Split(torch.randn(20, 1, 28, 28, generator=gen), torch.randint(0, 10, (20,), generator=gen))
            for c in range(k)}
    worker = make_model("lenet", in_channels=1, num_classes=10, seed=0)
    global_state = {n: t.detach().clone() for n, t in worker.state_dict().items()}
    params = sum(t.numel() for t in global_state.values())
    defense = build_defense("fedgrad", {"switch_round": 1}, {
        "seed": 0, "attacker_fraction": 0.25, "num_classes": 10,
        "model_factory": lambda: make_model("lenet", in_channels=1, num_classes=10, seed=0)})
    before = rss_now()
    gens = {c: torch.Generator().manual_seed(c) for c in data}
    updates = train_clients(worker, global_state, data, gens, LocalTraining(0.02, 1, 32), "cpu")
    defense.aggregate(global_state, updates, 1)
    return {"before": before, "peak": peak_rss(), "params": params, "k": k}


def child_history(num_clients: int, k: int) -> dict:
    import numpy as np
    import torch

    from fedgrad_core.defenses import ClientUpdate, build_defense
    from fedgrad_core.models import make_model

    model = make_model("digits_mlp", in_channels=1, num_classes=10, seed=0)
    global_state = {n: t.detach().clone() for n, t in model.state_dict().items()}
    # switch_round beyond the run: the history is accumulated every round (as in the authors'
    # code), the clustering that reads it is not needed to measure its size.
    defense = build_defense("fedgrad", {"switch_round": 10**6}, {
        "seed": 0, "attacker_fraction": 0.25, "num_classes": 10,
        "model_factory": lambda: make_model("digits_mlp", in_channels=1, num_classes=10, seed=0)})
    gen = torch.Generator().manual_seed(0)
    before = rss_now()
    rounds = -(-num_clients // k)
    for r in range(rounds):
        ids = [(r * k + i) % num_clients for i in range(k)]
        updates = [ClientUpdate(c, {n: t + 0.01 * torch.randn(t.shape, generator=gen) for n, t in global_state.items()},
                                100) for c in ids]
        defense.aggregate(global_state, updates, r + 1)
    arrays = [v for v in vars(defense).values() if isinstance(v, np.ndarray)]
    return {"before": before, "peak": peak_rss(), "rounds": rounds, "clients": num_clients,
            "array_bytes": int(sum(a.nbytes for a in arrays)),
            "array_shapes": [list(a.shape) for a in arrays]}


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", *args],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--clients", type=int, default=3383)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.child:
        kind, *rest = args.child
        result = child_round(int(rest[0])) if kind == "round" else child_history(int(rest[0]), int(rest[1]))
        print(json.dumps(result))
        return
    from benchlib import hardware

    print(hardware())
    r = run_child("round", str(args.k))
    models = r["k"] * r["params"] * 4
    print(f"round, K = {r['k']} LeNet clients ({r['params'] / 1e6:.2f}M parameters): peak RSS "
          f"{r['peak'] / MB:.0f} MB, {(r['peak'] - r['before']) / MB:.0f} MB above the set-up "
          f"({r['before'] / MB:.0f} MB); the K models alone are {models / MB:.0f} MB, "
          f"K models + server workspace {2 * models / MB:.0f} MB")
    h = run_child("history", str(args.clients), "30")
    print(f"FedGrad history, {h['clients']} clients seen ({h['rounds']} rounds of K = 30): pair arrays "
          f"{h['array_bytes'] / MB:.0f} MB (shapes {h['array_shapes']}); peak RSS {h['peak'] / MB:.0f} MB, "
          f"{(h['peak'] - h['before']) / MB:.0f} MB above the set-up")


if __name__ == "__main__":
    main()
