"""Server cost of every registered defense on synthetic rounds, next to a plain weighted average.

Rounds are synthetic: each client is the global model plus small Gaussian noise (seeded).  For
each setting (K = 30 with LeNet, 1.2M parameters; K = 10 with VGG-9, 9.2M parameters) it prints
the median time of ``aggregate`` over ``--repeats`` calls (after one warm-up call), the floor
(a plain sample-weighted average of the state dicts), the ratio to the floor, and the FedGrad
authors' own numbers for their code (from shared/reference/authors-code-notes.md: their machine,
2 CPU cores, 2 torch threads; labelled "theirs").

    python benchmarks/bench_defenses.py --repeats 5
    python benchmarks/bench_defenses.py --settings lenet --defenses krum rfa
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fedgrad_core.defenses import ClientUpdate, available_defenses, build_defense
from fedgrad_core.models import make_model

#: The authors' seconds per call (median of 15) at commit e98a682, from the notes.
THEIRS = {
    "lenet": {"floor": 0.010, "fedavg": 0.052, "krum": 0.37, "multikrum": 0.54, "rfa": 0.42,
              "rlr": 0.28, "foolsgold": 1.06, "flame": 1.17, "fedgrad": 0.46},
    "vgg9": {"floor": 0.029, "fedavg": 0.12, "krum": 0.51, "multikrum": 0.92, "rfa": 1.80,
             "rlr": 1.22, "foolsgold": 2.85, "flame": 1.82, "fedgrad": "1.0-1.3"},
}
SETTINGS = {"lenet": (30, 1), "vgg9": (10, 3)}  # model: (clients per round, input channels)


def synthetic_round(model_name: str, k: int, in_channels: int, seed: int = 0):
    global_state = {
        n: t.detach().clone()
        for n, t in make_model(
            model_name, in_channels=in_channels, num_classes=10, seed=seed
        ).state_dict().items()
    }
    gen = torch.Generator().manual_seed(seed + 1)
    updates = [
        ClientUpdate(
            i,
            {n: t + 0.001 * torch.randn(t.shape, generator=gen) for n, t in global_state.items()},
            50 + 10 * i,
        )
        for i in range(k)
    ]
    return global_state, updates


def plain_weighted_average(global_state, updates):
    total = float(sum(u.num_samples for u in updates))
    out = {}
    for name, tensor in global_state.items():
        if not torch.is_floating_point(tensor):
            out[name] = tensor.clone()
            continue
        acc = torch.zeros_like(tensor)
        for u in updates:
            acc.add_(u.state[name], alpha=u.num_samples / total)
        out[name] = acc
    return out


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, lazy imports)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--defenses", nargs="+", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # DeepSight runs every local model on 3 x 20,000 noise inputs (its paper's DDifs): minutes per
    # call for 30 LeNets on a CPU, so it is measured only when named with --defenses deepsight.
    names = args.defenses or [n for n in available_defenses() if n != "deepsight"]

    for model_name in args.settings:
        k, in_channels = SETTINGS[model_name]
        global_state, updates = synthetic_round(model_name, k, in_channels)
        params = sum(t.numel() for t in global_state.values())

        def factory(model_name=model_name, in_channels=in_channels):
            return make_model(model_name, in_channels=in_channels, num_classes=10, seed=0)

        context = {"seed": 0, "attacker_fraction": 0.25, "model_factory": factory,
                   "num_classes": 10}
        floor = median_seconds(lambda: plain_weighted_average(global_state, updates), args.repeats)
        theirs = THEIRS[model_name]
        print(f"\n{model_name}: K = {k}, {params / 1e6:.2f}M parameters, "
              f"{args.threads} torch threads, median of {args.repeats}")
        print(f"{'defense':<12} {'ours (s)':>9} {'x floor':>8} {'theirs (s)':>11} {'theirs x floor':>15}")
        print(f"{'floor':<12} {floor:>9.3f} {1.0:>8.1f} {theirs['floor']:>11} {1.0:>15.1f}")
        for name in names:
            round_idx = iter(range(1, 10**6))

            # FedGrad's hard filter acts from switch_round: measure the full method from round 1.
            params = {"switch_round": 1} if name == "fedgrad" else {}

            def call(name=name, params=params):
                defense = build_defense(name, params, context)
                defense.aggregate(global_state, updates, next(round_idx))

            # construction is cheap for every defense; stateful ones start from an empty history
            seconds = median_seconds(call, args.repeats)
            t = theirs.get(name, "-")
            t_ratio = f"{t / theirs['floor']:.1f}" if isinstance(t, float) else "-"
            print(f"{name:<12} {seconds:>9.3f} {seconds / floor:>8.1f} {t!s:>11} {t_ratio:>15}", flush=True)


if __name__ == "__main__":
    main()
