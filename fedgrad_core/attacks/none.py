"""No attack: every client is honest.

Backdoor accuracy is still measured, on the backdoor test set of the attack named by
``backdoor`` (default: the black-box edge-case set), so that a clean run gives the *clean level*
of backdoor accuracy that an attacked run is compared with.  ``backdoor=None`` measures nothing.
"""

from __future__ import annotations

from typing import Optional

from fedgrad_core.attacks.base import Attack, make_attack, register
from fedgrad_core.data.task import Split, Task


@register("none")
class NoAttack(Attack):
    name = "none"
    needs_attackers = False

    def __init__(self, *, backdoor: Optional[str] = "blackbox", **backdoor_params):
        if backdoor == "none":
            raise ValueError("backdoor='none' measures nothing: use backdoor=None")
        self.reference = make_attack(backdoor, **backdoor_params) if backdoor else None

    def setup(self, task: Task, *, seed: int) -> Task:
        # The same clean data as the attacked run: an edge-case builder may remove its tail.
        return self.reference.setup(task, seed=seed) if self.reference else task

    def backdoor_test_set(self) -> Optional[Split]:
        return self.reference.backdoor_test_set() if self.reference else None
