"""Small helpers shared by the benchmarks: the hardware line and interleaved timing.

The timing itself lives in the package (``fedgrad_core.timing``), shared with the
``fig9_server_time`` notebook; this module re-exports what the benchmark scripts use.  The
machines these run on are often shared, so every benchmark times the variants it compares in
alternation (A, B, C, A, B, C, ...) and reports medians: a burst of load from elsewhere then slows
all variants alike and leaves their ratio roughly intact.
"""

from __future__ import annotations

from fedgrad_core.timing import cpu_model, hardware_line, interleaved_medians

__all__ = ["cpu_model", "hardware", "interleaved_medians"]


def hardware() -> str:
    """One line naming the hardware and software the numbers came from."""
    return hardware_line()
