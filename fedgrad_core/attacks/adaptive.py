"""Ultimate-layer mimicry: an edge-case backdoor attacker that knows FedGrad (beyond the paper).

Every attack of the paper ignores the defense.  FedGrad (Nguyen et al. 2023) inspects only the
*ultimate layer* (the last fully connected layer, paper Definition 1): the soft filter scores the
cosine of a client's ultimate weight against the round's average, the hard filter clusters the
clients' by-class ultimate gradient sums, and the trust score follows from both.  Only the
closeness score that picks the benign cluster looks at the whole model.  This attacker knows that
and hides its backdoor in the layers FedGrad does not look at:

1. it trains, on its own clean partition and with the benign clients' hyper-parameters, the honest
   update it would send if it were benign (its *benign reference*);
2. it trains the backdoor exactly as the black-box edge-case attack (``blackbox``: the shared
   poisoned set of edge-case examples relabelled to the target plus clean examples, the benign
   hyper-parameters), so that the two attacks are comparable (Table 2's black-box row);
3. with ``hold_head=True`` (default) it keeps its ultimate layer equal to the benign reference's
   from the first optimiser step on (a projection after every step, as PGD projects onto its
   ball): the layers below learn to push edge-case inputs to the target *through the head the
   server will see*; with ``hold_head=False`` it trains freely and only swaps the head in after
   the last step;
4. optionally (``eps``) the layers below are projected onto an L2 ball of radius ``eps`` every
   ``project_every`` steps and after the last one, as the PGD attack does: around the global
   model (``ball="global"``, default), or around the attacker's own benign reference
   (``ball="reference"``), so that its whole model stays within ``eps`` of the honest model it
   would have sent; against a defense that compares whole models (Krum's score, FedGrad's
   closeness) this is the stronger answer.

The update it sends therefore has, in the ultimate layer, exactly an honest client's update (its
by-class pattern and its soft score are those of a benign client with the attacker's data), while
the layers below carry the backdoor.

Published adaptive attacks it builds on:

* Bagdasaryan et al., AISTATS 2020, "How to backdoor federated learning": constrain-and-scale
  makes the malicious model pass the anomaly detector the attacker knows of (a distance term in
  the loss).  Here the "detector" is FedGrad's, and the constraint is exact: the inspected layer
  *is* a benign update.
* Baruch et al., NeurIPS 2019, "A Little Is Enough": the attacker stays inside the spread of the
  benign updates, which it estimates from benign data of its own.  Here the benign statistic is
  the attacker's own honest update of the inspected layer.
* Zhang et al., ICML 2022, "Neurotoxin": the backdoor is confined to the parameters the benign
  updates (or here: the defense) pay little attention to, so that it survives.  Here these are all
  layers below the ultimate one.
* Sun et al., 2019, "Can You Really Backdoor Federated Learning?" and Wang et al., NeurIPS 2020,
  "Attack of the Tails" (PGD): a norm-bounded attacker stays inside a ball so that norm- and
  distance-based defenses see nothing unusual.  Here the ball (``eps``) answers defenses that
  compare whole models, such as ``fedgrad_plus``'s closeness filter.
* Tramèr et al., NeurIPS 2020, "On Adaptive Attacks to Adversarial Example Defenses": a defense is
  measured against the attacker who knows it and targets its decision rule, as here.

Assumptions (what the attacker knows): FedGrad's filters inspect the last ``nn.Linear`` of the
model (``models.ultimate_layer``); the benign clients' local training hyper-parameters (it is a
client and is handed them); its own clean partition.  It does not know the other clients'
updates, the defense's thresholds or its state.  All randomness is deterministic: the reference
training draws from a generator derived from the client's round generator's seed (so the backdoor
training draws the same batches as the black-box attacker would), never from the global RNG.

Parameters (keyword-only): ``hold_head``, ``eps`` (None: no ball), ``project_every``, ``ball`` and the
edge-case set's ``poisoned_data_rate`` and ``num_edge`` (as ``blackbox``).
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor, nn

from fedgrad_core.attacks.base import RoundContext, State, register
from fedgrad_core.attacks.blackbox import EdgeCaseAttack
from fedgrad_core.attacks.pgd import project_onto_ball
from fedgrad_core.data.task import Split
from fedgrad_core.models import ultimate_layer
from fedgrad_core.training import LocalTraining, TrainingHooks, local_train

#: Where the ``eps`` ball is centred: the round's global model, or the attacker's benign reference.
BALL_CENTERS = ("global", "reference")

#: Distinct purpose of the reference training's generator (any fixed integer).
_REFERENCE = 11


def reference_generator(generator: torch.Generator) -> torch.Generator:
    """A generator for the benign reference training, derived from ``generator``'s seed.

    It reads ``initial_seed()`` and draws nothing from ``generator``, so the attacker's backdoor
    training sees the batches it would see without the reference.
    """
    seed = np.random.SeedSequence([generator.initial_seed(), _REFERENCE]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(seed >> 1))


class MimicHooks(TrainingHooks):
    """Hold the ultimate layer at the benign reference (and the layers below inside an optional ball).

    The reference is trained lazily, at the first hook call that sees the model (after the first
    optimiser step): a copy of the model is reset to the round's global model and trained on
    ``clean`` with ``settings()``, a callable because the simulation hands the benign settings to
    the attack (``Attack.local_training``) only after it asked for the hooks.
    """

    def __init__(
        self,
        center: State,
        clean: Split,
        settings: Callable[[], LocalTraining],
        generator: torch.Generator,
        *,
        hold_head: bool,
        eps: Optional[float],
        project_every: int,
        ball: str = "global",
    ):
        self.center = center
        self.ball = ball
        self.clean = clean
        self.settings = settings
        self.generator = generator
        self.hold_head = hold_head
        self.eps = eps
        self.project_every = project_every
        self.head: Optional[dict[str, Tensor]] = None
        self.honest: Optional[State] = None

    def reference(self, model: nn.Module) -> dict[str, Tensor]:
        """The benign reference's ultimate layer (weight and bias), trained once."""
        if self.head is None:
            honest = copy.deepcopy(model)
            honest.load_state_dict(self.center)
            device = next(honest.parameters()).device
            local_train(honest, self.clean, self.settings(), generator=self.generator, device=device)
            self.honest = {key: value.detach().clone() for key, value in honest.state_dict().items()}
            self.head = {key: self.honest[key] for key in ultimate_layer(model)}
        return self.head

    def _project(self, model: nn.Module, skip: tuple[str, ...]) -> None:
        center = self.center
        if self.ball == "reference":
            self.reference(model)  # trains the honest model the first time
            assert self.honest is not None
            center = self.honest
        assert self.eps is not None
        project_onto_ball(model, center, self.eps, skip=skip)

    def _apply(self, model: nn.Module, project: bool) -> None:
        head = self.reference(model)  # trains (with gradients) the first time
        state = model.state_dict()  # detached tensors sharing storage with the parameters
        with torch.no_grad():
            for key, value in head.items():
                state[key].copy_(value)
        if self.eps is not None and project:
            self._project(model, tuple(head))

    def after_step(self, model: nn.Module, step: int) -> None:
        project = step % self.project_every == 0
        if self.hold_head:
            self._apply(model, project)
        elif self.eps is not None and project:
            self._project(model, ultimate_layer(model))

    def after_training(self, model: nn.Module) -> None:
        self._apply(model, project=True)


def _positive_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@register("ultimate_mimic")
class UltimateMimic(EdgeCaseAttack):
    """Black-box edge-case backdoor whose ultimate layer is the attacker's own benign update.

    Registered as ``ultimate_mimic`` rather than a generic "adaptive": it adapts to one property of
    one defense (FedGrad inspects the ultimate layer only), and other adaptive attacks (staying
    under the soft threshold, spreading the backdoor over rounds) would be different attacks.
    """

    name = "ultimate_mimic"

    def __init__(
        self,
        *,
        hold_head: bool = True,
        eps: Optional[float] = None,
        project_every: int = 10,
        ball: str = "global",
        poisoned_data_rate: Optional[float] = None,
        num_edge: Optional[int] = None,
    ):
        super().__init__(poisoned_data_rate=poisoned_data_rate, num_edge=num_edge)
        if ball not in BALL_CENTERS:
            raise ValueError(f"ball (the center of the eps ball) must be one of {list(BALL_CENTERS)}, got {ball!r}")
        if not isinstance(hold_head, bool):
            raise ValueError(f"hold_head must be True or False, got {hold_head!r}")
        if eps is not None and not _positive_number(eps):
            raise ValueError(
                f"eps (radius of the ball around the layers below the head) must be None or a positive finite number, "
                f"got {eps!r}"
            )
        if isinstance(project_every, bool) or not isinstance(project_every, int) or project_every < 1:
            raise ValueError(f"project_every must be a positive integer (batches), got {project_every!r}")
        self.hold_head = hold_head
        self.eps = None if eps is None else float(eps)
        self.project_every = project_every
        self.ball = ball
        self._clean: dict[int, Split] = {}
        self._settings: Optional[LocalTraining] = None

    def client_data(self, client_id, attacker_rank, clean, round_idx, generator) -> Split:
        # Keep the attacker's own partition for the benign reference; train the backdoor on the poisoned set.
        self._clean[client_id] = clean
        return super().client_data(client_id, attacker_rank, clean, round_idx, generator)

    def local_training(self, base: LocalTraining) -> LocalTraining:
        # The simulation hands every attacker the benign settings right before its local training:
        # the reference trains with them, the backdoor too (black-box: nothing changed).
        self._settings = base
        return base

    def benign_settings(self) -> LocalTraining:
        """The round's benign hyper-parameters, as last handed to ``local_training``."""
        if self._settings is None:
            raise RuntimeError("local_training() was not called before training: the benign settings are unknown")
        return self._settings

    def training_hooks(self, client_id, attacker_rank, ctx: RoundContext, generator) -> MimicHooks:
        if client_id not in self._clean:
            raise RuntimeError(f"client_data() was not called for attacker {client_id} this round; no clean data")
        return MimicHooks(
            ctx.global_state,
            self._clean.pop(client_id),
            self.benign_settings,
            reference_generator(generator),
            hold_head=self.hold_head,
            eps=self.eps,
            project_every=self.project_every,
            ball=self.ball,
        )
