"""The one federated round loop shared by every defense and attack.

sample K of N clients -> local training (attack hooks for attackers) -> defense aggregates (timed)
-> evaluate main and backdoor accuracy -> record TPR / FPR -> checkpoint.

Every random choice is drawn from a generator seeded by (seed, purpose, round, client), so a round
does not depend on how many random numbers earlier rounds drew: the same seed gives the same
history, and a resumed run continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional

import numpy as np
import torch
from tqdm import tqdm  # plain text bar: also readable in logs and executed notebooks

from fedgrad_core import cache
from fedgrad_core.attacks import Attack, RoundContext, make_attack
from fedgrad_core.checkpoint import Checkpoint, config_differences, load_checkpoint, save_checkpoint
from fedgrad_core.config import ExperimentConfig, attack_params, defense_context, validate
from fedgrad_core.data import load_task
from fedgrad_core.data.partition import partition
from fedgrad_core.data.task import Split, Task
from fedgrad_core.defenses import ClientUpdate, build_defense
from fedgrad_core.defenses.base import Defense, copy_state
from fedgrad_core.models import make_model
from fedgrad_core.results import RunResult, atomic_write, provenance
from fedgrad_core.training import LocalTraining, local_train, local_train_batched, predict, supports_batched

log = logging.getLogger(__name__)

# Purposes of the seeded generators (any fixed distinct integers).
_POOL, _SAMPLE, _TRAIN, _PRETRAIN, _PARTITION, _SUBSAMPLE = 1, 2, 3, 4, 5, 6
#: The seed of the evaluation subsample (``eval_samples``): fixed, so every run and seed is measured
#: on the same test images.
_EVAL_SEED = 20240607


def rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def torch_generator(seed: int, *keys: int) -> torch.Generator:
    value = int(np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(value)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    return device


def attacker_pool(config: ExperimentConfig) -> tuple[int, ...]:
    """The fixed attacker pool: ``num_attackers`` client ids drawn once from the seed."""
    chosen = rng(config.seed, _POOL).choice(config.num_clients, size=config.num_attackers, replace=False)
    return tuple(sorted(int(c) for c in chosen))


def sample_clients(config: ExperimentConfig, round_idx: int) -> tuple[int, ...]:
    chosen = rng(config.seed, _SAMPLE, round_idx).choice(
        config.num_clients, size=config.clients_per_round, replace=False
    )
    return tuple(sorted(int(c) for c in chosen))


@dataclass
class RunSetup:
    """What a run is made of before its first round: the attack and its task, the clients' shards,
    the attacker pool, the global model (freshly initialised), a worker model for local training
    and the defense."""

    attack: Attack
    task: Task
    backdoor: Optional[Split]
    shards: list[Split]
    pool: tuple[int, ...]
    model: torch.nn.Module
    worker: torch.nn.Module
    defense: Defense


def setup_run(config: ExperimentConfig, device: str) -> RunSetup:
    """Build a run's pieces from ``config`` (no pretraining, no checkpoint): the one set-up shared
    by ``run_experiment`` and by tools that replay its rounds (``theory.capture_round``)."""
    attack = make_attack(config.attack, **attack_params(config))
    task = attack.setup(cached_task(config.dataset), seed=config.seed)
    if config.eval_samples is not None and config.eval_samples < len(task.test):
        task = dataclasses.replace(task, test=task.test.subset(stratified_subsample(task.test.y, config.eval_samples)))
    pool_idx = np.arange(len(task.train))
    if config.train_samples is not None and config.train_samples < len(task.train):
        pool_idx = stratified_subsample(task.train.y, config.train_samples, seed=(config.seed, _SUBSAMPLE))
    shards = [
        task.train.subset(pool_idx[idx])
        for idx in partition(
            task.train.y.numpy()[pool_idx],
            config.num_clients,
            scheme=config.partition,
            noniid=config.noniid,
            seed=int(rng(config.seed, _PARTITION).integers(2**31)),
        )
    ]
    shape = dict(in_channels=task.image_shape[0], num_classes=task.num_classes, seed=config.seed)
    backdoor = attack.backdoor_test_set()
    if config.eval_samples is not None and backdoor is not None and config.eval_samples < len(backdoor):
        # A trigger's backdoor set is the whole test split stamped (about 9,000 images): measured on
        # a fixed subsample like main accuracy.  Edge-case sets (ARDIS, Southwest) are smaller.
        backdoor = backdoor.subset(stratified_subsample(backdoor.y, config.eval_samples))
    return RunSetup(
        attack=attack,
        task=task,
        backdoor=backdoor,
        shards=shards,
        pool=attacker_pool(config),
        model=make_model(config.model_name, **shape).to(device),
        worker=make_model(config.model_name, **shape).to(device),
        defense=build_defense(config.defense, config.defense_params, defense_context(config)),
    )


def cached_task(name: str) -> Task:
    """``load_task(name)``, loaded once per process: a worker running many configurations of one
    data set normalises it once (3.4 s a run for CIFAR-10 on one core, profiled).  Runs never
    change a ``Task`` (frozen; splits are copied by ``subset``), so sharing it is safe.  The key
    holds the data set's loader and the data environment, so a plug-in or another data folder is
    never served a stale copy."""
    from fedgrad_core.data.datasets import DATASETS

    env = tuple(os.environ.get(k) for k in ("FEDGRAD_DATA_ROOT", "FEDGRAD_DATA_SOURCE"))
    return _cached_task(name, DATASETS.factory(name), env)


@functools.lru_cache(maxsize=2)
def _cached_task(name: str, loader: Any, env: tuple[Optional[str], ...]) -> Task:
    return load_task(name)


def stratified_subsample(labels: torch.Tensor, size: int, *, seed: tuple[int, ...] = (_EVAL_SEED,)) -> np.ndarray:
    """Sorted indices of ``size`` of ``labels`` drawn without replacement, each class in proportion
    (largest remainders), from a generator seeded by ``seed``."""
    y = labels.numpy()
    if not 1 <= size <= len(y):
        raise ValueError(f"subsample size must be in [1, {len(y)}], got {size}")
    generator = np.random.default_rng(list(seed))
    classes, counts = np.unique(y, return_counts=True)
    exact = counts * size / len(y)
    take = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - take), kind="stable")[: size - int(take.sum())]:
        take[i] += 1
    chosen = [generator.choice(np.flatnonzero(y == c), size=n, replace=False) for c, n in zip(classes, take)]
    return np.sort(np.concatenate(chosen))


def run_experiment(
    config: ExperimentConfig,
    *,
    out: Optional[str | Path] = None,
    checkpoint_every: Optional[int] = None,
    checkpoint_path: Optional[str | Path] = None,
    resume: bool = False,
    progress: bool = True,
    stop_after: Optional[int] = None,
) -> RunResult:
    """Run ``config`` and return its result; also saved to ``out`` (JSON) when given.

    ``checkpoint_every`` rounds, the state (global model, the defense's ``state_dict()``, history)
    is written atomically to ``checkpoint_path`` (default: ``out`` + ``.ckpt``); with ``resume`` a
    run continues from it (``fedgrad_core.checkpoint``: loaded with ``weights_only=True``, so a
    checkpoint cannot run code; one written for another configuration is refused).
    ``stop_after`` ends the run after that round (as an interrupted run would), for tests.
    """
    validate(config)
    device = resolve_device(config.device)
    ckpt = Path(checkpoint_path) if checkpoint_path else (Path(str(out) + ".ckpt") if out else None)
    if (checkpoint_every or resume) and ckpt is None:
        raise ValueError("checkpointing needs out= or checkpoint_path=")

    run = setup_run(config, device)
    meta = {**provenance(device), "data_source": run.task.source, "attacker_pool": list(run.pool)}

    history: list[dict[str, Any]] = []
    start_round = 1
    if resume and ckpt is not None and ckpt.exists():
        saved = load_checkpoint(ckpt)  # weights_only: refuses anything that could run code
        differences = config_differences(saved.config, config.to_dict())
        if differences:
            raise ValueError(
                f"checkpoint {ckpt} was written for a different configuration ({'; '.join(differences)}); "
                "resume with the same configuration or start afresh without resume"
            )
        run.model.load_state_dict(saved.global_state)
        run.defense.load_state_dict(saved.defense_state)
        history, start_round = saved.history, saved.round + 1
        log.info("resumed from %s after round %d", ckpt, saved.round)
    else:
        load_pretrained(run, config, device)

    last_round = min(config.rounds, stop_after) if stop_after else config.rounds
    bar = tqdm(
        play_rounds(config, run, device, range(start_round, last_round + 1)),
        desc=f"{config.defense}/{config.attack}",
        disable=not progress,
        initial=start_round - 1,
        total=last_round,
        unit="round",
    )
    for record in bar:
        history.append(record)
        bar.set_postfix(main=_fmt(_latest(history, "main_acc")), backdoor=_fmt(_latest(history, "backdoor_acc")))
        round_idx = record["round"]
        if ckpt is not None and checkpoint_every and (round_idx % checkpoint_every == 0 or round_idx == last_round):
            state = Checkpoint(config.to_dict(), round_idx, run.model.state_dict(), history, run.defense.state_dict())
            save_checkpoint(ckpt, state)

    result = RunResult(config, history, meta)
    if out is not None:
        result.save(out)
        log.info("results written to %s", out)
    return result


def load_pretrained(run: RunSetup, config: ExperimentConfig, device: str) -> None:
    """Start ``run``'s global model from the pretrained model (``pretrained_state``) when
    ``config`` pretrains; nothing otherwise."""
    if config.pretrain_epochs:
        run.model.load_state_dict(pretrained_state(config, run.task, device))


def play_rounds(
    config: ExperimentConfig, run: RunSetup, device: str, rounds: Iterable[int]
) -> Iterator[dict[str, Any]]:
    """Play ``rounds`` of ``run`` in order (``run_round``), yielding each round's history record."""
    for round_idx in rounds:
        yield run_round(config, round_idx, run, device)


def run_round(config: ExperimentConfig, round_idx: int, run: RunSetup, device: str) -> dict[str, Any]:
    """One round: train the selected clients, aggregate, evaluate; returns the history record."""
    attack, task, backdoor, shards, pool = run.attack, run.task, run.backdoor, run.shards, run.pool
    model, worker, defense = run.model, run.worker, run.defense
    selected = sample_clients(config, round_idx)
    attackers = tuple(c for c in selected if c in pool)
    lr = config.lr * config.lr_decay ** (round_idx - 1)
    benign = LocalTraining(lr, config.local_epochs, config.batch_size, config.momentum, config.weight_decay)
    global_state = copy_state(model.state_dict())

    generators = {c: torch_generator(config.seed, _TRAIN, round_idx, c) for c in selected}
    data = {
        c: attack.client_data(c, pool.index(c), shards[c], round_idx, generators[c]) if c in pool else shards[c]
        for c in selected
    }
    ctx = RoundContext(round_idx, global_state, selected, attackers, {c: len(d) for c, d in data.items()}, lr)
    batched = use_client_batching(config.client_batching, config.model_name, worker, device)
    updates = train_clients(
        worker, global_state, data, generators, benign, device, batched=batched, attack=attack, pool=pool, ctx=ctx
    )

    # The server works on the CPU whatever device the clients trained on: the defenses' matrices
    # and clusterings (scikit-learn) are CPU code.  A no-op (no copy) when training ran there.
    server_global = on_cpu(global_state)
    server_updates = [ClientUpdate(u.client_id, on_cpu(u.state), u.num_samples) for u in updates]
    started = time.perf_counter()
    aggregate = defense.aggregate(server_global, server_updates, round_idx)
    seconds = time.perf_counter() - started
    model.load_state_dict(aggregate.global_state)

    flagged = sorted(int(c) for c in aggregate.flagged)
    benign_ids = [c for c in selected if c not in attackers]
    record: dict[str, Any] = {
        "round": round_idx,
        "main_acc": None,
        "backdoor_acc": None,
        "tpr": _share(flagged, attackers),
        "fpr": _share(flagged, benign_ids),
        "attackers": list(attackers),
        "flagged": flagged,
        "selected": list(selected),
        "aggregation_seconds": seconds,
        "lr": lr,
    }
    if round_idx % config.eval_every == 0 or round_idx == config.rounds:
        record["main_acc"] = accuracy(model, task.test, device)
        record["backdoor_acc"] = accuracy(model, backdoor, device) if backdoor is not None else None
    if aggregate.diagnostics:
        record["defense"] = _jsonable(aggregate.diagnostics)
    return record


#: Models whose honest clients train faster batched (``local_train_batched``) than one by one, per
#: device type; measured with benchmarks/bench_training.py on a shared 2-core CPU (benchmarks/
#: RESULTS.md), batched time over sequential: digits_mlp 0.3-0.6x, LeNet 1.7x and VGG-9 2.2x (their
#: large convolutions run slower as the grouped convolutions vmap makes of them); the MNIST CNN
#: 1.45-1.55x slower batched than one by one in the channels-last layout (``--layout``).
BATCHED_BY_DEFAULT: dict[str, frozenset[str]] = {
    "cpu": frozenset({"digits_mlp"}),
    # On a GPU one vmapped step of K models fills the device where one model's step leaves it
    # idle: measured on an H200 (bench_training.py --device cuda --sizes paper), batched over
    # sequential 2.4x (VGG-9, K = 10), 6.9x (MNIST CNN, K = 30), 7.4x (LeNet, K = 30).
    "cuda": frozenset({"digits_mlp", "cnn_mnist", "lenet", "vgg9"}),
}


def use_client_batching(mode: str, model_name: str, model: torch.nn.Module, device: str) -> bool:
    """Whether the round's honest clients train batched: ``mode`` is "on", "off" or "auto".

    "auto" follows ``BATCHED_BY_DEFAULT`` for the device; a model with buffers (BatchNorm) always
    trains one client at a time, and asking "on" for one is an error.
    """
    if mode == "off":
        return False
    supported = supports_batched(model)
    if mode == "on":
        if not supported:
            raise ValueError(f"client_batching='on' needs a model without buffers; {model_name!r} has some")
        return True
    if mode != "auto":
        raise ValueError(f"client_batching must be 'auto', 'on' or 'off', got {mode!r}")
    return supported and model_name in BATCHED_BY_DEFAULT.get(torch.device(device).type, frozenset())


def train_clients(
    worker: torch.nn.Module,
    global_state: dict[str, torch.Tensor],
    data: dict[int, Split],
    generators: dict[int, torch.Generator],
    benign: LocalTraining,
    device: str,
    *,
    batched: bool = False,
    attack=None,
    pool: tuple[int, ...] = (),
    ctx: Optional[RoundContext] = None,
) -> list[ClientUpdate]:
    """Local training of the round's clients (the keys of ``data``), each from ``global_state``.

    Attackers (clients in ``pool``) always train one at a time, through the attack's hooks.  With
    ``batched`` the honest clients train together (``local_train_batched``: same batches, equal in
    distribution, not bit-identical to one at a time); otherwise one at a time in ``worker``.
    Returns the updates in the order of ``data``.
    """
    honest = [c for c in data if c not in pool]
    states: dict[int, dict[str, torch.Tensor]] = {}
    if batched and len(honest) > 1:
        worker.load_state_dict(global_state)
        trained = local_train_batched(
            worker, [data[c] for c in honest], benign, generators=[generators[c] for c in honest], device=device
        )
        states.update(zip(honest, trained))
    for c in data:
        if c in states:
            continue
        worker.load_state_dict(global_state)
        if c in pool:
            rank = pool.index(c)
            hooks = attack.training_hooks(c, rank, ctx, generators[c])
            local_train(
                worker, data[c], attack.local_training(benign), generator=generators[c], hooks=hooks, device=device
            )
            states[c] = attack.after_training(copy_state(worker.state_dict()), c, rank, ctx)
        else:
            local_train(worker, data[c], benign, generator=generators[c], device=device)
            states[c] = copy_state(worker.state_dict())
    return [ClientUpdate(c, states[c], len(data[c])) for c in data]


def accuracy(model: torch.nn.Module, split: Split, device: str) -> float:
    """Share of ``split`` predicted as its labels (for a backdoor set: as the attacker's target)."""
    return float((predict(model, split.x, device=device) == split.y).double().mean())


def pretrained_state(config: ExperimentConfig, task: Task, device: str) -> dict[str, torch.Tensor]:
    """Centralised training of the starting model on the clean training set, cached on disk.

    The paper starts from a pretrained global model (about 10 epochs).  The cache key
    (``cache.pretrained_key``) covers everything that changes the result: data set, its source and
    size, model, epochs, lr, batch size, seed and the package's code.
    """
    path = cache.pretrained_path(config, source=task.source, n_train=len(task.train))
    if path.exists():
        log.info("pretrained model from cache %s", path)
        return torch.load(path, map_location="cpu", weights_only=True)
    model = make_model(
        config.model_name, in_channels=task.image_shape[0], num_classes=task.num_classes, seed=config.pretraining_seed
    )
    model.to(device)
    settings = LocalTraining(
        config.pretrain_lr, config.pretrain_epochs, config.batch_size, config.momentum, config.weight_decay
    )
    local_train(
        model, task.train, settings, generator=torch_generator(config.pretraining_seed, _PRETRAIN), device=device
    )
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda fh: torch.save(state, fh))
    log.info("pretrained model cached at %s", path)
    return state


def on_cpu(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every tensor on the CPU; tensors already there are the same objects, not copies."""
    return {k: v.cpu() for k, v in state.items()}


def _share(flagged: list[int], group: list[int] | tuple[int, ...]) -> Optional[float]:
    """Share of ``group`` that was flagged; None when the group is empty (rate undefined)."""
    if not group:
        return None
    return sum(1 for c in group if c in flagged) / len(group)


def _latest(history: list[dict[str, Any]], key: str) -> Optional[float]:
    return next((r[key] for r in reversed(history) if r.get(key) is not None), None)


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3f}"


def _jsonable(value: Any) -> Any:
    """Diagnostics as plain JSON types (tensors and numpy values become lists and numbers)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return [_jsonable(v) for v in items]
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
