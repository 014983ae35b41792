"""FedGrad's options beyond the paper's rule: a threshold rule, a forgiving trust, Table 4's switches.

Neither the paper nor the authors' code has the first two; they test whether FedGrad's benign
false positives (about half of every round is above the median threshold) can be lowered without
letting attackers through.  Each is opt-in: ``Variant()`` is the paper's rule, and
``fedgrad.fedgrad_round`` calls into this module where a variant changes a step.  Hardened
variants belong here too.

- ``soft_threshold="largest_gap"``: S1's threshold sits in the largest gap between the sorted
  running means that ends above the paper's ``eps1`` (``largest_gap_threshold``).  Assumption:
  attackers' scores form a group apart from the benign ones.  Never below ``eps1``: S1 is a subset
  of the median rule's.
- ``trust_decay=d`` in (0, 1]: the trust is a weighted mean of the history, an entry weighted
  ``d**a`` after the client joined ``a`` more rounds (``age_trust``); skipped rounds do not age
  it; ``d = 1`` is the plain mean.
- ``use_soft`` / ``use_hard`` / ``use_trust``: the rows of the paper's Table 4 (soft only: no hard,
  no trust; hard only: no soft, no trust; union: no trust).  Switched off, the soft filter still
  scores (its history stays complete) but flags nobody; the hard filter keeps no history; the
  trust is still recorded but clears nobody.

Hardened options (beyond the paper, against an attacker who keeps its ultimate layer benign):

- ``closeness_mad=k``: a third filter.  The closeness score (Krum's score of the full models,
  which the paper uses only to name the benign cluster) is computed every round, and a client
  whose score lies above ``median + k x MAD`` (MAD scaled by 1.4826, a normal's standard
  deviation) joins the suspicious set before the trust score (``closeness_outliers``).
  Assumption: an attacker's full model lies farther from its nearest ``K - f - 2`` neighbours
  than a benign client's, even when its ultimate layer is benign.
- ``clip_to_median=True``: after the filters, each kept client's change of the whole model is
  clipped to the median L2 norm of the kept changes before averaging (FLAME's clipping bound,
  Nguyen et al., USENIX Security 2022), so a passed attacker moves the model at most as far as a
  typical benign client (``clip_scales``).
- ``FEDGRAD_PLUS``: the preset registered as the defense ``fedgrad_plus``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

import torch
from torch import Tensor

from fedgrad_core.defenses.base import check_bool, check_choice, check_real, gram64

SOFT_THRESHOLD_CHOICES = ("median", "largest_gap")


@dataclass(frozen=True)
class Variant:
    """Which of FedGrad's steps run, and how; the defaults are the paper's rule."""

    soft_threshold: str = "median"
    trust_decay: Optional[float] = None
    use_soft: bool = True
    use_hard: bool = True
    use_trust: bool = True
    closeness_mad: Optional[float] = None
    clip_to_median: bool = False

    def __post_init__(self) -> None:
        for flag in ("use_soft", "use_hard", "use_trust", "clip_to_median"):
            check_bool(flag, getattr(self, flag))
        if not (self.use_soft or self.use_hard):
            raise ValueError("use_soft and use_hard are both False: FedGrad would flag nobody")
        check_choice("soft_threshold", self.soft_threshold, SOFT_THRESHOLD_CHOICES)
        if self.trust_decay is not None:
            object.__setattr__(self, "trust_decay", check_real("trust_decay", self.trust_decay, 0.0, 1.0, lo_open=True))
        if self.closeness_mad is not None:
            object.__setattr__(self, "closeness_mad", check_real("closeness_mad", self.closeness_mad, 0.0, 100.0))


#: The paper's rule.
PAPER = Variant()

#: The preset registered as ``fedgrad_plus``: the paper's rule, the closeness filter at 2 MADs, and
#: clipping to the median norm (the sweep behind the choice: the book's chapter "Beyond the paper").
FEDGRAD_PLUS = dict(closeness_mad=2.0, clip_to_median=True)

#: A normal distribution's standard deviation in MADs: ``MAD x 1.4826`` estimates it.
MAD_TO_SD = 1.4826


def closeness_outliers(closeness: np.ndarray, *, k: float) -> np.ndarray:
    """Mask of the scores above ``median + k x 1.4826 x MAD``; with MAD 0, of those above the median."""
    scores = np.asarray(closeness, dtype=np.float64)
    median = float(np.median(scores))
    mad = MAD_TO_SD * float(np.median(np.abs(scores - median)))
    return scores - median > k * mad


def clip_scales(rows: Tensor, center: Tensor, keep: np.ndarray) -> Tensor:
    """Float64 factor per row: ``min(1, m / ||row - center||)`` for a kept row, ``m`` the median L2
    norm of the kept changes; 1 for the others (they get weight 0 in the average).  Folded into the
    averaging weights, as FLAME folds its clip: no K x d copy of the changes is made."""
    keep_t = torch.from_numpy(np.asarray(keep, dtype=bool))
    norms = gram64(rows, center=center).diagonal().clamp_min(0.0).sqrt()
    bound = float(np.median(norms[keep_t].numpy())) if keep_t.any() else 0.0
    return torch.where(keep_t & (norms > bound), bound / norms.clamp_min(1e-30), torch.ones_like(norms))


def largest_gap_threshold(values: np.ndarray, eps1: float) -> float:
    """The lower end of the largest gap between consecutive sorted distinct ``values`` whose
    upper end is above ``eps1`` (ties: the lowest such gap), raised to ``eps1``; ``eps1`` when no
    value is above it.  A gap that starts below ``eps1`` counts, so near-equal top scores are not
    split by a tiny gap among themselves."""
    distinct = np.unique(values)  # sorted
    gaps = np.diff(distinct)
    gaps[distinct[1:] <= eps1] = -1.0  # only gaps that end above eps1 can hold the threshold
    if gaps.size == 0 or gaps.max() < 0:
        return eps1
    return max(eps1, float(distinct[int(np.argmax(gaps))]))  # argmax: first (lowest) of tied gaps


def age_trust(total: float, count: float, decay: Optional[float]) -> tuple[float, float]:
    """A client's trust sum and count before its new entry: every earlier entry (the starting 0.5
    included) weighs ``decay`` times less; unchanged without a decay."""
    if decay is None:
        return total, count
    return decay * total, decay * count
