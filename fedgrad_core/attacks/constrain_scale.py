"""Constrain-and-scale attack (Bagdasaryan et al., AISTATS 2020, "How to backdoor federated
learning"; settings of the paper's Table 1, trigger and in-batch poisoning of the DBA code of
Xie et al. 2020).

Every attacker trains on its own partition with the full pixel trigger stamped on a share PDR
of its samples (counted over the batches, the remainder carried: ``triggers.poison_total``;
relabelled to ``target``, default 2), minimising

    alpha * task loss + (1 - alpha) * ||w - w_global||_2

(the anomaly loss keeps the model close to the global one: "constrain"), then sends
``w_global + scale * (w - w_global)`` ("scale").  Defaults (Table 1): MNIST PDR 5/64, scale 100,
poison lr 0.1, 2 epochs; CIFAR-10 PDR 6/25, scale 20, poison lr 0.1, 10 epochs; digits (ours) PDR
8/32, scale 5, poison lr 0.05, 5 epochs.  ``alpha`` defaults to 0.7 (Bagdasaryan et al. tune it
in [0, 1]; the DBA code the paper used sets ``alpha_loss: 1``, i.e. no anomaly term: pass
``alpha=1.0`` for that).  Table 1's attacker ratio 0.25 is the experiment's ``attacker_fraction``.

Parameters (keyword-only): ``alpha`` in (0, 1], ``target``, ``poisoned_data_rate``, ``scale``,
``poison_lr``, ``poison_epochs`` (None: the data set's default).
"""

from __future__ import annotations

from typing import Optional

from fedgrad_core.attacks.base import register
from fedgrad_core.attacks.triggers import TriggerAttack


@register("constrain_scale")
class ConstrainScale(TriggerAttack):
    name = "constrain_scale"

    def __init__(
        self,
        *,
        alpha: float = 0.7,
        target: int = 2,
        poisoned_data_rate: Optional[float] = None,
        scale: Optional[float] = None,
        poison_lr: Optional[float] = None,
        poison_epochs: Optional[int] = None,
    ):
        super().__init__(
            target=target,
            poisoned_data_rate=poisoned_data_rate,
            scale=scale,
            poison_lr=poison_lr,
            poison_epochs=poison_epochs,
        )
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
            raise ValueError(f"alpha (weight of the task loss) must be in (0, 1], got {alpha!r}")
        self.alpha = float(alpha)
