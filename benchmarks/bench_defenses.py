"""Server cost of every registered defense on synthetic rounds, next to a plain weighted average.

Rounds are synthetic: each client is the global model plus small Gaussian noise (seeded).  For
LeNet-sized (1.2M parameters) and VGG-9-sized (9.2M) updates and K clients per round it prints
the median time of ``aggregate`` over ``--repeats`` calls (after one warm-up call; defenses timed
in alternation, so load from elsewhere hits all alike), and side by side:

* ``x floor``: ours over the floor (a plain in-place sample-weighted average of the state dicts);
* ``x krum``: ours over Krum's time in the same run (target for FedGrad: <= 1);
* ``theirs/ours``: the FedGrad authors' own seconds for their code over ours, where they were
  measured (K = 30 LeNet, K = 10 VGG-9; from shared/reference/authors-code-notes.md: a machine
  like ours, 2 CPU cores, 2 torch threads; target for FedGrad: >= 10);

then the log-log slope of time against K for every defense (1: linear in K; the pairwise
defenses' Gram matrix is K^2 d, so slopes above 1 appear where it dominates).  FedGrad runs with
its hard filter on from round 1 (``switch_round=1``).  DeepSight runs only when named.

    python benchmarks/bench_defenses.py                      # LeNet K=10,30,100; VGG-9 K=10,30
    python benchmarks/bench_defenses.py --settings lenet --ks 30 --defenses krum fedgrad
    python benchmarks/bench_defenses.py --vgg-ks 10 30 100   # VGG-9 K=100: 3.7 GB per copy
"""

from __future__ import annotations

import argparse

import torch

from benchlib import hardware
from fedgrad_core.defenses import available_defenses
from fedgrad_core.timing import FLOOR, loglog_slope, server_seconds, synthetic_round

#: The authors' seconds per call (median of 15) at commit e98a682, from the notes.
THEIRS = {
    ("lenet", 30): {"floor": 0.010, "fedavg": 0.052, "krum": 0.37, "multikrum": 0.54, "rfa": 0.42,
                    "rlr": 0.28, "foolsgold": 1.06, "flame": 1.17, "fedgrad": 0.46},
    ("vgg9", 10): {"floor": 0.029, "fedavg": 0.12, "krum": 0.51, "multikrum": 0.92, "rfa": 1.80,
                   "rlr": 1.22, "foolsgold": 2.85, "flame": 1.82, "fedgrad": 1.15},  # theirs: 1.0-1.3 s
}
MODELS = ("lenet", "vgg9")


def bench_setting(model_name: str, k: int, names: list[str], repeats: int) -> dict[str, float]:
    params = sum(t.numel() for t in synthetic_round(model_name, 1)[0].values())
    # FedGrad's hard filter acts from switch_round: measure the full method from round 1.
    t = server_seconds(model_name, k, names, repeats=repeats, defense_params={"fedgrad": {"switch_round": 1}})
    theirs = THEIRS.get((model_name, k), {})
    print(f"\n{model_name}: K = {k}, {params / 1e6:.2f}M parameters, median of {repeats}")
    print(f"{'defense':<12} {'ours (s)':>9} {'x floor':>8} {'x krum':>7} {'theirs (s)':>11} {'theirs/ours':>12}")
    for name, seconds in t.items():
        x_krum = f"{seconds / t['krum']:.2f}" if "krum" in t else "-"
        th = theirs.get(name)
        print(f"{name:<12} {seconds:>9.4f} {seconds / t[FLOOR]:>8.1f} {x_krum:>7} "
              f"{th if th is not None else '-':>11} {f'{th / seconds:.1f}' if th else '-':>12}", flush=True)
    return t


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--settings", nargs="+", default=["lenet", "vgg9"], choices=list(MODELS))
    parser.add_argument("--lenet-ks", "--ks", nargs="+", type=int, default=[10, 30, 100], dest="lenet_ks")
    parser.add_argument("--vgg-ks", nargs="+", type=int, default=[10, 30])
    parser.add_argument("--defenses", nargs="+", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(hardware())
    # DeepSight runs every local model on 3 x 20,000 noise inputs (its paper's DDifs): minutes per
    # call for 30 LeNets on a CPU, so it is measured only when named with --defenses deepsight.
    names = args.defenses or [n for n in available_defenses() if n != "deepsight"]
    for model_name in args.settings:
        ks = args.lenet_ks if model_name == "lenet" else args.vgg_ks
        results = {k: bench_setting(model_name, k, names, args.repeats) for k in ks}
        if len(ks) >= 2:
            print(f"\n{model_name}: log-log slope of seconds against K over K = {ks}")
            for name in [FLOOR, *names]:
                print(f"  {name:<12} {loglog_slope(ks, [results[k][name] for k in ks]):.2f}")


if __name__ == "__main__":
    main()
