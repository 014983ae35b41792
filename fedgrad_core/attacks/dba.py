"""Distributed backdoor attack, DBA (Xie et al., ICLR 2020; settings of the paper's Table 1).

The global pixel trigger is split into four local triggers (``triggers.local_triggers``: the four
bars).  Attacker ``attacker_rank`` (its position in the fixed attacker pool) stamps only local
trigger ``attacker_rank % 4`` on a share PDR of the samples of its own partition (counted over
the batches, the remainder carried: ``triggers.poison_total``), relabelled to ``target`` (default 2), trains with its own lr and epochs and scales its
update by ``scale``.  The backdoor is tested with the full global trigger.  As in the DBA code
(``alpha_loss: 1``) there is no anomaly loss.  Defaults (Table 1): MNIST PDR 5/64, scale 100,
poison lr 0.1, 2 epochs; CIFAR-10 PDR 6/25, scale 20, poison lr 0.1, 10 epochs; digits (ours) PDR
8/32, scale 5, poison lr 0.05, 5 epochs.  Table 1's attacker ratio 0.25 is the experiment's
``attacker_fraction``.  With fewer than four attackers in the pool, some local triggers are never
trained.

Parameters (keyword-only): ``target``, ``poisoned_data_rate``, ``scale``, ``poison_lr``,
``poison_epochs`` (None: the data set's default).
"""

from __future__ import annotations

from fedgrad_core.attacks.base import register
from fedgrad_core.attacks.triggers import Pixels, TriggerAttack, local_triggers


@register("dba")
class DBA(TriggerAttack):
    name = "dba"

    def trigger_for(self, attacker_rank: int) -> Pixels:
        assert self.image_size is not None, "setup() first"
        return local_triggers(*self.image_size)[attacker_rank % 4]
