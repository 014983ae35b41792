"""Local training: samples per second of the simulation's client loop against a bare PyTorch loop.

For each model a synthetic round of K honest clients with unequal data sizes (random inputs of
the data set's shape: speed does not depend on the pixels) is trained three ways, in alternation:

* ``floor``: one model, one ``torch.optim.SGD``, a bare loop over the same batches (what local
  training costs at least: no per-client state loading, no generators, no copies);
* ``sequential``: ``simulation.train_clients`` one client at a time (``client_batching="off"``);
* ``batched``: ``simulation.train_clients`` with the honest clients vmapped together
  (``client_batching="on"``, ``training.local_train_batched``).

It prints samples/s, the overhead of the sequential loop over the floor (target <= 1.25x), the
speed-up of batching over the floor, and which mode ``client_batching="auto"`` picks.  A second
table times evaluation (``training.predict``) at several batch sizes.  A third (``--layout``)
times the CPU's channels-last layout (``training.CPU_CHANNELS_LAST``) against the default one,
for sequential training and evaluation, at the quick profile's client sizes.

    python benchmarks/bench_training.py                 # every model, about 2 minutes on 2 cores
    python benchmarks/bench_training.py --models lenet --repeats 5
    python benchmarks/bench_training.py --device cuda --sizes paper   # on a GPU, the paper's rounds

On CUDA every timed call ends with ``torch.cuda.synchronize()`` (kernels run asynchronously), the
floor's data sit on the GPU, and the simulation's data stay on the CPU as in a run (each batch is
copied over when drawn; batched training copies the round's samples once).
"""

from __future__ import annotations

import argparse
from typing import Callable

import torch
import torch.nn.functional as F

from benchlib import hardware, interleaved_medians
from fedgrad_core.data.task import Split
from fedgrad_core.models import make_model
from fedgrad_core.simulation import BATCHED_BY_DEFAULT, train_clients, use_client_batching
from fedgrad_core import training
from fedgrad_core.training import LocalTraining, predict

#: model: (input shape, clients K, mean samples per client, local epochs).  VGG-9 gets few samples:
#: about 50 samples/s on 2 cores.  Sizes vary from 0.5x to 1.5x the mean (non-IID partitions).
SETTINGS = {
    "digits_mlp": ((1, 8, 8), 10, 90, 2),
    "cnn_mnist": ((1, 28, 28), 10, 150, 2),
    "lenet": ((1, 28, 28), 10, 150, 2),
    "vgg9": ((3, 32, 32), 6, 24, 1),
}

#: The paper's rounds (``--sizes paper``), for a GPU: CIFAR-10 over 200 clients (250 images each,
#: K = 10) for VGG-9; EMNIST over 3,383 clients (about 100 images each, K = 30) for LeNet and the
#: MNIST CNN; 2 local epochs.
PAPER_SETTINGS = {
    "digits_mlp": ((1, 8, 8), 10, 90, 2),
    "cnn_mnist": ((1, 28, 28), 30, 100, 2),
    "lenet": ((1, 28, 28), 30, 100, 2),
    "vgg9": ((3, 32, 32), 10, 250, 2),
}


def synchronised(fn: Callable[[], object], device: str) -> Callable[[], object]:
    """``fn`` followed by a wait for the device's queued kernels (a no-op on the CPU)."""
    if torch.device(device).type != "cuda":
        return fn

    def call() -> None:
        fn()
        torch.cuda.synchronize()

    return call


def synthetic_clients(shape, k: int, mean_size: int, seed: int = 0) -> list[Split]:
    gen = torch.Generator().manual_seed(seed)
    sizes = [max(1, int(mean_size * (0.5 + i / max(k - 1, 1)))) for i in range(k)]
    return [Split(torch.randn(n, *shape, generator=gen), torch.randint(0, 10, (n,), generator=gen)) for n in sizes]


def bare_loop(model: torch.nn.Module, clients: list[Split], settings: LocalTraining, seed: int = 0) -> None:
    """The floor: one model and optimiser, the clients' batches back to back."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                          weight_decay=settings.weight_decay)
    model.train()
    for data in clients:
        for _ in range(settings.epochs):
            order = torch.randperm(len(data), generator=gen)
            for start in range(0, len(data), settings.batch_size):
                idx = order[start : start + settings.batch_size]
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(data.x[idx]), data.y[idx]).backward()
                opt.step()


def bench_model(name: str, repeats: int, device: str = "cpu", sizes: dict = SETTINGS) -> None:
    shape, k, mean_size, epochs = sizes[name]
    clients = synthetic_clients(shape, k, mean_size)
    settings = LocalTraining(lr=0.02, epochs=epochs, batch_size=32)
    samples = epochs * sum(len(c) for c in clients)
    model = make_model(name, in_channels=shape[0], num_classes=10, seed=0)
    global_state = {n: t.detach().clone() for n, t in model.state_dict().items()}
    worker = make_model(name, in_channels=shape[0], num_classes=10, seed=0).to(device)
    floor_model = make_model(name, in_channels=shape[0], num_classes=10, seed=0).to(device)
    floor_clients = [Split(c.x.to(device), c.y.to(device)) for c in clients]
    data = dict(enumerate(clients))

    def sim(batched: bool):
        gens = {c: torch.Generator().manual_seed(100 + c) for c in data}
        train_clients(worker, global_state, data, gens, settings, device, batched=batched)

    t = interleaved_medians(
        {"floor": synchronised(lambda: bare_loop(floor_model, floor_clients, settings), device),
         "sequential": synchronised(lambda: sim(False), device),
         "batched": synchronised(lambda: sim(True), device)},
        repeats,
    )
    auto = "batched" if use_client_batching("auto", name, worker, device) else "sequential"
    rate = {m: samples / s for m, s in t.items()}
    print(f"{name:<11} K={k:<3} {samples:>6} {rate['floor']:>9.0f} {rate['sequential']:>9.0f} "
          f"{rate['batched']:>9.0f} {t['sequential'] / t['floor']:>10.2f}x {t['floor'] / t['batched']:>9.2f}x "
          f"{t['sequential'] / t['batched']:>9.2f}x  {auto}", flush=True)


def bench_eval(name: str, repeats: int, n: int = 2048, device: str = "cpu") -> None:
    shape = SETTINGS[name][0]
    model = make_model(name, in_channels=shape[0], num_classes=10, seed=0).to(device)
    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(1))
    sizes = (64, 128, 256, 1000)

    def evaluate(bs: int) -> Callable[[], object]:
        return synchronised(lambda: predict(model, x, batch_size=bs, device=device), device)

    t = interleaved_medians({str(bs): evaluate(bs) for bs in sizes}, repeats)
    print(f"{name:<11} " + " ".join(f"{n / t[str(bs)]:>9.0f}" for bs in sizes), flush=True)


#: The quick profile's rounds: K = 10 clients of 75 MNIST / 125 CIFAR-10 images, 1 local epoch.
QUICK_SIZES = {"cnn_mnist": ((1, 28, 28), 10, 75, 1), "vgg9_slim": ((3, 32, 32), 10, 125, 1)}


def bench_layout(name: str, repeats: int) -> None:
    """Channels-last against the default layout on the CPU, sequential training and evaluation."""
    shape, k, mean_size, epochs = QUICK_SIZES[name]
    clients = synthetic_clients(shape, k, mean_size)
    settings = LocalTraining(lr=0.02, epochs=epochs, batch_size=32)
    model = make_model(name, in_channels=shape[0], num_classes=10, seed=0)
    global_state = {n: t.detach().clone() for n, t in model.state_dict().items()}
    worker = make_model(name, in_channels=shape[0], num_classes=10, seed=0)
    data = dict(enumerate(clients))
    x = torch.randn(1000, *shape, generator=torch.Generator().manual_seed(1))

    def with_layout(fast: bool, fn: Callable[[], object]) -> Callable[[], object]:
        def call() -> None:
            before, training.CPU_CHANNELS_LAST = training.CPU_CHANNELS_LAST, fast
            try:
                fn()
            finally:
                training.CPU_CHANNELS_LAST = before  # the module's own setting, whatever it was

        return call

    def train(batched: bool = False) -> None:
        gens = {c: torch.Generator().manual_seed(100 + c) for c in data}
        train_clients(worker, global_state, data, gens, settings, "cpu", batched=batched)

    def evaluate() -> None:
        predict(model, x)

    jobs = {"train default": with_layout(False, train), "train channels-last": with_layout(True, train),
            "eval default": with_layout(False, evaluate), "eval channels-last": with_layout(True, evaluate)}
    if training.supports_batched(model):
        jobs["train batched"] = with_layout(True, lambda: train(True))
        jobs["train batched"]()  # vmap's first call traces the model: not part of a round's cost
    t = interleaved_medians(jobs, repeats)
    batched = f" {t['train batched'] / t['train channels-last']:>8.2f}x" if "train batched" in t else " " * 10
    print(f"{name:<11} {t['train default']:>8.2f} s {t['train channels-last']:>8.2f} s "
          f"{t['train default'] / t['train channels-last']:>8.2f}x{batched} {t['eval default']:>8.2f} s "
          f"{t['eval channels-last']:>8.2f} s {t['eval default'] / t['eval channels-last']:>8.2f}x", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-eval", action="store_true")
    parser.add_argument("--layout", action="store_true", help="only the channels-last comparison (CPU)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--sizes", choices=["bench", "paper"], default="bench",
                        help="bench: small rounds for a 2-core CPU; paper: the paper's rounds (for a GPU)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device")
    torch.set_num_threads(args.threads)
    sizes = PAPER_SETTINGS if args.sizes == "paper" else SETTINGS
    print(hardware())
    if args.layout:
        print(f"CPU layout, {args.threads} thread(s), median of {args.repeats}, alternating; quick rounds "
              f"(K, mean samples per client, epochs): {QUICK_SIZES}")
        print(f"{'model':<11} {'train default':>10} {'channels-last':>10} {'speed-up':>9} {'vs batched':>9} "
              f"{'eval 1000 default':>10} {'channels-last':>10} {'speed-up':>9}")
        for name in QUICK_SIZES:
            bench_layout(name, args.repeats)
        print("(speed-up = default time / channels-last time; vs batched = batched time / channels-last "
              "sequential time, for models that can be batched)")
        return
    print(f"device {args.device}, {args.sizes} sizes (model: input shape, K, mean samples per client, "
          f"epochs): {sizes}")
    print(f"local training, samples/s (median of {args.repeats}, alternating); batch 32, lr 0.02, momentum 0.9")
    print(f"{'model':<11} {'K':<5} {'samples':>6} {'floor':>9} {'sequential':>9} {'batched':>9} "
          f"{'seq/floor':>11} {'speed-up':>10} {'seq/batch':>10}  auto ({torch.device(args.device).type})")
    for name in args.models:
        bench_model(name, args.repeats, args.device, sizes)
    kind = torch.device(args.device).type
    print(f"(target: seq/floor <= 1.25; speed-up = floor time / batched time; auto on {kind} batches "
          f"{sorted(BATCHED_BY_DEFAULT.get(kind, ()))})")
    if not args.no_eval:
        print("\nevaluation (training.predict under inference_mode), samples/s by batch size")
        print(f"{'model':<11} {'64':>9} {'128':>9} {'256':>9} {'1000':>9}")
        for name in args.models:
            bench_eval(name, args.repeats, device=args.device)


if __name__ == "__main__":
    main()
