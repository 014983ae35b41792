"""``fedgrad_plus``: FedGrad hardened against an attacker who keeps its ultimate layer benign (ours,
beyond the paper).

The paper's rule (``fedgrad.fedgrad_round``, unchanged) with the preset of hardened options
``fedgrad_variants.FEDGRAD_PLUS``: the full-model closeness score as a third filter (a client
above ``median + k x MAD`` joins the suspicious set before the trust score), and the kept
changes clipped to their median norm before averaging.  Every other parameter is FedGrad's and
can be passed as to ``fedgrad``; the book's chapter "Beyond the paper" measures the preset.

Assumptions: those of FedGrad, plus that an attacker's whole model lies farther from its nearest
``K - f - 2`` neighbours than a benign client's (``fedgrad_variants.closeness_outliers``).
"""

from __future__ import annotations

import inspect
from typing import Any

from fedgrad_core.defenses.base import register
from fedgrad_core.defenses.fedgrad import FedGrad
from fedgrad_core.defenses.fedgrad_variants import FEDGRAD_PLUS


@register("fedgrad_plus")
class FedGradPlus(FedGrad):
    """FedGrad with ``FEDGRAD_PLUS``'s hardened options on by default."""

    name = "fedgrad_plus"

    def __init__(self, **params: Any) -> None:
        super().__init__(**{**FEDGRAD_PLUS, **params})

    # FedGrad's keyword parameters with the preset's defaults: the registry checks names against it,
    # and the simulation passes seed, attacker_fraction and model_factory through it.
    __init__.__signature__ = (lambda sig: sig.replace(parameters=[  # type: ignore[attr-defined]
        p.replace(default=FEDGRAD_PLUS.get(p.name, p.default)) for p in sig.parameters.values()
    ]))(inspect.signature(FedGrad.__init__))  # fmt: skip
