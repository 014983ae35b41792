"""Data sets, edge-case sets and partitioners (no torch.nn here)."""

from fedgrad_core.data.datasets import available_datasets, load_task, prepare
from fedgrad_core.data.sources import DataUnavailable, data_root
from fedgrad_core.data.task import EdgeCaseSet, Split, Task

__all__ = [
    "DataUnavailable",
    "EdgeCaseSet",
    "Split",
    "Task",
    "available_datasets",
    "data_root",
    "load_task",
    "prepare",
]
