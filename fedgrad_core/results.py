"""RunResult: a run's config, per-round history and provenance; atomic JSON files; checkpoints."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fedgrad_core.config import ExperimentConfig

#: Keys every history record has (accuracies are fractions in [0, 1], None where not evaluated).
HISTORY_KEYS = (
    "round", "main_acc", "backdoor_acc", "tpr", "fpr", "attackers", "flagged", "selected",
    "aggregation_seconds", "lr",
)


@dataclass
class RunResult:
    config: ExperimentConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_frame(self):
        """One row per round (pandas); list-valued and diagnostic columns are kept as objects."""
        import pandas as pd

        return pd.DataFrame(self.history)

    def last(self, key: str) -> Any:
        """The latest non-None value of ``key`` in the history."""
        for record in reversed(self.history):
            if record.get(key) is not None:
                return record[key]
        return None

    def summary(self) -> dict[str, Any]:
        tprs = [r["tpr"] for r in self.history if r["tpr"] is not None]
        fprs = [r["fpr"] for r in self.history if r["fpr"] is not None]
        secs = [r["aggregation_seconds"] for r in self.history]
        return {
            "rounds": len(self.history),
            "main_acc": self.last("main_acc"),
            "backdoor_acc": self.last("backdoor_acc"),
            "mean_tpr": sum(tprs) / len(tprs) if tprs else None,
            "mean_fpr": sum(fprs) / len(fprs) if fprs else None,
            "mean_aggregation_seconds": sum(secs) / len(secs) if secs else None,
        }

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "history": self.history, "meta": self.meta}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write(path, lambda fh: fh.write(json.dumps(self.to_json(), indent=1).encode()))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "RunResult":
        data = json.loads(Path(path).read_text())
        return cls(ExperimentConfig.from_dict(data["config"]), data["history"], data.get("meta", {}))


def atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
    """Write through a temporary file in the same folder, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def provenance(device: str) -> dict[str, Any]:
    """Package version, git commit, torch version, device and machine, for the result's meta."""
    import torch

    from fedgrad_core import __version__

    hardware = _cpu_name()
    if device.startswith("cuda") and torch.cuda.is_available():
        hardware = torch.cuda.get_device_name(torch.device(device))
    return {
        "fedgrad_core_version": __version__,
        "git_commit": _git_commit(),
        "torch_version": torch.__version__,
        "device": device,
        "hardware": hardware,
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
