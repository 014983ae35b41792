"""Local SGD for one client, and evaluation; nothing here knows about attacks or defenses.

Attacks act through ``TrainingHooks``; this module only calls them.  Randomness (shuffling,
dropout) comes from the generator handed in, never from the caller's global RNG: the global RNG is
forked, seeded from that generator and restored around the work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedgrad_core.data.task import Split


@dataclass(frozen=True)
class LocalTraining:
    """Hyper-parameters of one client's local SGD (the paper's: momentum 0.9, weight decay 1e-4)."""

    lr: float
    epochs: int
    batch_size: int
    momentum: float = 0.9
    weight_decay: float = 1e-4


class TrainingHooks:
    """Per-batch hooks inside local training; the defaults do nothing."""

    def transform_batch(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Change a batch before the forward pass (e.g. stamp a trigger, relabel)."""
        return x, y

    def loss(self, model: nn.Module, task_loss: Tensor) -> Tensor:
        """The loss to minimise, given the batch's cross-entropy (e.g. add an anomaly term)."""
        return task_loss

    def after_step(self, model: nn.Module, step: int) -> None:
        """Called after each optimiser step (``step`` counts from 1), e.g. PGD projection."""

    def after_training(self, model: nn.Module) -> None:
        """Called once after the last step."""


def seed_from(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=generator).item())


def local_train(
    model: nn.Module,
    data: Split,
    settings: LocalTraining,
    *,
    generator: torch.Generator,
    hooks: Optional[TrainingHooks] = None,
    device: torch.device | str = "cpu",
) -> int:
    """Train ``model`` in place on ``data`` with SGD; returns the number of optimiser steps.

    ``data`` lives on the CPU; batches move to ``device`` as they are drawn, so a large data set
    never has to fit on the accelerator.
    """
    if len(data) == 0:
        raise ValueError("local_train got an empty data set")
    hooks = hooks or TrainingHooks()
    model.train()
    optimiser = torch.optim.SGD(
        model.parameters(),
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )
    step = 0
    with torch.random.fork_rng(devices=_cuda_devices(device)):
        torch.manual_seed(seed_from(generator))  # dropout masks
        for _ in range(settings.epochs):
            order = torch.randperm(len(data), generator=generator)
            for start in range(0, len(data), settings.batch_size):
                idx = order[start : start + settings.batch_size]
                x, y = hooks.transform_batch(data.x[idx], data.y[idx])
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                optimiser.zero_grad(set_to_none=True)
                loss = hooks.loss(model, F.cross_entropy(model(x), y))
                loss.backward()
                optimiser.step()
                step += 1
                hooks.after_step(model, step)
    hooks.after_training(model)
    return step


@torch.no_grad()
def predict(
    model: nn.Module, x: Tensor, *, batch_size: int = 1000, device: torch.device | str = "cpu"
) -> Tensor:
    """Predicted labels for ``x`` (on the CPU)."""
    model.eval()
    out = [model(x[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)


def _cuda_devices(device: torch.device | str) -> list[int]:
    dev = torch.device(device)
    if dev.type != "cuda":
        return []
    return [dev.index if dev.index is not None else torch.cuda.current_device()]
