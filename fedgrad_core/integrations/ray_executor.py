"""Run many simulations as Ray tasks: the only module of fedgrad_core that imports Ray.

``fedgrad_core.runs.run_many(configs, executor="ray")`` calls ``run_many_ray``; install the extra
with ``pip install fedgrad-core[ray]``.  Each configuration becomes one Ray task that runs the
simulation and returns the result as JSON data; the caller stores it in the run cache, so the
cluster's nodes need no shared file system and the cache looks exactly as after a sequential run.

Resources: by default a task asks for one CPU (Ray then runs as many tasks at once as the cluster
has CPUs, and each task's torch uses ``cpus_per_run`` threads); pass ``num_gpus=1`` to give each
run one GPU (a config with ``device="auto"`` then trains on it), as the paper profile does.
Ray is started with ``ray.init()`` when it is not running yet (set ``RAY_ADDRESS`` to join a
cluster); ``init_kwargs`` go to that call (tests pass ``num_cpus`` for a small local instance).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from fedgrad_core.config import ExperimentConfig
from fedgrad_core.results import RunResult


def _require_ray():
    try:
        import ray
    except ImportError as exc:
        raise ImportError(
            "executor='ray' needs Ray: pip install 'fedgrad-core[ray]' (or choose executor='local')"
        ) from exc
    return ray


def _run_one(config: dict[str, Any], threads: int) -> dict[str, Any]:
    """Body of one Ray task: the simulation of ``config`` (no cache lookup: the caller did it)."""
    import torch

    from fedgrad_core.simulation import run_experiment

    torch.set_num_threads(threads)
    return run_experiment(ExperimentConfig.from_dict(config), progress=False).to_json()


def run_many_ray(
    configs: Sequence[ExperimentConfig],
    *,
    workers: Optional[int] = None,
    cpus_per_run: int = 1,
    num_gpus: float = 0,
    on_done: Optional[Callable[[RunResult], None]] = None,
    init_kwargs: Optional[dict[str, Any]] = None,
) -> list[RunResult]:
    """Run ``configs`` as Ray tasks; results in the order of ``configs`` (not cached here).

    ``workers`` caps how many tasks are in flight at once (default: no cap beyond the cluster's
    resources).
    """
    if isinstance(cpus_per_run, bool) or not isinstance(cpus_per_run, int) or cpus_per_run < 1:
        raise ValueError(f"cpus_per_run must be a positive integer, got {cpus_per_run!r}")
    if num_gpus < 0:
        raise ValueError(f"num_gpus must be >= 0, got {num_gpus!r}")
    ray = _require_ray()
    if not ray.is_initialized():
        ray.init(**(init_kwargs or {}))
    task = ray.remote(num_cpus=cpus_per_run, num_gpus=num_gpus)(_run_one)

    configs = list(configs)
    limit = workers or len(configs)
    results: dict[int, RunResult] = {}
    in_flight: dict[Any, int] = {}
    next_index = 0
    while next_index < len(configs) or in_flight:
        while next_index < len(configs) and len(in_flight) < limit:
            in_flight[task.remote(configs[next_index].to_dict(), cpus_per_run)] = next_index
            next_index += 1
        done, _ = ray.wait(list(in_flight), num_returns=1)
        for ref in done:
            index = in_flight.pop(ref)
            data = ray.get(ref)
            result = RunResult(ExperimentConfig.from_dict(data["config"]), data["history"], data.get("meta", {}))
            results[index] = result
            if on_done is not None:
                on_done(result)
    return [results[i] for i in range(len(configs))]


__all__ = ["run_many_ray"]
