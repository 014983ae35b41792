"""Unconstrained pixel-pattern trigger attack (Sun et al. 2019, "Can you really backdoor federated
learning?"; settings of the paper's Table 1, trigger and in-batch poisoning of the DBA code of
Xie et al. 2020).

Every attacker trains on its own partition; a share PDR of its samples (counted over the batches,
the remainder carried: ``triggers.poison_total``) get the full pixel trigger (``triggers.global_trigger``) and the target label (default 2).  It trains
with its own lr and epochs and sends its model unscaled (scale factor 1).  Defaults (Table 1):
MNIST PDR 5/64, poison lr 0.1, 2 epochs; CIFAR-10 PDR 12/64, poison lr 0.1, 10 epochs; digits
(ours) PDR 8/32, poison lr 0.05, 5 epochs.  Table 1 runs this attack with an attacker ratio of 0.4:
set the experiment's ``attacker_fraction=0.4``.

Parameters (keyword-only): ``target``, ``poisoned_data_rate``, ``scale``, ``poison_lr``,
``poison_epochs`` (None: the data set's default).  Backdoor accuracy: the share of test images
whose true label is not the target that, stamped with the trigger, are predicted as the target.
"""

from __future__ import annotations

from fedgrad_core.attacks.base import register
from fedgrad_core.attacks.triggers import TriggerAttack


@register("pixel_trigger")
class PixelTrigger(TriggerAttack):
    name = "pixel_trigger"
