"""Plain aggregation functions as defenses: what ``register`` does with a function.

A plug-in author may register a function instead of a ``Defense`` subclass::

    @register("median")
    def median(global_state, updates, round_idx, *, trim=0):
        ...
        return Aggregate(new_state, flagged=frozenset())

Its first three parameters receive the previous global model, the round's *finite* updates and
the round index (paper, Algorithm 1's server step; a default on the round index, ``round_idx=None``,
is allowed: the server always passes it); any further keyword parameters become the
defense's parameters (``defense_params``; the run's context, e.g. ``seed``, is passed when
named).  The function returns anything with ``.global_state`` (a state dict with the global
model's keys) and ``.flagged`` (client ids); ``.diagnostics`` is optional.  It runs behind
``Defense.aggregate``'s NaN/inf guard like every built-in defense.  Assumption: such a defense
keeps no state across rounds (checkpoints save none); a stateful one subclasses ``Defense``.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Sequence

from fedgrad_core.defenses.base import Aggregate, ClientUpdate, Defense, State

#: Signature of a plain aggregation function (extra keyword parameters allowed).
AggregationRule = Callable[..., Any]

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class FunctionDefense(Defense):
    """A ``Defense`` whose ``aggregate_finite`` calls a plain aggregation function.

    Parameters
    ----------
    rule : callable
        ``rule(global_state, updates, round_idx, **params)`` returning an ``Aggregate``-like
        object (``.global_state``, ``.flagged``, optionally ``.diagnostics``).
    name : str
        The registered name (used in messages and checkpoints).
    **params : Any
        The rule's keyword parameters for this run.
    """

    def __init__(self, rule: AggregationRule, name: str, **params: Any) -> None:
        self.rule = rule
        self.name = name
        self.params = params

    def aggregate_finite(self, global_state: State, updates: Sequence[ClientUpdate], round_idx: int) -> Aggregate:
        """Call the rule and check what it returned (see ``as_aggregate``)."""
        return as_aggregate(self.rule(global_state, updates, round_idx, **self.params), self.name, global_state)


def as_aggregate(result: Any, name: str, global_state: State) -> Aggregate:
    """An ``Aggregate`` from what a plain aggregation function returned.

    Parameters
    ----------
    result : Any
        Object with ``.global_state`` and ``.flagged``; ``.diagnostics`` (a mapping) may be
        missing or None, and then is ``{}``.
    name : str
        The defense's name, for the error messages.
    global_state : mapping of str to Tensor
        The previous global model: the new one must have exactly its keys.

    Returns
    -------
    Aggregate
        With ``flagged`` as a frozenset of ints and a fresh ``diagnostics`` dict.

    Raises
    ------
    TypeError
        When ``result`` lacks ``global_state`` or ``flagged``, or its diagnostics are not a mapping.
    ValueError
        When the new global model's keys differ from the previous one's.
    """
    missing = [a for a in ("global_state", "flagged") if not hasattr(result, a)]
    if missing:
        raise TypeError(
            f"defense {name!r} returned a {type(result).__name__} without {missing}; return an "
            "Aggregate (fedgrad_core.defenses.Aggregate) or an object with .global_state and .flagged"
        )
    state = dict(result.global_state)
    if set(state) != set(global_state):
        missing, unexpected = sorted(set(global_state) - set(state))[:3], sorted(set(state) - set(global_state))[:3]
        raise ValueError(
            f"defense {name!r} returned a global model whose keys differ from the previous one's "
            f"(missing {missing}, unexpected {unexpected})"
        )
    diagnostics = getattr(result, "diagnostics", None)
    if diagnostics is None:
        diagnostics = {}
    if not isinstance(diagnostics, Mapping):
        raise TypeError(f"defense {name!r}: diagnostics must be a dict, got {type(diagnostics).__name__}")
    return Aggregate(state, frozenset(int(c) for c in result.flagged), dict(diagnostics))


def is_aggregation_rule(obj: Any) -> bool:
    """True for a function (not a class) whose first three parameters are positional, the first
    two of them required: ``rule(global_state, updates, round_idx)``, also with a default on the
    round index (``round_idx=None``), which the server always passes.

    A factory takes its parameters by keyword (``make_defense`` calls ``factory(**params)``), so a
    factory function whose first two parameters would be required positionals followed by a third
    is written with ``*`` before them (``def factory(*, seed, attacker_fraction, eps=1.0)``).

    Parameters
    ----------
    obj : Any
        What was handed to ``register``.

    Returns
    -------
    bool
        False for classes, for factories taking keyword parameters only, and for functions with
        fewer than three positional parameters.
    """
    if isinstance(obj, type) or not callable(obj):
        return False
    try:
        params = list(inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature
        return False
    head = params[:3]
    return len(head) == 3 and all(p.kind in _POSITIONAL for p in head) and all(p.default is p.empty for p in head[:2])


def defense_factory(name: str, obj: Any) -> Callable[..., Any]:
    """The registry's adapter for defenses: a plain aggregation function becomes a factory of
    ``FunctionDefense``; anything else (a ``Defense`` subclass, a factory) is returned unchanged.

    Parameters
    ----------
    name : str
        The registered name.
    obj : Any
        What was handed to ``register``.

    Returns
    -------
    callable
        A factory whose signature lists the rule's extra parameters as keyword-only, so that
        ``accepted_params`` and ``make_defense``'s parameter check see them.
    """
    if not is_aggregation_rule(obj):
        return obj
    extra = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.kind in _POSITIONAL else p
        for p in list(inspect.signature(obj).parameters.values())[3:]
        if p.kind is not inspect.Parameter.VAR_POSITIONAL
    ]

    def factory(**params: Any) -> FunctionDefense:
        return FunctionDefense(obj, name, **params)

    factory.__signature__ = inspect.Signature(extra, return_annotation=FunctionDefense)  # type: ignore[attr-defined]
    factory.__name__ = getattr(obj, "__name__", name)
    factory.__qualname__ = getattr(obj, "__qualname__", name)
    factory.__doc__ = obj.__doc__
    factory.rule = obj  # type: ignore[attr-defined]
    return factory
