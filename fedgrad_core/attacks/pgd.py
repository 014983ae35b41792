"""PGD edge-case attack and PGD with model replacement (Sun et al. 2019; Wang et al., NeurIPS 2020).

``pgd``: every attacker trains on the shared edge-case poisoned set of the black-box attack
(``EdgeCaseAttack``: edge-case examples relabelled to the target plus clean examples, at the
poisoned data rate), with the benign clients' hyper-parameters, but projected gradient descent
keeps its model inside an L2 ball of radius ``eps`` around the round's global model: the whole
model is projected every ``project_every`` optimiser steps (batches) and once more after the last
one.  Defaults are the authors' code: ``eps=2``, ``project_every=10``.  The paper (section 5.1)
says "the projected frequency is set to 1"; ``project_every=1`` gives that.  With
``eps_decay=True`` the radius shrinks as ``eps * 0.998 ** (round - 1)``, the variant the authors
ran against Krum / Multi-Krum.

``pgd_mr``: PGD, then model replacement (Bagdasaryan et al. 2020, as Wang et al. combine them):
the attacker sends ``w_global + s * (w - w_global)`` with ``s`` = (total data size of the round's
selected clients) / (the attacker's data size), both from ``RoundContext.num_samples``, which is
known before local training (the authors' code had a branch that computed it after training and
crashed in round 1).  An explicit ``scale`` replaces that factor.  With several attackers in one
round every one of them replaces the model, so together they overshoot (on digits main accuracy
falls to about 0.65); ``shared_scale=True`` (ours, not the authors') divides by the data size of
all the round's attackers, so that their scaled updates add up to a single replacement.  Under FedAvg with one attacker
in the round, the attacker's scaled update then replaces the benign clients' average update.  The
projection applies to the trained model, before scaling: the scaled model lies ``s`` times further.

What is projected and what is scaled: the ball is measured on the model's trainable parameters
(what SGD moves, and what the authors' ``vectorize_net`` measured); model replacement scales every
floating-point state entry (what the server aggregates).  For the paper's networks (no batch norm)
and ``digits_mlp`` the two sets are the same tensors; integer buffers are never touched.

The number of attackers is the experiment's ``attacker_fraction`` (the paper's compromising
ratio, 0.25 by default), not a parameter of the attack.
"""

from __future__ import annotations

import math
from typing import Collection, Mapping, Optional

import torch
from torch import Tensor, nn

from fedgrad_core.attacks.base import RoundContext, State, register
from fedgrad_core.attacks.blackbox import EdgeCaseAttack
from fedgrad_core.training import TrainingHooks

#: Per-round decay of the PGD radius in the authors' Krum runs (the same as the lr schedule's).
EPS_DECAY = 0.998


def distance_to(model: nn.Module, center: State, *, skip: Collection[str] = ()) -> Tensor:
    """L2 distance of ``model``'s trainable parameters (other than ``skip``) to the same entries of
    ``center``.

    Differentiable (an anomaly loss can use it); the gradient at distance 0 is 0, not NaN.
    """
    diffs = [
        (p - center[name].to(device=p.device, dtype=p.dtype)).reshape(-1)
        for name, p in model.named_parameters()
        if name not in skip
    ]
    return torch.linalg.vector_norm(torch.cat(diffs)) if diffs else torch.zeros(())


@torch.no_grad()
def project_onto_ball(model: nn.Module, center: State, eps: float, *, skip: Collection[str] = ()) -> float:
    """Move ``model``'s parameters (other than ``skip``) onto the L2 ball of radius ``eps`` around
    ``center`` (in place).

    Returns the distance before projection; a model already inside the ball is left unchanged.
    """
    norm = float(distance_to(model, center, skip=skip))
    if norm > eps:
        factor = eps / norm
        for name, p in model.named_parameters():
            if name not in skip:
                c = center[name].to(device=p.device, dtype=p.dtype)
                p.copy_(c + (p - c) * factor)
    return norm


def scale_update(state: Mapping[str, Tensor], global_state: State, factor: float) -> dict[str, Tensor]:
    """``global + factor * (state - global)`` for every floating entry; other entries unchanged."""
    out = {}
    for key, value in state.items():
        if value.is_floating_point():
            g = global_state[key].to(device=value.device, dtype=value.dtype)
            out[key] = g + (value - g) * factor
        else:
            out[key] = value.clone()
    return out


def replacement_factor(ctx: RoundContext, client_id: int, *, shared: bool = False) -> float:
    """Total data size of the round's selected clients over the attacker's own data size.

    ``shared=True`` divides by the data size of *all* the round's attackers instead: their scaled
    updates then add up to one replacement of the global model, not one per attacker.
    """
    own = sum(ctx.num_samples[c] for c in ctx.attackers) if shared else ctx.num_samples[client_id]
    if own <= 0:
        raise ValueError(f"client {client_id} trains on no data; model replacement is undefined")
    return sum(ctx.num_samples[c] for c in ctx.selected) / own


def _positive_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


class ProjectionHooks(TrainingHooks):
    """Project the model onto the ball every ``every`` steps and after the last step."""

    def __init__(self, center: State, eps: float, every: int):
        self.center = center
        self.eps = eps
        self.every = every

    def after_step(self, model: nn.Module, step: int) -> None:
        if step % self.every == 0:
            project_onto_ball(model, self.center, self.eps)

    def after_training(self, model: nn.Module) -> None:
        project_onto_ball(model, self.center, self.eps)


@register("pgd")
class PGD(EdgeCaseAttack):
    """Edge-case data, local training projected onto an L2 ball around the global model."""

    name = "pgd"

    def __init__(
        self,
        *,
        eps: float = 2.0,
        project_every: int = 10,
        eps_decay: bool = False,
        poisoned_data_rate: Optional[float] = None,
        num_edge: Optional[int] = None,
    ):
        super().__init__(poisoned_data_rate=poisoned_data_rate, num_edge=num_edge)
        if not _positive_number(eps):
            raise ValueError(f"eps (the PGD radius) must be a positive finite number, got {eps!r}")
        if isinstance(project_every, bool) or not isinstance(project_every, int) or project_every < 1:
            raise ValueError(f"project_every must be a positive integer (batches), got {project_every!r}")
        if not isinstance(eps_decay, bool):
            raise ValueError(f"eps_decay must be True or False, got {eps_decay!r}")
        self.eps = float(eps)
        self.project_every = project_every
        self.eps_decay = eps_decay

    def radius(self, round_idx: int) -> float:
        """The ball's radius in round ``round_idx`` (counting from 1)."""
        return self.eps * EPS_DECAY ** (round_idx - 1) if self.eps_decay else self.eps

    def training_hooks(self, client_id, attacker_rank, ctx: RoundContext, generator) -> TrainingHooks:
        return ProjectionHooks(ctx.global_state, self.radius(ctx.round_idx), self.project_every)


@register("pgd_mr")
class PGDModelReplacement(PGD):
    """PGD, then the update scaled by the model-replacement factor (or ``scale``)."""

    name = "pgd_mr"

    def __init__(
        self,
        *,
        scale: Optional[float] = None,
        shared_scale: bool = False,
        eps: float = 2.0,
        project_every: int = 10,
        eps_decay: bool = False,
        poisoned_data_rate: Optional[float] = None,
        num_edge: Optional[int] = None,
    ):
        super().__init__(
            eps=eps,
            project_every=project_every,
            eps_decay=eps_decay,
            poisoned_data_rate=poisoned_data_rate,
            num_edge=num_edge,
        )
        if scale is not None and not _positive_number(scale):
            raise ValueError(f"scale must be None (model replacement) or a positive finite number, got {scale!r}")
        if not isinstance(shared_scale, bool):
            raise ValueError(f"shared_scale must be True or False, got {shared_scale!r}")
        if shared_scale and scale is not None:
            raise ValueError("shared_scale applies to the model-replacement factor; it cannot combine with scale")
        self.scale = None if scale is None else float(scale)
        self.shared_scale = shared_scale

    def factor(self, ctx: RoundContext, client_id: int) -> float:
        if self.scale is not None:
            return self.scale
        return replacement_factor(ctx, client_id, shared=self.shared_scale)

    def after_training(self, state, client_id, attacker_rank, ctx: RoundContext):
        return scale_update(state, ctx.global_state, self.factor(ctx, client_id))
