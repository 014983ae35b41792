"""RunResult: a run's config, per-round history and provenance; atomic JSON files; checkpoints."""

from __future__ import annotations

import functools
import hashlib
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
    "round",
    "main_acc",
    "backdoor_acc",
    "tpr",
    "fpr",
    "attackers",
    "flagged",
    "selected",
    "aggregation_seconds",
    "lr",
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

    def summary(self, window: int = 5) -> dict[str, Any]:
        """The run's reported numbers, each with one definition used everywhere (CLI, tables, book).

        * ``best_main_acc`` / ``best_backdoor_acc``: the paper's metric for Table 2 (section 5.2:
          "the best accuracy that each FL method reaches during training"), the maximum over the
          evaluated rounds.  For the backdoor this is the *attacker's* best: the highest backdoor
          accuracy the global model showed at any evaluated round, however briefly.
        * ``mean_main_acc_last`` / ``mean_backdoor_acc_last``: the robust metric, the mean over the
          last ``window`` evaluated rounds (all of them if fewer were evaluated); one round is noisy
          when attackers come and go, and a maximum rewards a lucky round.
        * ``final_main_acc`` / ``final_backdoor_acc``: the last evaluated round.
        * ``mean_tpr`` / ``mean_fpr``: mean over the rounds where they are defined (TPR needs an
          attacker among the round's clients, FPR a benign one).
        * ``mean_aggregation_seconds``: mean wall time of the defense's aggregation per round.

        Accuracies are fractions in [0, 1]; a metric with no defined round (a run without a backdoor
        test set, a run without attackers for the TPR) is None.  ``rounds`` is the number of rounds
        in the history and ``window`` the window asked for.
        """
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(
                f"window (how many of the last evaluated rounds to average) must be an integer >= 1, got {window!r}"
            )
        main = self._defined("main_acc")
        backdoor = self._defined("backdoor_acc")
        return {
            "rounds": len(self.history),
            "window": window,
            "best_main_acc": max(main) if main else None,
            "best_backdoor_acc": max(backdoor) if backdoor else None,
            "mean_main_acc_last": _mean(main[-window:]),
            "mean_backdoor_acc_last": _mean(backdoor[-window:]),
            "final_main_acc": main[-1] if main else None,
            "final_backdoor_acc": backdoor[-1] if backdoor else None,
            "mean_tpr": _mean(self._defined("tpr")),
            "mean_fpr": _mean(self._defined("fpr")),
            "mean_aggregation_seconds": _mean(self._defined("aggregation_seconds")),
        }

    def _defined(self, key: str) -> list[float]:
        """The non-None values of ``key`` in round order."""
        return [r[key] for r in self.history if r.get(key) is not None]

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "history": self.history, "meta": self.meta}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write(path, lambda fh: fh.write(json.dumps(self.to_json(), indent=1).encode()))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "RunResult":
        """Read a result written by ``save``.

        Raises ``ResultFileError`` (a ValueError) naming the file and what is wrong with it when it
        is not JSON, not a result, or holds a configuration this version cannot read; OSError when
        it cannot be read.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise ResultFileError(f"result file {path} is not text (byte {exc.start} is not UTF-8)") from None
        except json.JSONDecodeError as exc:
            raise ResultFileError(
                f"result file {path} is not valid JSON ({exc.msg}: line {exc.lineno}, column {exc.colno}); "
                "a truncated or hand-edited file?"
            ) from None
        if not isinstance(data, dict):
            raise ResultFileError(f"result file {path} holds a JSON {type(data).__name__}, not a result object")
        missing = [k for k in ("config", "history") if k not in data]
        if missing:
            raise ResultFileError(f"result file {path} is not a run result: it has no {' or '.join(missing)}")
        if not isinstance(data["config"], dict):
            raise ResultFileError(f"result file {path}: config is a {type(data['config']).__name__}, not an object")
        if not isinstance(data["history"], list) or not all(isinstance(r, dict) for r in data["history"]):
            raise ResultFileError(f"result file {path}: history must be a list of per-round objects")
        meta = data.get("meta", {})
        if not isinstance(meta, dict):
            raise ResultFileError(f"result file {path}: meta is a {type(meta).__name__}, not an object")
        try:
            config = ExperimentConfig.from_dict(data["config"])
        except (TypeError, ValueError) as exc:
            raise ResultFileError(f"result file {path} has a configuration this version cannot read: {exc}") from None
        return cls(config, data["history"], meta)


class ResultFileError(ValueError):
    """A result file that cannot be read as a ``RunResult``; the message names the file and why."""


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


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
        "code_fingerprint": code_fingerprint(),
        "git_commit": _git_commit(),
        "torch_version": torch.__version__,
        "device": device,
        "hardware": hardware,
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


#: Modules (paths under the package) that no run imports: they present results (tables, pages,
#: the command line, benchmarks, integrations) and cannot change one, so editing them keeps the
#: run cache.  tests/test_run_scope.py runs an experiment, the run cache and the fairness cache in a
#: fresh interpreter and fails if any of these was imported.
NOT_IN_RUNS = ("__main__.py", "cli.py", "pages.py", "report.py", "theory.py", "timing.py", "integrations/")


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """SHA-256 (first 16 hex digits) of the source files that runs execute, read once per process.

    Part of every cache key (runs and pretrained models) and of a result's provenance: a run
    computed by other code is never served as this code's result, whatever ``__version__`` says.
    Conservative by design: editing a comment also invalidates the cache.  Only ``NOT_IN_RUNS``
    (presentation code, never imported by a run) is left out.
    """
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        if path.relative_to(package).as_posix().startswith(NOT_IN_RUNS):
            continue
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


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
