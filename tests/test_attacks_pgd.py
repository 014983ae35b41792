"""PGD and PGD + model replacement: the projection ball, the replacement factor, validation."""

import pytest
import torch

from fedgrad_core.attacks import RoundContext, make_attack
from fedgrad_core.attacks.pgd import EPS_DECAY, ProjectionHooks, distance_to, scale_update
from fedgrad_core.data import load_task
from fedgrad_core.models import make_model
from fedgrad_core.training import LocalTraining, local_train

BENIGN = LocalTraining(lr=0.02, epochs=2, batch_size=32)


@pytest.fixture(scope="module")
def digits():
    return load_task("digits")


def _ctx(global_state, *, round_idx=1, num_samples=None, client=0):
    num_samples = num_samples or {client: 100}
    selected = tuple(sorted(num_samples))
    return RoundContext(round_idx, global_state, selected, (client,), num_samples, 0.02)


def _attacker_training(attack, task, *, seed=0, client=0):
    """One PGD attacker's local round through the simulation's pieces; returns (global, trained)."""
    model = make_model("digits_mlp", in_channels=1, num_classes=10, seed=0)
    global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    data = attack.client_data(client, 0, task.train, 1, generator)
    ctx = _ctx(global_state, num_samples={client: len(data), 1: 100}, client=client)
    hooks = attack.training_hooks(client, 0, ctx, generator)
    local_train(model, data, attack.local_training(BENIGN), generator=generator, hooks=hooks)
    state = attack.after_training({k: v.detach().clone() for k, v in model.state_dict().items()}, client, 0, ctx)
    return global_state, model, state, ctx


def test_pgd_attacker_model_lies_within_eps_of_the_global_model(digits):
    # Prepare: a radius well below the unconstrained poisoned update (about 1.4 on digits_mlp)
    free = make_attack("blackbox")
    task = free.setup(digits, seed=0)
    pgd = make_attack("pgd", eps=0.3, project_every=2)
    pgd.setup(digits, seed=0)
    # Execute
    g_free, model_free, _, _ = _attacker_training(free, task)
    g_pgd, model_pgd, sent, _ = _attacker_training(pgd, task)
    # Assert: without projection the model leaves the ball; with it, it ends inside (on its surface)
    assert float(distance_to(model_free, g_free).detach()) > 0.3
    dist = float(distance_to(model_pgd, g_pgd).detach())
    assert dist <= 0.3 * (1 + 1e-5)
    assert dist == pytest.approx(0.3, rel=1e-4)
    assert all(torch.equal(sent[k], v) for k, v in model_pgd.state_dict().items())  # pgd sends it unscaled


def test_projection_runs_every_project_every_steps_and_after_training():
    # Prepare: a one-parameter model at distance 5 from the center 0
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(5.0)
    hooks = ProjectionHooks({"weight": torch.zeros(1, 1)}, eps=2.0, every=10)
    # Execute / Assert: step 3 is not a projection step, step 10 is
    hooks.after_step(model, 3)
    assert model.weight.item() == 5.0
    hooks.after_step(model, 10)
    assert model.weight.item() == pytest.approx(2.0)
    with torch.no_grad():
        model.weight.fill_(-4.0)
    hooks.after_training(model)
    assert model.weight.item() == pytest.approx(-2.0)


def test_model_inside_the_ball_is_left_unchanged():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.5)
    ProjectionHooks({"weight": torch.zeros(1, 1)}, eps=2.0, every=1).after_step(model, 1)
    assert model.weight.item() == 0.5


def test_eps_decay_shrinks_the_radius_per_round():
    assert make_attack("pgd").radius(7) == 2.0
    decayed = make_attack("pgd", eps=2.0, eps_decay=True)
    assert decayed.radius(1) == 2.0
    assert decayed.radius(3) == pytest.approx(2.0 * EPS_DECAY**2)


def test_model_replacement_multiplies_the_update_by_total_over_own_data_size():
    # Prepare: selected clients hold 25 (the attacker), 75 and 100 samples -> factor 200 / 25 = 8
    attack = make_attack("pgd_mr")
    global_state = {"w": torch.tensor([1.0, -2.0, 0.5]), "steps": torch.tensor(7)}
    trained = {"w": torch.tensor([1.5, -2.25, 0.5]), "steps": torch.tensor(9)}
    ctx = _ctx(global_state, num_samples={3: 25, 4: 75, 5: 100}, client=3)
    # Execute
    sent = attack.after_training(trained, 3, 0, ctx)
    # Assert: exactly 8 x the update; integer entries are passed through untouched
    assert attack.factor(ctx, 3) == 8.0
    assert torch.equal(sent["w"] - global_state["w"], 8.0 * (trained["w"] - global_state["w"]))
    assert torch.equal(sent["steps"], trained["steps"])


def test_shared_scale_divides_by_all_the_rounds_attackers():
    # Prepare: attackers 3 (25 samples) and 4 (75); client 5 benign (100) -> 200 / (25 + 75) = 2
    attack = make_attack("pgd_mr", shared_scale=True)
    global_state = {"w": torch.tensor([0.0, 1.0])}
    ctx = RoundContext(1, global_state, (3, 4, 5), (3, 4), {3: 25, 4: 75, 5: 100}, 0.02)
    # Execute
    sent = attack.after_training({"w": torch.tensor([0.5, 0.75])}, 3, 0, ctx)
    # Assert
    assert attack.factor(ctx, 3) == attack.factor(ctx, 4) == 2.0
    assert torch.equal(sent["w"], torch.tensor([1.0, 0.5]))


def test_shared_scale_and_an_explicit_scale_exclude_each_other():
    with pytest.raises(ValueError, match="cannot combine with scale"):
        make_attack("pgd_mr", shared_scale=True, scale=2.0)


def test_explicit_scale_replaces_the_replacement_factor():
    attack = make_attack("pgd_mr", scale=3.0)
    global_state = {"w": torch.tensor([0.0, 1.0])}
    ctx = _ctx(global_state, num_samples={0: 10, 1: 90})
    sent = attack.after_training({"w": torch.tensor([0.5, 0.75])}, 0, 0, ctx)
    assert torch.equal(sent["w"], torch.tensor([1.5, 0.25]))


def test_pgd_mr_in_local_training_sends_the_projected_update_scaled(digits):
    pgd_mr = make_attack("pgd_mr", eps=0.3)
    task = pgd_mr.setup(digits, seed=0)
    global_state, model, sent, ctx = _attacker_training(pgd_mr, task)
    factor = (ctx.num_samples[0] + 100) / ctx.num_samples[0]
    trained = model.state_dict()
    for key, g in global_state.items():
        torch.testing.assert_close(sent[key] - g, factor * (trained[key] - g))


def test_scale_update_with_factor_one_is_the_identity():
    state = {"a": torch.randn(4, generator=torch.Generator().manual_seed(1))}
    out = scale_update(state, {"a": torch.zeros(4)}, 1.0)
    assert torch.equal(out["a"], state["a"])


def test_pgd_local_training_is_deterministic_for_a_seed(digits):
    runs = []
    for _ in range(2):
        attack = make_attack("pgd", eps=0.3)
        task = attack.setup(digits, seed=3)
        runs.append(_attacker_training(attack, task, seed=5)[2])
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("pgd", {"eps": 0}, "eps"),
        ("pgd", {"eps": float("inf")}, "eps"),
        ("pgd", {"project_every": 0}, "project_every"),
        ("pgd", {"project_every": 2.5}, "project_every"),
        ("pgd", {"eps_decay": "yes"}, "eps_decay"),
        ("pgd_mr", {"scale": -1.0}, "scale"),
        ("pgd_mr", {"poisoned_data_rate": 1.5}, "poisoned_data_rate"),
    ],
)
def test_invalid_parameters_raise_value_errors_naming_them(name, params, message):
    with pytest.raises(ValueError, match=message):
        make_attack(name, **params)
