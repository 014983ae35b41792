"""DeepSight's cost per aggregation against ``noise_batch_size`` (2,000 vs the default 500), side by side.

    python benchmarks/deepsight_noise_batch.py

Synthetic 10-client rounds (the global model plus Gaussian noise, three clients noisier) for the
MNIST CNN and VGG-9-slim, 1 torch thread, each setting timed twice, interleaved; prints the
seconds, the flagged sets (they must agree) and the ratio.  Not part of ``make bench`` (minutes).
"""

from __future__ import annotations

import functools
import time

import torch

from fedgrad_core.defenses.base import ClientUpdate
from fedgrad_core.defenses.deepsight import DeepSight
from fedgrad_core.models import make_model


def _noisy(state: dict[str, torch.Tensor], scale: float, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {k: v + scale * torch.randn(v.shape, generator=gen) for k, v in state.items()}


def main() -> None:
    torch.set_num_threads(1)
    for name, channels in (("cnn_mnist", 1), ("vgg9_slim", 3)):
        factory = functools.partial(make_model, name, in_channels=channels, num_classes=10, seed=0)
        g = factory().state_dict()
        gen = torch.Generator().manual_seed(0)
        updates = [ClientUpdate(i, _noisy(g, 0.01 * (1 + (i >= 7)), gen), 100 + i) for i in range(10)]
        seconds: dict[int, list[float]] = {2000: [], 500: []}
        for batch in (2000, 500, 2000, 500):
            started = time.perf_counter()
            result = DeepSight(model_factory=factory, noise_batch_size=batch).aggregate(g, updates, 1)
            seconds[batch].append(time.perf_counter() - started)
            print(f"{name}: noise_batch_size {batch}: {seconds[batch][-1]:.2f} s, flagged {sorted(result.flagged)}")
        print(f"{name}: 2,000 / 500 = {sum(seconds[2000]) / sum(seconds[500]):.2f}x")


if __name__ == "__main__":
    main()
