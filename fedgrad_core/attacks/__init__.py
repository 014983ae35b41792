"""Backdoor attacks, behind one registry; each module holds one attack and registers itself."""

from fedgrad_core.attacks.base import Attack, RoundContext, available_attacks, make_attack, register

# Every module of this package holds one method and registers it on import.
import importlib as _importlib  # noqa: E402
import pkgutil as _pkgutil  # noqa: E402

for _module in sorted(m.name for m in _pkgutil.iter_modules(__path__)):
    if _module != "base" and not _module.startswith("_"):
        _importlib.import_module(f"{__name__}.{_module}")

__all__ = ["Attack", "RoundContext", "available_attacks", "make_attack", "register"]
