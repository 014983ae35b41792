"""Local SGD for one client, and evaluation; nothing here knows about attacks or defenses.

Attacks act through ``TrainingHooks``; this module only calls them.  Randomness (shuffling,
dropout) comes from the generator handed in, never from the caller's global RNG: the global RNG is
forked, seeded from that generator and restored around the work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
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
    layout = _fast_layout(model, device)
    model.to(memory_format=layout)  # before the optimiser: it keeps the parameters, not copies
    model.train()
    optimiser = torch.optim.SGD(
        model.parameters(),
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )
    step = 0
    try:
        with torch.random.fork_rng(devices=_cuda_devices(device)):
            _seed_global(seed_from(generator), device)  # dropout masks
            for _ in range(settings.epochs):
                order = torch.randperm(len(data), generator=generator)
                for start in range(0, len(data), settings.batch_size):
                    idx = order[start : start + settings.batch_size]
                    x, y = hooks.transform_batch(data.x[idx], data.y[idx])
                    x, y = _to(x, device, layout), y.to(device, non_blocking=True)
                    optimiser.zero_grad(set_to_none=True)
                    loss = hooks.loss(model, F.cross_entropy(model(x), y))
                    loss.backward()
                    optimiser.step()
                    step += 1
                    hooks.after_step(model, step)
    finally:
        model.to(memory_format=torch.contiguous_format)  # callers and defenses see plain tensors
    hooks.after_training(model)
    return step


def supports_batched(model: nn.Module) -> bool:
    """Whether ``local_train_batched`` can train copies of ``model``: it has no buffers.

    Buffers (BatchNorm's running statistics) are updated in place during training, which a
    functional, vmapped step cannot do per client.
    """
    return next(iter(model.buffers()), None) is None


def local_train_batched(
    model: nn.Module,
    datasets: Sequence[Split],
    settings: LocalTraining,
    *,
    generators: Sequence[torch.Generator],
    device: torch.device | str = "cpu",
) -> list[dict[str, Tensor]]:
    """Train K copies of ``model`` (its current weights) at once, one per data set; honest clients only.

    Same algorithm as ``local_train`` for each client (the paper's local SGD: momentum, weight
    decay, ``settings.epochs`` passes over a fresh permutation): the K models' parameters are
    stacked along a leading axis and one step of all of them is one vmapped
    ``torch.func.grad`` of ``functional_call``, followed by the SGD update written out with the
    same formula as ``torch.optim.SGD`` (dampening 0, no Nesterov).

    Each client draws from its own generator exactly what ``local_train`` draws (one seed, then
    one permutation per epoch), so every client sees the same batches in the same order as when
    trained alone.  The results equal sequential training in distribution, not bit for bit:
    batched kernels sum in another order, and dropout masks come from one stream seeded from
    all the clients' seeds.  They are deterministic for given generators.

    Clients with fewer samples take fewer steps: clients are ordered by their number of steps,
    longest first, so the clients still training are always a prefix of the stack (a view, no
    copy); the last batch of an epoch is padded and its padding weighted 0 in the loss.

    ``model`` is not changed.  Returns one state dict per data set, in the order given.
    """
    if len(datasets) != len(generators):
        raise ValueError(f"got {len(datasets)} data sets but {len(generators)} generators")
    if not datasets:
        return []
    if any(len(d) == 0 for d in datasets):
        raise ValueError("local_train_batched got an empty data set")
    if not supports_batched(model):
        raise ValueError(f"{type(model).__name__} has buffers; train it with local_train")
    from torch.func import functional_call, grad, vmap

    bs, epochs = settings.batch_size, settings.epochs
    seeds, schedules = [], []
    for data, gen in zip(datasets, generators):
        seeds.append(seed_from(gen))  # as local_train: the dropout seed first, then the permutations
        schedules.append(torch.cat([torch.randperm(len(data), generator=gen) for _ in range(epochs)]))
    steps = [epochs * -(-len(d) // bs) for d in datasets]
    order = sorted(range(len(datasets)), key=lambda i: -steps[i])  # stable: ties keep their order
    k, total_steps = len(order), steps[order[0]]

    # All clients' samples in one tensor; batch s of client j is rows index[s, j] with weights w[s, j].
    offsets = torch.tensor([0] + [len(datasets[i]) for i in order]).cumsum(0)
    x_all = torch.cat([datasets[i].x for i in order]).to(device)
    y_all = torch.cat([datasets[i].y for i in order]).to(device)
    index = torch.zeros((total_steps, k, bs), dtype=torch.int64)
    weight = torch.zeros((total_steps, k, bs), dtype=x_all.dtype)
    for j, i in enumerate(order):
        n = len(datasets[i])
        step = 0
        for e in range(epochs):
            perm = schedules[i][e * n : (e + 1) * n]
            for start in range(0, n, bs):
                idx = perm[start : start + bs]
                index[step, j, : len(idx)] = idx + offsets[j]
                weight[step, j, : len(idx)] = 1.0 / len(idx)  # the batch mean, as cross_entropy's
                step += 1
    active = [sum(1 for i in order if steps[i] > s) for s in range(total_steps)]
    index, weight = index.to(device), weight.to(device)

    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach().to(device).unsqueeze(0).repeat_interleave(k, 0) for n, p in model.named_parameters()}
    momentum_buf = {n: torch.zeros_like(p) for n, p in params.items()}
    was_training = model.training
    model.train()

    def batch_loss(p: dict[str, Tensor], x: Tensor, y: Tensor, w: Tensor) -> Tensor:
        logits = functional_call(model, p, (x,))
        return (F.cross_entropy(logits, y, reduction="none") * w).sum()

    step_grads = vmap(grad(batch_loss), randomness="different")
    lr, mom, wd = settings.lr, settings.momentum, settings.weight_decay
    try:
        with torch.random.fork_rng(devices=_cuda_devices(device)):
            _seed_global(int(np.random.SeedSequence(seeds).generate_state(1, dtype=np.uint64)[0] >> 2), device)
            for s in range(total_steps):
                m = active[s]
                idx = index[s, :m]
                view = {n: params[n][:m] for n in names}
                grads = step_grads(view, x_all[idx], y_all[idx], weight[s, :m])
                for n in names:  # torch.optim.SGD: d = g + wd p; buf = mom buf + d (buf = d at step 1); p -= lr buf
                    p, buf, d = view[n], momentum_buf[n][:m], grads[n]
                    if wd:
                        d.add_(p, alpha=wd)
                    if s == 0 or not mom:
                        buf.copy_(d)
                    else:
                        buf.mul_(mom).add_(d)
                    p.add_(buf, alpha=-lr)
    finally:
        model.train(was_training)

    states: list[dict[str, Tensor]] = [{} for _ in order]
    for j, i in enumerate(order):
        states[i] = {
            n: (params[n][j].clone() if n in params else t.detach().clone()) for n, t in model.state_dict().items()
        }
    return states


#: Inputs per forward pass in ``predict``: large enough to amortise the per-call overhead, small
#: enough that a LeNet's activations (64 x 24 x 24 floats a sample) stay cache-sized; measured on
#: a shared 2-core CPU, LeNet evaluated 1.3-1.9x faster in batches of 64-128 than of 1000.
EVAL_BATCH = 128

#: On a GPU the per-call overhead dominates small batches: on an H200, batches of 1,000 evaluated
#: 1.5x (VGG-9) to 2.9x (the MNIST CNN) faster than batches of 128 (benchmarks/RESULTS.md, GPU).
EVAL_BATCH_CUDA = 1024


def predict(
    model: nn.Module, x: Tensor, *, batch_size: Optional[int] = None, device: torch.device | str = "cpu"
) -> Tensor:
    """Predicted labels for ``x`` (on the CPU), in batches under ``torch.inference_mode``.

    ``batch_size`` defaults to ``EVAL_BATCH`` on the CPU and ``EVAL_BATCH_CUDA`` on a GPU.  The
    labels are written into one preallocated tensor; the model is left in eval mode.
    """
    if batch_size is None:
        batch_size = EVAL_BATCH_CUDA if torch.device(device).type == "cuda" else EVAL_BATCH
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model.eval()
    layout = _fast_layout(model, device)
    model.to(memory_format=layout)
    out = torch.empty(len(x), dtype=torch.int64)
    try:
        with torch.inference_mode():
            for i in range(0, len(x), batch_size):
                out[i : i + batch_size] = model(_to(x[i : i + batch_size], device, layout)).argmax(1).cpu()
    finally:
        model.to(memory_format=torch.contiguous_format)
    return out


#: Convolutions on the CPU run faster with channels-last tensors (oneDNN's layout): measured at one
#: thread on the shared 2-core CPU (benchmarks/RESULTS.md, section 7), a training step of batch 32
#: 1.55x (MNIST CNN) and 1.24x (VGG-9-slim) faster, evaluation 1.9x and 1.75x.  The layout
#: changes only the order of the sums inside a convolution: results agree to float rounding.
CPU_CHANNELS_LAST = True


def _fast_layout(model: nn.Module, device: torch.device | str) -> torch.memory_format:
    """channels-last for a convolutional model on the CPU (see ``CPU_CHANNELS_LAST``), else the default."""
    convolutional = any(p.dim() == 4 for p in model.parameters())
    if CPU_CHANNELS_LAST and convolutional and torch.device(device).type == "cpu":
        return torch.channels_last
    return torch.contiguous_format


def _to(x: Tensor, device: torch.device | str, layout: torch.memory_format) -> Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=layout) if x.dim() == 4 else x


def _seed_global(seed: int, device: torch.device | str) -> None:
    """Seed the global generator(s) that ``device``'s kernels draw dropout masks from.

    The same seeds as ``torch.manual_seed``, without its cost: on a machine with CUDA built in but
    not initialised, ``torch.manual_seed`` queues a lazy CUDA call that records a stack trace,
    about 4 ms a call (15% of a small model's local training, measured with cProfile).
    """
    torch.default_generator.manual_seed(seed)
    dev = torch.device(device)
    if dev.type == "cuda":
        with torch.cuda.device(dev):
            torch.cuda.manual_seed(seed)


def _cuda_devices(device: torch.device | str) -> list[int]:
    dev = torch.device(device)
    if dev.type != "cuda":
        return []
    return [dev.index if dev.index is not None else torch.cuda.current_device()]
