"""Pixel-pattern triggers and the machinery the trigger attacks share (DBA code of Xie et al. 2020).

The global trigger is DBA's: four horizontal bars in the top-left corner, two on a first row and
two on a later row.  Each bar is one of DBA's four *local* triggers (local trigger ``i`` is used by
the attackers with ``attacker_rank % 4 == i``); the global trigger is their union and is what the
backdoor is tested with.  Positions are (row, column) from the top-left pixel.

Geometry (bar length ``L``, gap ``G`` between the two bars of a row, row of the second pair ``R``):

* 28 x 28 (MNIST / EMNIST / Fashion-MNIST), DBA's MNIST trigger: ``L=4, G=2, R=3`` -> rows 0 and 3,
  columns 0-3 and 6-9;
* 32 x 32 (CIFAR-10), DBA's CIFAR trigger: ``L=6, G=3, R=4`` -> rows 0 and 4, columns 0-5 and 9-14;
* any other size: the MNIST geometry scaled by ``width / 28`` (at least ``L=2, G=1, R=2``); for the
  8 x 8 digits that is rows 0 and 2, columns 0-1 and 3-4 (8 of 64 pixels).

Stamping sets the trigger pixels to white (``task.pixel_value(task.pixel_max)``, normalised) in
every channel and leaves every other pixel as it was.

Poisoning rate.  PDR, the poisoned data rate, is a share of the samples (Table 1 of the paper: 5/64
means 5 poisoned samples in every 64, DBA's batch size).  The DBA code poisons a fixed count per
batch; rounding ``PDR * batch size`` per batch does not keep the rate at other batch sizes (5/64 at
batch 32 becomes round(2.5) = 3 of 32, i.e. 6 of 64) and poisons nothing in a small last batch.  We
carry the fractional remainder from batch to batch instead: after ``s`` samples of a local
training, ``poison_total(PDR, s) = round(PDR * s)`` (halves up) of them have been poisoned, so each
batch poisons ``poison_total(PDR, s + n) - poison_total(PDR, s)`` of its ``n`` samples (the first
ones of the already shuffled batch), stamped and relabelled to the target.  Over any stretch of
the training, and so over every epoch, the count is the stated rate times the samples within one;
with DBA's batch of 64 and ``PDR * 64`` whole (5/64, 12/64) every full batch gets exactly the DBA
code's count.  Why carrying rather than counting per block of 64 samples: it gives the same rate
at every batch size, needs no block size, and spreads the poisoned samples over the batches.  (The
DBA code poisons ``min(poisoning_per_batch, n)`` samples of a last batch of ``n < 64``; we poison
its share.)  The rate is taken as the nearest fraction with denominator at most 10^6 (5/64 and
6/25 exactly), so that ``round`` is exact and not at the mercy of binary floating point.

``TriggerAttack`` is the base of ``pixel_trigger``, ``constrain_scale`` and ``dba``: the attacker
trains on its own partition with poisoned batches, with its own lr and epochs, optionally with
Bagdasaryan et al.'s anomaly loss, and scales its update before sending it.  Defaults per data set
are Table 1 of the paper (``TABLE1``); for the 8 x 8 digits (not in the paper) see ``DIGITS``.
The attacker ratio of Table 1 (0.4 unconstrained, 0.25 otherwise) is the experiment's
``attacker_fraction``: an attack cannot set it.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Optional

import torch
from torch import Tensor, nn

from fedgrad_core.attacks.base import Attack, RoundContext, State
from fedgrad_core.attacks.pgd import distance_to, scale_update
from fedgrad_core.data.task import Split, Task
from fedgrad_core.training import LocalTraining, TrainingHooks

Pixels = tuple[tuple[int, int], ...]

#: (bar length, gap between the bars of a row, row of the second pair) of DBA's triggers, by width.
DBA_GEOMETRY = {28: (4, 2, 3), 32: (6, 3, 4)}


def trigger_geometry(height: int, width: int) -> tuple[int, int, int]:
    """(bar length, gap, second row) of the trigger for an image of ``height`` x ``width``."""
    if height < 3 or width < 5:
        raise ValueError(f"a {height} x {width} image is too small for the four-bar trigger")
    if width in DBA_GEOMETRY and height > DBA_GEOMETRY[width][2]:
        return DBA_GEOMETRY[width]
    scale = width / 28
    bar = max(2, round(4 * scale))
    gap = max(1, round(2 * scale))
    row = max(2, round(3 * scale))
    if 2 * bar + gap > width or row >= height:
        bar, gap, row = 2, 1, 2
    return bar, gap, row


def local_triggers(height: int, width: int) -> tuple[Pixels, Pixels, Pixels, Pixels]:
    """DBA's four local triggers: (row 0, left), (row 0, right), (row R, left), (row R, right)."""
    bar, gap, row = trigger_geometry(height, width)
    parts = []
    for r in (0, row):
        for start in (0, bar + gap):
            parts.append(tuple((r, c) for c in range(start, start + bar)))
    return tuple(parts)  # type: ignore[return-value]


def global_trigger(height: int, width: int) -> Pixels:
    """The full trigger: the union of the four local triggers."""
    return tuple(sorted(p for part in local_triggers(height, width) for p in part))


def trigger_mask(pixels: Pixels, height: int, width: int) -> Tensor:
    """Boolean ``height`` x ``width`` mask, True on the trigger's pixels."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    for r, c in pixels:
        if not (0 <= r < height and 0 <= c < width):
            raise ValueError(f"trigger pixel {(r, c)} lies outside a {height} x {width} image")
        mask[r, c] = True
    return mask


def stamp(x: Tensor, pixels: Pixels, value: Tensor) -> Tensor:
    """A copy of images ``x`` (N x C x H x W) with ``pixels`` set to ``value`` (one per channel)."""
    if x.dim() != 4:
        raise ValueError(f"stamp expects N x C x H x W images, got shape {tuple(x.shape)}")
    value = torch.as_tensor(value, dtype=x.dtype).reshape(-1)
    if value.numel() not in (1, x.shape[1]):
        raise ValueError(f"{value.numel()} trigger value(s) for {x.shape[1]} channel(s)")
    mask = trigger_mask(pixels, x.shape[2], x.shape[3]).to(x.device)
    out = x.clone()
    out[:, :, mask] = value.to(x.device).view(1, -1, 1).expand(len(x), x.shape[1], int(mask.sum()))
    return out


def exact_rate(rate: float) -> Fraction:
    """``rate`` as the nearest fraction with denominator at most 10^6 (0.24 -> 6/25, 5/64 -> 5/64)."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float, Fraction)) or not 0 < rate <= 1:
        raise ValueError(f"the poisoned data rate must be in (0, 1], got {rate!r}")
    return Fraction(rate).limit_denominator(1_000_000)


def poison_total(rate: float, samples: int) -> int:
    """How many of the first ``samples`` samples of a local training are poisoned:
    ``rate * samples`` rounded to the nearest integer, halves up (exact arithmetic)."""
    if samples < 0:
        raise ValueError(f"samples must be >= 0, got {samples}")
    return math.floor(exact_rate(rate) * samples + Fraction(1, 2))


class TriggerPoisoning(TrainingHooks):
    """Stamp and relabel the poisoned share of every batch, carrying the remainder from batch to
    batch (``poison_total``); optionally add the anomaly loss ``(1 - alpha) * ||w - w_global||`` to
    ``alpha * task loss``.  One instance serves one local training: it counts the samples seen
    (``seen``) and poisoned (``poisoned``) since it was made."""

    def __init__(
        self,
        pixels: Pixels,
        value: Tensor,
        target: int,
        rate: float,
        *,
        alpha: float = 1.0,
        center: Optional[State] = None,
    ):
        if alpha < 1.0 and center is None:
            raise ValueError("the anomaly loss (alpha < 1) needs the global model as center")
        self.pixels, self.value, self.target, self.rate = pixels, value, target, exact_rate(rate)
        self.alpha, self.center = alpha, center
        self.seen = 0
        self.poisoned = 0

    def transform_batch(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        n = len(y)
        k = poison_total(self.rate, self.seen + n) - poison_total(self.rate, self.seen)
        self.seen += n
        self.poisoned += k
        if k == 0:
            return x, y
        x = torch.cat([stamp(x[:k], self.pixels, self.value), x[k:]])
        y = torch.cat([torch.full((k,), self.target, dtype=y.dtype, device=y.device), y[k:]])
        return x, y

    def loss(self, model: nn.Module, task_loss: Tensor) -> Tensor:
        if self.alpha >= 1.0:
            return task_loss
        return self.alpha * task_loss + (1 - self.alpha) * distance_to(model, self.center)


@dataclasses.dataclass(frozen=True)
class TriggerDefaults:
    """One attack's defaults on one data set (Table 1): PDR, scale factor, poison lr and epochs."""

    poisoned_data_rate: float
    scale: float
    poison_lr: float
    poison_epochs: int


#: Table 1 of the paper.  EMNIST and Fashion-MNIST (28 x 28) take MNIST's settings.
TABLE1 = {
    "pixel_trigger": {
        "mnist": TriggerDefaults(5 / 64, 1.0, 0.1, 2),
        "cifar10": TriggerDefaults(12 / 64, 1.0, 0.1, 10),
    },
    "constrain_scale": {
        "mnist": TriggerDefaults(5 / 64, 100.0, 0.1, 2),
        "cifar10": TriggerDefaults(6 / 25, 20.0, 0.1, 10),
    },
    "dba": {
        "mnist": TriggerDefaults(5 / 64, 100.0, 0.1, 2),
        "cifar10": TriggerDefaults(6 / 25, 20.0, 0.1, 10),
    },
}
for _table in TABLE1.values():
    _table["emnist"] = _table["fashion_mnist"] = _table["mnist"]

#: Our choice for the 8 x 8 digits with ``digits_mlp`` (1.4k training images, a few batches per
#: client): a larger PDR and more poison epochs, so that a short run (10-15 rounds) shows the
#: backdoor, and a scale factor of 5 instead of 100 (with about 70 samples per client, a factor of
#: 100 destroys the main task of so small a model in one round).
DIGITS = {
    "pixel_trigger": TriggerDefaults(8 / 32, 1.0, 0.05, 5),
    "constrain_scale": TriggerDefaults(8 / 32, 5.0, 0.05, 5),
    "dba": TriggerDefaults(8 / 32, 5.0, 0.05, 5),
}


def _positive(name: str, value, *, integer: bool = False) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not (value > 0 and math.isfinite(value)):
        kind = "a positive integer" if integer else "a positive finite number"
        raise ValueError(f"{name} must be {kind}, got {value!r}")


class TriggerAttack(Attack):
    """Shared by the trigger attacks: trigger, poisoning at the stated rate, poison lr/epochs, scaling.

    Parameters (keyword-only; None takes the data set's default from ``TABLE1`` / ``DIGITS``):
    ``target`` (label the trigger should produce, default 2 as in DBA), ``poisoned_data_rate``
    (share of the training samples poisoned, carried over batches: see the module docstring), ``scale`` (update scale factor), ``poison_lr``,
    ``poison_epochs``.
    """

    name = "trigger"
    #: 1.0: no anomaly loss; constrain-and-scale lowers it.
    alpha: float = 1.0

    def __init__(
        self,
        *,
        target: int = 2,
        poisoned_data_rate: Optional[float] = None,
        scale: Optional[float] = None,
        poison_lr: Optional[float] = None,
        poison_epochs: Optional[int] = None,
    ):
        if isinstance(target, bool) or not isinstance(target, int) or target < 0:
            raise ValueError(f"target must be a non-negative class index, got {target!r}")
        if poisoned_data_rate is not None and (isinstance(poisoned_data_rate, bool) or not 0 < poisoned_data_rate <= 1):
            raise ValueError(f"poisoned_data_rate must be in (0, 1], got {poisoned_data_rate!r}")
        if scale is not None:
            _positive("scale", scale)
        if poison_lr is not None:
            _positive("poison_lr", poison_lr)
        if poison_epochs is not None:
            _positive("poison_epochs", poison_epochs, integer=True)
        self.target = target
        self._given = {
            "poisoned_data_rate": poisoned_data_rate,
            "scale": scale,
            "poison_lr": poison_lr,
            "poison_epochs": poison_epochs,
        }
        self.settings: Optional[TriggerDefaults] = None
        self.value: Optional[Tensor] = None
        self.image_size: Optional[tuple[int, int]] = None
        self._backdoor: Optional[Split] = None

    # ------------------------------------------------------------------ what subclasses choose

    def trigger_for(self, attacker_rank: int) -> Pixels:
        """The trigger attacker ``attacker_rank`` stamps on its training data (default: the full one)."""
        assert self.image_size is not None, "setup() first"
        return global_trigger(*self.image_size)

    def defaults(self, dataset: str) -> TriggerDefaults:
        if dataset == "digits":
            return DIGITS[self.name]
        table = TABLE1[self.name]
        return table.get(dataset, table["mnist"])

    # ------------------------------------------------------------------ the hooks

    def setup(self, task: Task, *, seed: int) -> Task:
        if self.target >= task.num_classes:
            raise ValueError(f"target {self.target} is not a class of {task.name} ({task.num_classes} classes)")
        base = self.defaults(task.name)
        given = {k: v for k, v in self._given.items() if v is not None}
        self.settings = dataclasses.replace(base, **given)
        self.image_size = (task.image_shape[1], task.image_shape[2])
        self.value = task.pixel_value(task.pixel_max)
        keep = task.test.y != self.target
        x = stamp(task.test.x[keep], global_trigger(*self.image_size), self.value)
        self._backdoor = Split(x, torch.full((len(x),), self.target, dtype=torch.int64))
        return task

    def backdoor_test_set(self) -> Optional[Split]:
        assert self._backdoor is not None, "setup() first"
        return self._backdoor

    def local_training(self, base: LocalTraining) -> LocalTraining:
        assert self.settings is not None, "setup() first"
        return dataclasses.replace(base, lr=self.settings.poison_lr, epochs=self.settings.poison_epochs)

    def training_hooks(self, client_id, attacker_rank, ctx: RoundContext, generator) -> TrainingHooks:
        assert self.settings is not None and self.value is not None, "setup() first"
        return TriggerPoisoning(
            self.trigger_for(attacker_rank),
            self.value,
            self.target,
            self.settings.poisoned_data_rate,
            alpha=self.alpha,
            center=ctx.global_state,
        )

    def after_training(self, state, client_id, attacker_rank, ctx: RoundContext):
        assert self.settings is not None, "setup() first"
        if self.settings.scale == 1.0:
            return state
        return scale_update(state, ctx.global_state, self.settings.scale)
