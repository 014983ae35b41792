"""What fedgrad_core computes once and keeps: one root folder and the keys of its two kinds of entry.

The root is ``$FEDGRAD_CACHE``, else ``~/.cache/fedgrad/cache``.  Runs live in ``<root>/runs``
(``fedgrad_core.runs``), keyed by ``run_key``; pretrained starting models in ``<root>/pretrained``
(``simulation.pretrained_state``), keyed by ``pretrained_key``.  Both keys hold
``results.code_fingerprint()``, so a change to the code never serves an entry of the old code.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from fedgrad_core.config import ExperimentConfig
from fedgrad_core.results import code_fingerprint


def root() -> Path:
    """The cache's root folder: ``$FEDGRAD_CACHE``, else ``~/.cache/fedgrad/cache``."""
    return Path(os.environ.get("FEDGRAD_CACHE") or Path.home() / ".cache" / "fedgrad" / "cache")


def run_key(config: ExperimentConfig) -> str:
    """SHA-256 (hex) of the configuration, the package version and its code: the cache key of a run."""
    from fedgrad_core import __version__

    payload = json.dumps(
        {"config": config.to_dict(), "version": __version__, "code": code_fingerprint()}, sort_keys=True, default=repr
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def pretraining_fields(config: ExperimentConfig) -> dict[str, Any]:
    """The configuration's part of a pretrained model's key: everything of the config that changes
    the pretraining (data set, model, epochs, lr, batch size, seed, momentum, weight decay)."""
    return {
        "dataset": config.dataset,
        "model": config.model_name,
        "epochs": config.pretrain_epochs,
        "lr": config.pretrain_lr,
        "batch_size": config.batch_size,
        "seed": config.pretraining_seed,
        "momentum": config.momentum,
        "weight_decay": config.weight_decay,
    }


def pretrained_key(config: ExperimentConfig, *, source: str, n_train: int) -> str:
    """The key (16 hex digits) of the model pretrained for ``config`` on a training set of
    ``n_train`` images from ``source`` (the task's data source), by this code."""
    fields = {**pretraining_fields(config), "code": code_fingerprint(), "source": source, "n_train": n_train}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def pretrained_path(config: ExperimentConfig, *, source: str, n_train: int) -> Path:
    """Where the model pretrained for ``config`` is (or will be) cached."""
    key = pretrained_key(config, source=source, n_train=n_train)
    return root() / "pretrained" / f"{config.dataset}-{config.model_name}-{key}.pt"
