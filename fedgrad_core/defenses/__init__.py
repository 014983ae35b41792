"""Aggregation rules: FedAvg, FedGrad and the robust baselines, behind one registry.

``make_defense(name, **params)`` builds any of them; each module holds one method named after its
paper and registers itself on import (FedGrad's parameters and history, and its options beyond the
paper, are in ``fedgrad_state`` and ``fedgrad_variants``).
"""

from fedgrad_core.defenses.base import (
    Aggregate,
    ClientUpdate,
    Defense,
    Layout,
    available_defenses,
    build_defense,
    make_defense,
    register,
)

# Every module of this package holds one method and registers it on import.
import importlib as _importlib  # noqa: E402
import pkgutil as _pkgutil  # noqa: E402

for _module in sorted(m.name for m in _pkgutil.iter_modules(__path__)):
    if _module != "base" and not _module.startswith("_"):
        _importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "Aggregate",
    "ClientUpdate",
    "Defense",
    "Layout",
    "available_defenses",
    "build_defense",
    "make_defense",
    "register",
]
