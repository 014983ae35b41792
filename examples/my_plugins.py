"""Two plug-ins for fedgrad_core: a coordinate-wise median defense and a label-flipping attack.

Importing this module registers both (``FEDGRAD_PLUGINS=my_plugins`` makes every registry import
it; a package would declare them as entry points instead).  The book's "Extend" page runs them.
"""

import torch

from fedgrad_core.attacks import Attack, register as register_attack
from fedgrad_core.data.task import Split
from fedgrad_core.defenses import Aggregate, register as register_defense


@register_defense("median")
def median(global_state, updates, round_idx):
    """Coordinate-wise median of the clients' models (Yin et al., ICML 2018); flags nobody.

    With an even number of clients torch.median takes the lower of the two middle values.
    """
    new = {}
    for key, tensor in global_state.items():
        if torch.is_floating_point(tensor):
            new[key] = torch.stack([u.state[key] for u in updates]).median(dim=0).values
        else:
            new[key] = tensor.clone()  # integer buffers (BatchNorm's counter) stay as they were
    return Aggregate(new, flagged=frozenset())


@register_attack("labelflip")
class LabelFlip(Attack):
    """Attackers train with their ``source`` examples labelled ``target`` and send the update
    scaled by ``boost``; backdoor accuracy is the share of test ``source`` examples called ``target``."""

    def __init__(self, *, source=7, target=1, boost=4.0):
        self.source, self.target, self.boost = source, target, boost

    def setup(self, task, *, seed):
        keep = task.test.y == self.source
        self.test = Split(task.test.x[keep], torch.full((int(keep.sum()),), self.target))
        return task

    def backdoor_test_set(self):
        return self.test

    def client_data(self, client_id, attacker_rank, clean, round_idx, generator):
        return Split(clean.x, torch.where(clean.y == self.source, self.target, clean.y))

    def after_training(self, state, client_id, attacker_rank, ctx):
        g = ctx.global_state
        return {k: g[k] + self.boost * (w - g[k]) if w.is_floating_point() else w for k, w in state.items()}
