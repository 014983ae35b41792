"""A name -> factory table with clear errors, shared by defenses, attacks, models and data sets."""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Factories registered by name; ``make`` checks the name and the keyword parameters.

    ``builtin`` is the module whose import registers the built-in entries; it is imported the
    first time the registry is read, so that ``make_defense("krum")`` works without the caller
    importing ``fedgrad_core.defenses.krum`` first.
    """

    def __init__(self, kind: str, builtin: str) -> None:
        self.kind = kind
        self._builtin = builtin
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def wrap(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._factories[name] = factory
            return factory

        return wrap

    def names(self) -> list[str]:
        importlib.import_module(self._builtin)
        return sorted(self._factories)

    def factory(self, name: str) -> Callable[..., T]:
        names = self.names()
        if name not in self._factories:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {names}")
        return self._factories[name]

    def accepted_params(self, name: str) -> set[str]:
        sig = inspect.signature(self.factory(name))
        return {p.name for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}

    def make(self, name: str, **params: Any) -> T:
        factory = self.factory(name)
        accepted = self.accepted_params(name)
        unknown = sorted(set(params) - accepted)
        if unknown and not _takes_any_keyword(factory):
            raise ValueError(
                f"{self.kind} {name!r} has no parameter(s) {unknown}; it accepts {sorted(accepted)}"
            )
        return factory(**params)


def _takes_any_keyword(factory: Callable) -> bool:
    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(factory).parameters.values())
