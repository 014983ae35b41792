"""Server cost per round: synthetic rounds, interleaved timing and the hardware they ran on.

The paper (section 6.1, Figure 9) makes the server's aggregation time part of FedGrad's claim: it
averages the server's time over 150 rounds of a black-box attack on CIFAR-10 (Intel Xeon Gold CPU,
NVIDIA V100) and reads FedGrad about 8.2x faster than RFA and 1.2x faster than Krum, slower only
than RLR.  This module measures the same quantity, ``Defense.aggregate`` for one round, on
synthetic rounds of a chosen model size and number of clients K, for ``benchmarks/`` and the
``fig9_server_time`` notebook alike.

Assumptions, stated once:

* A synthetic round is the global model (a freshly initialised ``make_model``) plus independent
  Gaussian noise of standard deviation ``noise`` per client, with unequal sample counts
  ``50 + 10 i``.  Honest-looking clients: the cost of the pairwise defenses depends on K and the
  model size, not on who is malicious; DeepSight's and FedGrad's clustering costs can vary a
  little with the data, which synthetic rounds do not reproduce.
* Each defense is built once and called round after round on the same clients, as in a run
  (construction, e.g. FedGrad building a model to learn its layer names, is not a per-round cost).
* The machines these run on are often shared, so variants are timed in alternation (A, B, C, A,
  B, C, ...) and medians reported: a burst of load from elsewhere slows all variants alike and
  leaves their ratios roughly intact.  Absolute seconds still depend on the load: record it
  (``hardware_info`` includes the 1-minute load average).
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from fedgrad_core.defenses import ClientUpdate, build_defense
from fedgrad_core.models import make_model

State = dict[str, torch.Tensor]

#: Input channels of the models a synthetic round can be built for (the data set decides them in
#: a run; here the model alone).
IN_CHANNELS = {"digits_mlp": 1, "cnn_mnist": 1, "lenet": 1, "vgg9": 3, "vgg9_slim": 3, "vgg9_narrow": 3, "resnet18": 3}

#: Name of the reference aggregation in every timing table: a plain in-place sample-weighted average.
FLOOR = "floor"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> Optional[float]:
    """The 1-minute load average (None where the OS does not report one)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def hardware_info() -> dict[str, Any]:
    """What the numbers came from: CPU, cores, torch and its threads, the GPU if any, the load now."""
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_1min": load_average(),
    }


def hardware_line(info: Optional[Mapping[str, Any]] = None) -> str:
    """One line naming the hardware (``hardware_info()`` unless given) for printed results."""
    info = hardware_info() if info is None else info
    load = info.get("load_average_1min")
    return (
        f"hardware: {info['cpu']}, {info['logical_cpus']} logical CPUs, torch {info['torch_version']} with "
        f"{info['torch_threads']} threads, {info['gpu'] or 'no GPU used'}; 1-minute load average "
        f"{'?' if load is None else f'{load:.1f}'} (shared machine: compare ratios)"
    )


def interleaved_times(
    variants: Mapping[str, Callable[[], object]], repeats: int, *, warmup: bool = True
) -> dict[str, list[float]]:
    """Seconds of each of ``repeats`` calls of every variant, the variants alternating within a pass.

    ``warmup`` first calls every variant once, untimed (lazy initialisation, caches, first-touch
    page faults); a variant too slow to repeat is better timed on its own with ``repeats=1`` and
    ``warmup=False``, which gives the seconds of a first call.
    """
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"every variant needs at least one timed call, got repeats = {repeats!r}")
    if warmup:
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def interleaved_medians(
    variants: Mapping[str, Callable[[], object]], repeats: int, *, warmup: bool = True
) -> dict[str, float]:
    """Median seconds of each variant over its timed calls (see ``interleaved_times``)."""
    return {name: statistics.median(t) for name, t in interleaved_times(variants, repeats, warmup=warmup).items()}


def loglog_slope(ks: Sequence[float], seconds: Sequence[float]) -> float:
    """Least-squares slope of log(seconds) against log(K): 1 is linear in K, 2 quadratic."""
    if len(ks) != len(seconds):
        raise ValueError(f"{len(ks)} K values but {len(seconds)} times")
    if len(set(ks)) < 2:
        raise ValueError(f"a slope needs at least two different K values, got {list(ks)}")
    if any(k <= 0 for k in ks) or any(s <= 0 for s in seconds):
        raise ValueError("K values and times must be positive for a log-log slope")
    xs, ys = [math.log(k) for k in ks], [math.log(s) for s in seconds]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def in_channels_of(model_name: str) -> int:
    try:
        return IN_CHANNELS[model_name]
    except KeyError:
        raise ValueError(
            f"no input channels known for model {model_name!r}; pass in_channels (known: {sorted(IN_CHANNELS)})"
        ) from None


def synthetic_round(
    model_name: str,
    k: int,
    *,
    in_channels: Optional[int] = None,
    num_classes: int = 10,
    seed: int = 0,
    noise: float = 0.001,
) -> tuple[State, list[ClientUpdate]]:
    """A global model and K clients: the global state plus Gaussian noise, ``50 + 10 i`` samples each.

    Deterministic for ``seed`` (the model from ``make_model(seed)``, the noise from a private
    generator seeded ``seed + 1``); the global RNG is not touched.
    """
    if k < 1:
        raise ValueError(f"a round needs at least one client, got K = {k}")
    channels = in_channels_of(model_name) if in_channels is None else in_channels
    model = make_model(model_name, in_channels=channels, num_classes=num_classes, seed=seed)
    global_state = {n: t.detach().clone() for n, t in model.state_dict().items()}
    gen = torch.Generator().manual_seed(seed + 1)
    updates = []
    for i in range(k):
        state = {
            n: t + noise * torch.randn(t.shape, generator=gen) if torch.is_floating_point(t) else t.clone()
            for n, t in global_state.items()
        }
        updates.append(ClientUpdate(i, state, 50 + 10 * i))
    return global_state, updates


def weighted_average_floor(global_state: Mapping[str, torch.Tensor], updates: Sequence[ClientUpdate]) -> State:
    """The floor: sum_i (n_i / n) w_i, tensor by tensor, accumulated in place.

    The least any aggregation rule must do (one pass over the K x d numbers); non-float buffers are
    taken from the global model.
    """
    if not updates:
        raise ValueError("the weighted average needs at least one update")
    total = float(sum(u.num_samples for u in updates))
    if total <= 0:
        raise ValueError(f"the updates' sample counts must sum to a positive number, got {total}")
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


def server_seconds(
    model_name: str,
    k: int,
    defenses: Sequence[str],
    *,
    repeats: int = 3,
    seed: int = 0,
    defense_params: Optional[Mapping[str, Mapping[str, Any]]] = None,
    warmup: bool = True,
) -> dict[str, float]:
    """Median seconds of one ``aggregate`` call per defense, and of the floor, on one synthetic round.

    ``defense_params`` gives a defense's parameters by name (FedGrad's hard filter acts only from
    its ``switch_round``: pass ``{"fedgrad": {"switch_round": 1}}`` to time the full method).  The
    round number passed to ``aggregate`` counts up from 1 per defense, as in a run.  The result
    maps ``FLOOR`` and every defense name to seconds.
    """
    if FLOOR in defenses:
        raise ValueError(f"{FLOOR!r} is the reference timed for every setting, not a defense")
    channels = in_channels_of(model_name)
    global_state, updates = synthetic_round(model_name, k, in_channels=channels, seed=seed)

    def factory(model_name: str = model_name, channels: int = channels) -> torch.nn.Module:
        return make_model(model_name, in_channels=channels, num_classes=10, seed=seed)

    context = {"seed": seed, "attacker_fraction": 0.25, "model_factory": factory, "num_classes": 10}
    variants: dict[str, Callable[[], object]] = {FLOOR: lambda: weighted_average_floor(global_state, updates)}
    for name in defenses:
        defense = build_defense(name, dict((defense_params or {}).get(name, {})), context)
        rounds = iter(range(1, 10**9))

        def call(defense=defense, rounds=rounds) -> None:  # bound now, not when called
            defense.aggregate(global_state, updates, next(rounds))

        variants[name] = call
    return interleaved_medians(variants, repeats, warmup=warmup)
