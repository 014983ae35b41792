"""Whom a defense excludes, and what the excluded clients' classes lose (beyond the paper).

The paper reports FedGrad's false-positive rate (Table 4: about 0.3) but not *which* benign
clients are excluded nor what their exclusion costs.  These helpers measure it from a run's
history and its final model:

* ``client_label_counts`` / ``label_distances``: each client's label histogram as the simulation
  splits the training set, and the total variation distance of its label distribution from the
  federation's, ``TV(p_i, p) = 1/2 sum_c |p_i(c) - p(c)|`` (0: same mix; 1: disjoint classes);
* ``exclusion_table``: per benign client, the rounds it joined and the rounds the defense
  excluded it.  "Excluded" is the defense's ``flagged`` set, except for FoolsGold, which rarely
  gives an exact 0: a client counts as excluded there when its FoolsGold weight is below
  ``weight_below`` (default 0.01, i.e. under 1% of a full client's say);
* ``per_class_accuracy`` and ``final_per_class_accuracy``: the accuracy of the final global model
  on each class of the test set.  A run's history records accuracy over all classes only, and the
  run cache keeps no model, so ``final_per_class_accuracy`` runs the configuration once with a
  checkpoint at the last round, evaluates that model per class and caches the numbers (and the run
  itself) beside the run cache.

Assumptions: a run is a pure function of its configuration (``fedgrad_core.runs``), so the
client split rebuilt by ``client_label_counts`` is the one the run trained on; attackers are left
out of the exclusion table (excluding them is the point).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from fedgrad_core.config import ExperimentConfig
from fedgrad_core.results import RunResult, atomic_write

#: FoolsGold weight below which a client counts as excluded (``exclusion_table``'s default).
FOOLSGOLD_EXCLUDED_BELOW = 0.01


def label_counts(labels: Any, num_classes: int) -> np.ndarray:
    """Histogram of integer ``labels`` over ``num_classes`` classes (ValueError outside the range)."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes - 1}], found {labels.min()}..{labels.max()}")
    return np.bincount(labels, minlength=num_classes)


def total_variation(p: Any, q: Any) -> float:
    """``1/2 sum |p - q|`` of two histograms, each normalised to sum 1 first."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"histograms of different lengths: {p.shape} and {q.shape}")
    if (p < 0).any() or (q < 0).any() or not p.sum() > 0 or not q.sum() > 0:
        raise ValueError("histograms must be non-negative with a positive total")
    return float(0.5 * np.abs(p / p.sum() - q / q.sum()).sum())


def label_distances(counts: Any) -> np.ndarray:
    """TV distance of every row of ``counts`` (clients x classes) from the column totals' mix."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2:
        raise ValueError(f"counts must be a clients x classes matrix, got shape {counts.shape}")
    federation = counts.sum(axis=0)
    return np.array([total_variation(row, federation) for row in counts])


def client_label_counts(config: ExperimentConfig) -> np.ndarray:
    """Clients x classes label counts of the clients' own shards, split as ``config``'s run splits
    them (``simulation.setup_run``: same attack set-up, partition and seed)."""
    from fedgrad_core.simulation import setup_run

    run = setup_run(config, "cpu")
    return np.stack([label_counts(shard.y.numpy(), run.task.num_classes) for shard in run.shards])


def excluded_in_round(
    record: dict[str, Any], defense: str, *, weight_below: float = FOOLSGOLD_EXCLUDED_BELOW
) -> set[int]:
    """Client ids the round's aggregation left out: ``flagged``, or FoolsGold weight < ``weight_below``."""
    if defense != "foolsgold":
        return {int(c) for c in record["flagged"]}
    weights = record.get("defense", {}).get("weights")
    if weights is None:
        raise ValueError(f"round {record.get('round')}: a FoolsGold record without diagnostics['weights']")
    return {int(c) for c, w in weights.items() if w < weight_below}


def exclusion_table(result: RunResult, *, weight_below: float = FOOLSGOLD_EXCLUDED_BELOW):
    """One row per benign client that joined a round: ``client``, ``joined`` (rounds), ``excluded``
    (rounds left out), ``frequency`` = excluded / joined (pandas DataFrame, sorted by client)."""
    import pandas as pd

    joined: dict[int, int] = {}
    excluded: dict[int, int] = {}
    for record in result.history:
        attackers = {int(c) for c in record["attackers"]}
        out = excluded_in_round(record, result.config.defense, weight_below=weight_below)
        for c in record["selected"]:
            if int(c) in attackers:
                continue
            joined[int(c)] = joined.get(int(c), 0) + 1
            excluded[int(c)] = excluded.get(int(c), 0) + (int(c) in out)
    rows = [{"client": c, "joined": joined[c], "excluded": excluded[c]} for c in sorted(joined)]
    table = pd.DataFrame(rows, columns=["client", "joined", "excluded"])
    return table.assign(frequency=table["excluded"] / table["joined"])


def per_class_accuracy(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, *, device: str = "cpu"
) -> np.ndarray:
    """Accuracy of ``model`` on the examples of each class (NaN for a class absent from ``y``)."""
    from fedgrad_core.training import predict

    y = torch.as_tensor(y, dtype=torch.int64).cpu()
    correct = (predict(model, x, device=device) == y).to(torch.float64)
    totals = np.bincount(y.numpy(), minlength=num_classes).astype(np.float64)
    hits = np.bincount(y.numpy(), weights=correct.numpy(), minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, hits / np.where(totals > 0, totals, 1.0), np.nan)


def final_per_class_accuracy(
    config: ExperimentConfig, *, cache_dir: Optional[str | Path] = None
) -> tuple[RunResult, np.ndarray]:
    """(the run's result, per-class test accuracy of its final global model), computed once.

    Cached as ``perclass-<run file name>`` in the run cache's folder (same key as the run: the
    configuration and the package's code); the run itself is stored in the run cache as well.
    """
    from fedgrad_core.checkpoint import load_checkpoint
    from fedgrad_core.runs import cache_path, config_key, load_cached, store
    from fedgrad_core.simulation import resolve_device, run_experiment, setup_run

    run_file = cache_path(config, cache_dir)
    path = run_file.with_name("perclass-" + run_file.name)
    if path.exists():
        saved = json.loads(path.read_text())
        cached = load_cached(config, cache_dir)
        if saved.get("cache_key") == config_key(config) and cached is not None:
            return cached, np.array([np.nan if a is None else a for a in saved["per_class_accuracy"]])
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "final.ckpt"
        result = run_experiment(config, checkpoint_every=config.rounds, checkpoint_path=ckpt, progress=False)
        final_state = load_checkpoint(ckpt).global_state
    device = resolve_device(config.device)
    run = setup_run(config, device)
    run.model.load_state_dict(final_state)
    accuracy = per_class_accuracy(run.model, run.task.test.x, run.task.test.y, run.task.num_classes, device=device)
    result = store(result, cache_dir)
    payload = {
        "cache_key": config_key(config),
        "config": config.to_dict(),
        "per_class_accuracy": [None if np.isnan(a) else float(a) for a in accuracy],
    }
    atomic_write(path, lambda fh: fh.write(json.dumps(payload, indent=1).encode()))
    return result, accuracy


def final_per_class_many(
    configs: Sequence[ExperimentConfig], *, workers: Optional[int] = None, cache_dir: Optional[str | Path] = None
) -> list[tuple[RunResult, np.ndarray]]:
    """``final_per_class_accuracy`` of every configuration, in order, in ``workers`` spawned
    processes (default: one per core, at most one per configuration; 1: in this process), each
    with ``cores // workers`` torch threads, as ``runs.run_many`` does."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from fedgrad_core.runs import _from_json, _init_worker, threads_per_worker

    configs = list(configs)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    count = min(workers or os.cpu_count() or 1, max(len(configs), 1))
    if count == 1:
        return [final_per_class_accuracy(c, cache_dir=cache_dir) for c in configs]
    threads = threads_per_worker(count)
    cache = None if cache_dir is None else str(cache_dir)
    context = multiprocessing.get_context("spawn")  # as run_many: forking after OpenMP ran can hang
    with ProcessPoolExecutor(count, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
        done = [f.result() for f in [pool.submit(_per_class_worker, c.to_dict(), cache) for c in configs]]
    return [(_from_json(data), np.array(acc)) for data, acc in done]


def _per_class_worker(config: dict[str, Any], cache_dir: Optional[str]) -> tuple[dict[str, Any], list[float]]:
    result, accuracy = final_per_class_accuracy(ExperimentConfig.from_dict(config), cache_dir=cache_dir)
    return result.to_json(), accuracy.tolist()


__all__ = [
    "FOOLSGOLD_EXCLUDED_BELOW",
    "client_label_counts",
    "excluded_in_round",
    "exclusion_table",
    "final_per_class_accuracy",
    "final_per_class_many",
    "label_counts",
    "label_distances",
    "per_class_accuracy",
    "total_variation",
]
