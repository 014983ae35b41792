"""A name -> factory table with clear errors, shared by defenses, attacks, models and data sets.

Entries come from three places, all loaded the first time a registry is read (``names``,
``factory``, ``make``...), never at import time:

1. the built-in module (``builtin``), whose import registers this project's entries;
2. the modules named in the environment variable ``FEDGRAD_PLUGINS`` (comma-separated), for code
   that is importable but not installed as a package (a notebook kernel started by papermill, or
   the worker processes of ``run_many``, inherit the variable);
3. the installed packages' entry points of the registry's group (``ENTRY_POINT_GROUPS``), e.g. in
   a plug-in's ``pyproject.toml``::

       [project.entry-points."fedgrad_core.defenses"]
       median = "fedgrad_median:median"

   The entry point's object is registered under the entry point's name, unless it is a module
   (its import registers what it holds with the ``register`` decorator) or the object is already
   registered under that name (the decorator ran during the import).

A plug-in that fails to load (an import error, a name taken twice, ...) is reported with a
``PluginWarning`` naming it and the error, and leaves nothing half-registered; the built-ins and
the other plug-ins keep working.  Registering a name twice in one's own code raises a
``ValueError`` naming both sources.  Assumption: plug-ins are trusted code (loading one runs it).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import inspect
import os
import re
import types
import warnings
from typing import Any, Callable, Generic, Iterator, Optional, TypeVar, Union

T = TypeVar("T")

#: Entry-point group of each registry kind: what a plug-in package declares.
ENTRY_POINT_GROUPS: dict[str, str] = {
    "defense": "fedgrad_core.defenses",
    "attack": "fedgrad_core.attacks",
    "data set": "fedgrad_core.datasets",
    "model": "fedgrad_core.models",
}

#: Environment variable naming plug-in modules to import (comma-separated).
PLUGINS_ENV = "FEDGRAD_PLUGINS"

#: ``(name, obj) -> factory``: turns what was registered into the factory ``make`` calls.
Adapter = Callable[[str, Any], Callable[..., Any]]

# FEDGRAD_PLUGINS modules already tried, so that a broken one is reported once, not per registry.
_TRIED_MODULES: set[str] = set()


class PluginWarning(UserWarning):
    """A plug-in could not be loaded; the message names it and the error."""


def describe_source(obj: Any) -> str:
    """Where ``obj`` was defined, as ``module.qualname`` (the source named in duplicate errors).

    Parameters
    ----------
    obj : Any
        A class, function or other object handed to ``Registry.register``.

    Returns
    -------
    str
        ``"module.qualname"``, or the ``repr`` of ``obj`` when it has no qualified name.
    """
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if module and qualname:
        return f"{module}.{qualname}"
    return repr(obj)


class Registry(Generic[T]):
    """Factories registered by name; ``make`` checks the name and the keyword parameters.

    Parameters
    ----------
    kind : str
        What the entries are ("defense", "attack", "data set", "model"); used in messages and to
        pick the entry-point group from ``ENTRY_POINT_GROUPS``.
    builtin : str
        The module whose import registers the built-in entries.  It is imported the first time
        the registry is read, so that ``make_defense("krum")`` works without the caller importing
        ``fedgrad_core.defenses.krum`` first.
    group : str or None, optional
        Entry-point group to load plug-ins from; by default ``ENTRY_POINT_GROUPS[kind]`` (no
        entry points for a kind not listed there).
    adapt : callable or str or None, optional
        ``(name, obj) -> factory`` applied to every registered object (the defenses turn a plain
        aggregation function into a ``Defense`` factory with it), or ``"module:attribute"`` naming
        such a callable, imported on first use (no import cycle with the module defining it).
    """

    def __init__(
        self,
        kind: str,
        builtin: str,
        *,
        group: Optional[str] = None,
        adapt: Union[Adapter, str, None] = None,
    ) -> None:
        self.kind = kind
        self.group = group if group is not None else ENTRY_POINT_GROUPS.get(kind)
        self._builtin = builtin
        self._adapt = adapt
        self._factories: dict[str, Callable[..., T]] = {}
        self._originals: dict[str, Any] = {}
        self._sources: dict[str, str] = {}
        self._plugins_loaded = False
        self._loading: Optional[str] = None  # the plug-in being loaded, added to sources
        #: ``(plug-in, error)`` of every plug-in that failed to load, as also warned.
        self.plugin_errors: list[tuple[str, str]] = []

    # ------------------------------------------------------------------ registering

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator registering a factory (a class, a function) as ``name``.

        Parameters
        ----------
        name : str
            The name users give (``ExperimentConfig(defense=name)``, ``fedgrad run --defense``).

        Returns
        -------
        callable
            A decorator that registers its argument and returns it unchanged.

        Raises
        ------
        ValueError
            When ``name`` is already registered; the message names both sources.
        """

        def wrap(obj: Any) -> Any:
            self.add(name, obj)
            return obj

        return wrap

    def add(self, name: str, obj: Any, *, source: Optional[str] = None) -> Callable[..., T]:
        """Register ``obj`` as ``name`` (what the decorator does) and return its factory.

        Parameters
        ----------
        name : str
            Name of the new entry; a non-empty string.
        obj : Any
            The factory, or for defenses also a plain aggregation function (see ``adapt``).
        source : str or None, optional
            Where ``obj`` comes from, for messages; by default its ``module.qualname``.

        Returns
        -------
        callable
            The factory that ``make`` will call (``obj`` itself unless adapted).

        Raises
        ------
        ValueError
            When ``name`` is empty or already registered (both sources named).
        TypeError
            When ``obj`` is not callable.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty string name, got {name!r}")
        if not callable(obj):
            raise TypeError(f"{self.kind} {name!r}: {describe_source(obj)} is not callable")
        where = source or describe_source(obj)
        if self._loading and self._loading not in where:
            where = f"{where} (from {self._loading})"
        if name in self._factories:
            raise ValueError(f"{self.kind} {name!r} is registered twice: by {self._sources[name]} and by {where}")
        factory = self._adapter()(name, obj) if self._adapt is not None else obj
        self._factories[name] = factory
        self._originals[name] = obj
        self._sources[name] = where
        return factory

    def unregister(self, name: str) -> None:
        """Remove the entry ``name`` (a plug-in registered by a test or a notebook session).

        Parameters
        ----------
        name : str
            A registered name.

        Raises
        ------
        ValueError
            When nothing is registered as ``name``.
        """
        if name not in self._factories:
            raise ValueError(f"cannot unregister {self.kind} {name!r}: it is not registered")
        del self._factories[name], self._originals[name], self._sources[name]

    @contextlib.contextmanager
    def registered(self, name: str, obj: Any) -> Iterator[Callable[..., T]]:
        """Context manager: ``obj`` is registered as ``name`` inside the block only.

        Parameters
        ----------
        name : str
            Name of the temporary entry.
        obj : Any
            What ``register`` would accept.

        Yields
        ------
        callable
            The entry's factory.
        """
        self._ensure_loaded()  # plug-ins first, so that leaving the block leaves them alone
        factory = self.add(name, obj)
        try:
            yield factory
        finally:
            if self._originals.get(name) is obj:
                self.unregister(name)

    # ------------------------------------------------------------------ reading

    def names(self) -> list[str]:
        """Every registered name, sorted (built-ins, ``FEDGRAD_PLUGINS`` modules, entry points).

        Returns
        -------
        list of str
        """
        self._ensure_loaded()
        return sorted(self._factories)

    def source(self, name: str) -> str:
        """Where the entry ``name`` was defined (``module.qualname``, plus the plug-in it came from).

        Parameters
        ----------
        name : str
            A registered name.

        Returns
        -------
        str
        """
        self.factory(name)
        return self._sources[name]

    def describe(self, name: str, width: int = 100) -> str:
        """One line saying what ``name`` is (``fedgrad list``): the first sentence of the entry's
        own docstring, else of its module's (each defense and attack is a module named after it).

        Parameters
        ----------
        name : str
            A registered name.
        width : int, optional
            At most this many characters; a longer sentence is cut at a word and ends in "...".

        Returns
        -------
        str
            The sentence, or "(no description)" when neither docstring has one.
        """
        self.factory(name)
        obj = self._originals[name]
        # a class's own docstring only: inspect.getdoc would hand back a base class's
        doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
        if not doc:
            module = importlib.import_module(obj.__module__) if getattr(obj, "__module__", None) else None
            doc = getattr(module, "__doc__", None)
        return _first_sentence(doc, width) if doc else "(no description)"

    def factory(self, name: str) -> Callable[..., T]:
        """The factory registered as ``name``.

        Parameters
        ----------
        name : str
            A registered name.

        Returns
        -------
        callable
            What ``make`` calls (for a plain-function defense, the adapted factory).

        Raises
        ------
        ValueError
            For an unknown name; the message lists the valid ones.
        """
        names = self.names()
        if name not in self._factories:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {names}")
        return self._factories[name]

    def accepted_params(self, name: str) -> set[str]:
        """Keyword parameters the factory of ``name`` accepts.

        Parameters
        ----------
        name : str
            A registered name.

        Returns
        -------
        set of str
            The parameter names of the factory's signature, ``*args`` and ``**kwargs`` left out.
        """
        sig = inspect.signature(self.factory(name))
        return {p.name for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}

    def make(self, name: str, **params: Any) -> T:
        """Call the factory of ``name`` with ``params``, after checking their names.

        Parameters
        ----------
        name : str
            A registered name.
        **params : Any
            Keyword parameters of the factory.

        Returns
        -------
        T
            What the factory built (a ``Defense``, an ``Attack``, a model...).

        Raises
        ------
        ValueError
            For an unknown name, or parameters the factory does not accept (the accepted ones
            are listed).
        """
        factory = self.factory(name)
        accepted = self.accepted_params(name)
        unknown = sorted(set(params) - accepted)
        if unknown and not _takes_any_keyword(factory):
            raise ValueError(f"{self.kind} {name!r} has no parameter(s) {unknown}; it accepts {sorted(accepted)}")
        return factory(**params)

    # ------------------------------------------------------------------ plug-ins

    def reload_plugins(self) -> None:
        """Look for plug-ins again: entry points installed, or ``FEDGRAD_PLUGINS`` set, since the
        first read.  Plug-ins already registered are left as they are; a failure warns as on the
        first read.
        """
        self._plugins_loaded = False
        self._ensure_loaded()

    def _adapter(self) -> Adapter:
        if isinstance(self._adapt, str):
            module, _, attribute = self._adapt.partition(":")
            self._adapt = getattr(importlib.import_module(module), attribute)
        assert callable(self._adapt)
        return self._adapt

    def _ensure_loaded(self) -> None:
        importlib.import_module(self._builtin)
        if self._plugins_loaded:
            return
        # Set first: a plug-in that reads a registry while it is imported must not recurse here.
        self._plugins_loaded = True
        for module in _env_modules():
            if module not in _TRIED_MODULES:
                _TRIED_MODULES.add(module)
                self._load(f"module {module!r} of {PLUGINS_ENV}", functools.partial(importlib.import_module, module))
        if self.group is None:
            return
        for ep in importlib.metadata.entry_points(group=self.group):
            self._load(_describe_entry_point(ep), functools.partial(self._load_entry_point, ep))

    def _load_entry_point(self, ep: importlib.metadata.EntryPoint) -> None:
        obj = ep.load()
        if isinstance(obj, types.ModuleType) or self._originals.get(ep.name) is obj:
            return  # its import registered it (decorator)
        self.add(ep.name, obj)

    def _load(self, label: str, load: Callable[[], Any]) -> None:
        """Run ``load``; on any error undo what it registered here and warn, naming ``label``."""
        before = set(self._factories)
        self._loading = label
        try:
            load()
        except Exception as exc:  # a broken plug-in must not take the built-ins down
            for name in set(self._factories) - before:
                self.unregister(name)
            message = f"{type(exc).__name__}: {exc}"
            self.plugin_errors.append((label, message))
            warnings.warn(
                f"fedgrad_core: skipped the {self.kind} plug-in {label}: {message}", PluginWarning, stacklevel=3
            )
        finally:
            self._loading = None


def _env_modules() -> list[str]:
    return [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]


def _describe_entry_point(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    owner = f" of distribution {dist.name!r} {dist.version}" if dist is not None else ""
    return f"entry point {ep.name!r} = {ep.value!r} in group {ep.group!r}{owner}"


def _takes_any_keyword(factory: Callable[..., Any]) -> bool:
    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(factory).parameters.values())


def _first_sentence(doc: str, width: int) -> str:
    """The first sentence of ``doc``'s first paragraph on one line, at most ``width`` characters."""
    paragraph = " ".join(inspect.cleandoc(doc).split("\n\n", 1)[0].split())
    sentence = re.split(r"(?<=[.!?])\s+(?=[A-Z(])", paragraph, maxsplit=1)[0]
    if len(sentence) <= width:
        return sentence
    return sentence[: width - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."
