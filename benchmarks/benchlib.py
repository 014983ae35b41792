"""Small helpers shared by the benchmarks: the hardware line and interleaved timing.

The machines these run on are often shared, so every benchmark times the variants it compares
in alternation (A, B, C, A, B, C, ...) and reports medians: a burst of load from elsewhere then
slows all variants alike and leaves their ratio roughly intact.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable, Mapping

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> str:
    """One line naming the hardware and software the numbers came from."""
    load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU used"
    return (
        f"hardware: {cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, {gpu}; load average {load} (shared machine: compare ratios)"
    )


def interleaved_medians(
    variants: Mapping[str, Callable[[], object]], repeats: int, *, warmup: bool = True
) -> dict[str, float]:
    """Median seconds of each variant over ``repeats`` rounds, variants alternating within a round."""
    if warmup:
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
