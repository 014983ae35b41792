"""Checkpoints that load without running code.

A checkpoint holds what a run needs to continue: the configuration, the last finished round, the
global model, the history and the defense's ``state_dict()``.  It is written with ``torch.save``
through ``atomic_write`` (never a half-written file) and read with
``torch.load(..., weights_only=True)``, whose unpickler builds only tensors, numbers, strings,
lists, tuples and dicts and refuses every other Python object *before* creating it: a file crafted
to run code when unpickled is refused, and nothing in it runs.

Layout (format ``CHECKPOINT_FORMAT``, version ``CHECKPOINT_VERSION``)::

    {"format": "fedgrad-checkpoint", "version": 2,
     "config": <JSON text of ExperimentConfig.to_dict()>,
     "round": <int, last finished round>,
     "global_state": {name: tensor},
     "history": <JSON text of the per-round records>,
     "defense_state": <Defense.state_dict(): tensors, numbers, strings, lists, dicts>}

The configuration and the history are stored as JSON text: they are what the result file holds,
and comparing the configuration after a JSON round trip treats a tuple and a list alike.
Version 1 (fedgrad_core before this module) pickled the whole defense object; such a file is
refused with a message saying so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from fedgrad_core.results import atomic_write

CHECKPOINT_FORMAT = "fedgrad-checkpoint"
CHECKPOINT_VERSION = 2


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unsafe content, another format or version, a broken file."""


@dataclass(frozen=True)
class Checkpoint:
    """What a run needs to continue after ``round``."""

    config: dict[str, Any]
    round: int
    global_state: dict[str, Tensor]
    history: list[dict[str, Any]]
    defense_state: dict[str, Any]


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` atomically; TypeError (naming the entry) when the defense state holds
    anything but tensors, numbers, strings, lists and dicts (it would not load back safely)."""
    path = Path(path)
    check_plain(checkpoint.defense_state, "defense_state")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": json.dumps(checkpoint.config, sort_keys=True),
        "round": int(checkpoint.round),
        "global_state": {k: v.detach().cpu() for k, v in checkpoint.global_state.items()},
        "history": json.dumps(checkpoint.history),
        "defense_state": _to_cpu(checkpoint.defense_state),
    }
    atomic_write(path, lambda fh: torch.save(payload, fh))
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint`` without unpickling any Python object.

    Raises ``CheckpointError`` (a ValueError) when the file holds anything a safe load refuses,
    is not a checkpoint, or has another format version; OSError when it cannot be read.
    """
    path = Path(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as exc:  # any parse failure of an untrusted file gets one clear message
        raise CheckpointError(
            f"checkpoint {path} was refused: a safe load (weights_only) found {_reason(exc)}. "
            "A checkpoint may hold only tensors, numbers, strings, lists and dicts; this file holds "
            "something else (a Python object that could run code when loaded, a checkpoint of "
            "fedgrad_core before checkpoint format 2, which pickled the defense object, or a file "
            "that is not a checkpoint).  Nothing in it was run.  Start the run afresh without resume."
        ) from None
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a fedgrad checkpoint (no format {CHECKPOINT_FORMAT!r})")
    if raw.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {raw.get('version')!r}; this fedgrad_core reads "
            f"version {CHECKPOINT_VERSION}: resume with the version that wrote it or start afresh"
        )
    expected = {"config": str, "round": int, "global_state": dict, "history": str, "defense_state": dict}
    wrong = [k for k, kind in expected.items() if not isinstance(raw.get(k), kind)]
    if wrong:
        raise CheckpointError(f"checkpoint {path} is damaged: entries {wrong} are missing or of the wrong type")
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in raw["global_state"].items()):
        raise CheckpointError(f"checkpoint {path} is damaged: global_state must map names to tensors")
    try:
        config, history = json.loads(raw["config"]), json.loads(raw["history"])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint {path} is damaged: {exc}") from None
    if not isinstance(config, dict) or not isinstance(history, list):
        raise CheckpointError(f"checkpoint {path} is damaged: config must be an object, history a list")
    return Checkpoint(config, raw["round"], raw["global_state"], history, raw["defense_state"])


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"field: saved -> current"`` for every field that differs, both compared as JSON."""
    a, b = json.loads(json.dumps(dict(saved))), json.loads(json.dumps(dict(current)))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def check_plain(value: Any, where: str = "state") -> None:
    """TypeError unless ``value`` is built from tensors, numbers, strings, None, lists, tuples and
    dicts with string or integer keys: what ``torch.load(weights_only=True)`` reads back."""
    if value is None or isinstance(value, (bool, int, float, str, Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise TypeError(f"{where} has a key of type {type(key).__name__} ({key!r}); use str or int")
            check_plain(item, f"{where}[{key!r}]")
        return
    hint = " (convert numpy arrays with torch.from_numpy)" if type(value).__module__ == "numpy" else ""
    raise TypeError(
        f"{where} is a {type(value).__module__}.{type(value).__name__}: a state may hold only tensors, "
        f"numbers, strings, lists and dicts{hint}"
    )


def _to_cpu(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _reason(exc: Exception) -> str:
    """The informative line of torch's refusal (whose advice to turn the safe load off we do not pass on)."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        detail = text.split(marker, 1)[1].split("Check the documentation", 1)[0]
        detail = " ".join(detail.split())
        if detail:
            return detail.rstrip(".")
    first = " ".join(text.split())[:200]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
