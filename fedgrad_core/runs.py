"""Run cache and many runs at once: a run is computed once per (configuration, package code).

``run_cached(config)`` returns the stored result when this exact configuration was run before by
this version of ``fedgrad_core``, and runs it (then stores it) otherwise.  The key is the SHA-256
of the configuration's ``to_dict()`` together with ``fedgrad_core.__version__``: every field that
can change a result is in the config (the seed included), so a reader who changes one parameter
reruns only the runs that parameter touches, and Figure 6 reuses Table 2's runs.  Results live as
RunResult JSON files, ``<runs dir>/<dataset>-<defense>-<attack>-s<seed>-<key>.json``, written
atomically (a crashed or parallel writer never leaves half a file).

Assumptions: a run is a pure function of its configuration and the package's code (the
simulation draws every random number from generators seeded by the config's seed); the data
*source* is not in the key (the offline lossy CIFAR-10 copy and the original batches would share
an entry), but every result records the source in ``meta["data_source"]``, and notebooks show it.  Nor is
the hardware: a run computed on a GPU (or with batched clients, ``client_batching="auto"``) is
reused on a CPU; such results agree in distribution, not bit for bit, and ``meta`` says where each
one ran.
The key also holds ``results.code_fingerprint()``, a hash of the package's source files, so a
change to the code (a local edit included) never serves runs computed by the old code; runs of
other code stay in the folder until it is cleared.

``run_many(configs, executor=...)`` runs the configurations that are not cached yet, in parallel:

* ``"local"`` (default): worker processes on this machine, ``workers`` of them (default: one per
  core, at most one per pending run), each limited to ``cores // workers`` torch threads so the
  cores are used but not oversubscribed.  Workers are *spawned* (fresh interpreters), so a script
  that calls ``run_many`` needs the usual ``if __name__ == "__main__":`` guard (notebooks do not);
* ``"sequential"``: one after the other in this process (what the others must equal);
* ``"ray"``: Ray tasks (``fedgrad_core.integrations.ray_executor``; ``pip install
  fedgrad-core[ray]``), for a cluster.

Results come back in the order of ``configs`` and are the cached JSON.  Every executor gives the
same histories, bit for bit, when each run gets the same number of torch threads (``threads``):
floating-point sums are ordered by thread, so at different thread counts values differ in the last
bits (measured on digits: FedGrad's scores by about 1e-8, the decisions and accuracies not).  The
wall-clock ``aggregation_seconds`` is the only part of a history that is not a function of the
configuration.  Runs that share a pretrained starting model wait for the first of them, so
the (cached) pretraining is done once instead of once per worker.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from fedgrad_core import cache
from fedgrad_core.config import ExperimentConfig, validate
from fedgrad_core.results import RunResult, atomic_write

log = logging.getLogger(__name__)

EXECUTORS = ("local", "sequential", "ray")


#: The cache key of a run (``cache.run_key``), under the name the book and notebooks use.
config_key = cache.run_key


def runs_dir(cache_dir: Optional[str | Path] = None) -> Path:
    """Where cached runs live: ``cache_dir``, else ``<cache root>/runs`` (``cache.root``)."""
    return Path(cache_dir) if cache_dir is not None else cache.root() / "runs"


def cache_path(config: ExperimentConfig, cache_dir: Optional[str | Path] = None) -> Path:
    """The file that holds (or will hold) the result of ``config``."""
    c = config
    return runs_dir(cache_dir) / f"{c.dataset}-{c.defense}-{c.attack}-s{c.seed}-{config_key(c)[:20]}.json"


def load_cached(config: ExperimentConfig, cache_dir: Optional[str | Path] = None) -> Optional[RunResult]:
    """The cached result of ``config``, or None (absent, unreadable, or written for another config)."""
    path = cache_path(config, cache_dir)
    if not path.exists():
        return None
    try:
        result = RunResult.load(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # a damaged file is recomputed, not trusted
        log.warning("ignoring unreadable cached run %s (%s)", path, exc)
        return None
    if _canonical(result.config.to_dict()) != _canonical(config.to_dict()):  # prefix collision or a hand-edited file
        log.warning("ignoring cached run %s: it holds another configuration", path)
        return None
    return result


def run_cached(
    config: ExperimentConfig, *, cache_dir: Optional[str | Path] = None, progress: bool = False
) -> RunResult:
    """The result of ``config``: from the cache when this version already ran it, else run and store it.

    The returned result is always the stored JSON form (a fresh run is written, then read back),
    so a cache hit and a fresh run are indistinguishable.
    """
    from fedgrad_core.simulation import run_experiment

    cached = load_cached(config, cache_dir)
    if cached is not None:
        log.info("cached run %s", cache_path(config, cache_dir))
        return cached
    result = run_experiment(config, progress=progress)
    return store(result, cache_dir)


def store(result: RunResult, cache_dir: Optional[str | Path] = None) -> RunResult:
    """Write ``result`` to the cache (atomically) and return it as read back from its JSON."""
    path = cache_path(result.config, cache_dir)
    text = json.dumps(result.to_json(), indent=1)
    atomic_write(path, lambda fh: fh.write(text.encode()))
    log.info("run stored at %s", path)
    data = json.loads(text)
    return RunResult(ExperimentConfig.from_dict(data["config"]), data["history"], data["meta"])


def run_many(
    configs: Sequence[ExperimentConfig],
    *,
    executor: str = "local",
    workers: Optional[int] = None,
    threads: Optional[int] = None,
    cache_dir: Optional[str | Path] = None,
    progress: Optional[bool] = None,
    **executor_options: Any,
) -> list[RunResult]:
    """Results of ``configs`` (same order), running only the ones not in the cache.

    ``executor`` is ``"local"`` (worker processes), ``"sequential"`` or ``"ray"``; ``workers`` caps
    the parallel runs (default: the number of cores for ``"local"``); ``threads`` is the torch
    thread count of each run (default: ``cores // workers`` for ``"local"``, torch's current
    setting for ``"sequential"``, ``cpus_per_run`` for Ray).  Every configuration is
    validated before anything runs, so a typo fails at once instead of after an hour.
    Extra keyword arguments go to the Ray executor (e.g. ``num_gpus=1`` per run).  ``progress``
    shows a bar of finished runs; ``None`` (default): shown unless the environment sets
    ``FEDGRAD_PROGRESS=0`` (book/run_notebooks.py does, so the book's pages show no bars).
    """
    if progress is None:
        progress = os.environ.get("FEDGRAD_PROGRESS", "1") != "0"
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose one of {list(EXECUTORS)}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    if executor_options and executor != "ray":
        raise ValueError(f"options {sorted(executor_options)} are for executor='ray' only")
    configs = list(configs)
    for c in configs:
        if not isinstance(c, ExperimentConfig):
            raise TypeError(f"run_many takes ExperimentConfig objects, got {type(c).__name__}")
        validate(c)

    results: dict[str, RunResult] = {}
    pending: dict[str, ExperimentConfig] = {}  # key -> config, duplicates run once
    for c in configs:
        key = config_key(c)
        if key in results or key in pending:
            continue
        cached = load_cached(c, cache_dir)
        if cached is not None:
            results[key] = cached
        else:
            pending[key] = c
    log.info("%d runs: %d cached, %d to run (%s)", len(configs), len(results), len(pending), executor)

    bar = _bar(len(results) + len(pending), len(results), progress)
    try:
        if pending:
            todo = list(pending.values())
            if executor == "ray":
                from fedgrad_core.integrations.ray_executor import run_many_ray

                if threads is not None:
                    executor_options.setdefault("cpus_per_run", threads)
                fresh = run_many_ray(todo, workers=workers, on_done=lambda _: bar.update(1), **executor_options)
                for result in fresh:
                    results[config_key(result.config)] = store(result, cache_dir)
            elif executor == "sequential" or len(todo) == 1 or workers == 1:
                with _torch_threads(threads):
                    for c in todo:
                        results[config_key(c)] = run_cached(c, cache_dir=cache_dir)
                        bar.update(1)
            else:
                for result in _run_local(todo, workers, threads, cache_dir, on_done=lambda _: bar.update(1)):
                    results[config_key(result.config)] = result
    finally:
        bar.close()
    return [results[config_key(c)] for c in configs]


#: Configuration fields copied onto every row of ``save_tidy``'s CSV.
TIDY_CONFIG_COLUMNS = (
    "dataset",
    "model",
    "defense",
    "attack",
    "num_clients",
    "clients_per_round",
    "rounds",
    "local_epochs",
    "partition",
    "noniid",
    "attacker_fraction",
    "poisoned_data_rate",
)


def save_tidy(
    runs: Mapping[str, Sequence[RunResult]],
    out_dir: str | Path,
    name: str,
    *,
    profile: str,
    facets: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> tuple[Path, Path]:
    """Write an experiment's results as tidy files: ``<name>.csv`` and ``<name>.json`` in ``out_dir``.

    The CSV has one row per (label, seed, round) with the history's scalar columns, the run's main
    configuration fields (``TIDY_CONFIG_COLUMNS``, model resolved), ``profile``, ``data_source``,
    ``hardware``, ``device`` and ``commit``, plus ``facets[label]`` (e.g. the varied parameter and
    its value).  The JSON holds, per label, every run's full configuration and provenance, so each
    number can be traced to the run behind it.  Both are written atomically.
    """
    import pandas as pd

    from fedgrad_core.report import tidy

    facets = facets or {}
    frames = []
    for label, results in runs.items():
        for result in results:
            frame = tidy({label: [result]})
            c = result.config
            values = {k: getattr(c, k) for k in TIDY_CONFIG_COLUMNS}
            values["model"] = c.model_name
            values["poisoned_data_rate"] = c.poisoned_data_rate if c.poisoned_data_rate is not None else float("nan")
            values.update(
                profile=profile,
                data_source=result.meta.get("data_source"),
                hardware=result.meta.get("hardware"),
                device=result.meta.get("device"),
                commit=result.meta.get("git_commit"),
            )
            values.update(facets.get(label, {}))
            frames.append(frame.assign(**values))
    table = pd.concat(frames, ignore_index=True)
    out = Path(out_dir)
    csv_path, json_path = out / f"{name}.csv", out / f"{name}.json"
    text = table.to_csv(index=False)
    atomic_write(csv_path, lambda fh: fh.write(text.encode()))
    record = {
        "profile": profile,
        "labels": {
            label: {
                "facets": dict(facets.get(label, {})),
                "runs": [
                    {"config": r.config.to_dict(), "cache_key": config_key(r.config), "meta": r.meta} for r in results
                ],
            }
            for label, results in runs.items()
        },
    }
    payload = json.dumps(record, indent=1, default=repr)
    atomic_write(json_path, lambda fh: fh.write(payload.encode()))
    log.info("results written to %s and %s", csv_path, json_path)
    return csv_path, json_path


def threads_per_worker(workers: int, cores: Optional[int] = None) -> int:
    """Torch threads for each of ``workers`` processes on ``cores`` cores (at least one)."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // workers)


def pretrain_group(config: ExperimentConfig) -> tuple:
    """Runs with the same group start from the same cached pretrained model.

    The configuration's part of the pretrained model's key (``cache.pretraining_fields``); the
    rest of that key is the training set, which the attack changes for data sets whose attack setup
    moves examples out of it (tail edge-case sets): there the attack joins the group.
    """
    from fedgrad_core.data.edge_cases import CURATED

    c = config
    changes_train = c.dataset not in CURATED
    attack = (c.attack, json.dumps(dict(c.attack_params), sort_keys=True, default=repr)) if changes_train else None
    return (*sorted(cache.pretraining_fields(c).items()), attack)


@contextlib.contextmanager
def _torch_threads(threads: Optional[int]) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_local(
    todo: list[ExperimentConfig],
    workers: Optional[int],
    threads: Optional[int],
    cache_dir: Optional[str | Path],
    on_done: Callable[[RunResult], None],
) -> list[RunResult]:
    import multiprocessing

    workers = min(workers or os.cpu_count() or 1, len(todo))
    threads = threads or threads_per_worker(workers)
    # Runs whose pretrained model is not cached yet: the first of each group runs before the rest
    # of its group is submitted, so the pretraining is computed once (later ones read its file).
    heads: dict[tuple, ExperimentConfig] = {}
    waiting: dict[tuple, list[ExperimentConfig]] = {}
    for c in todo:
        group = pretrain_group(c) if c.pretrain_epochs else ("no pretraining", config_key(c))
        if group in heads:
            waiting.setdefault(group, []).append(c)
        else:
            heads[group] = c
    log.info("local executor: %d workers x %d torch threads", workers, threads)
    out: list[RunResult] = []
    # spawn: a fresh interpreter per worker; forking a process whose OpenMP threads already ran can hang.
    context = multiprocessing.get_context("spawn")
    cache = None if cache_dir is None else str(cache_dir)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
        running: dict[Future, tuple] = {
            pool.submit(_worker_run, c.to_dict(), cache): group for group, c in heads.items()
        }
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                group = running.pop(future)
                result = _from_json(future.result())
                out.append(result)
                on_done(result)
                for c in waiting.pop(group, []):
                    running[pool.submit(_worker_run, c.to_dict(), cache)] = ("done", config_key(c))
    return out


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)


def _worker_run(config: dict[str, Any], cache_dir: Optional[str]) -> dict[str, Any]:
    return run_cached(ExperimentConfig.from_dict(config), cache_dir=cache_dir).to_json()


def _canonical(data: dict[str, Any]) -> Any:
    # As JSON sees it: a tuple parameter read back from a file is a list.
    return json.loads(json.dumps(data, sort_keys=True, default=repr))


def _from_json(data: dict[str, Any]) -> RunResult:
    return RunResult(ExperimentConfig.from_dict(data["config"]), data["history"], data.get("meta", {}))


def _bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="runs", unit="run", disable=not enabled)


__all__ = [
    "EXECUTORS",
    "TIDY_CONFIG_COLUMNS",
    "cache_path",
    "config_key",
    "load_cached",
    "pretrain_group",
    "run_cached",
    "run_many",
    "runs_dir",
    "save_tidy",
    "store",
    "threads_per_worker",
]
