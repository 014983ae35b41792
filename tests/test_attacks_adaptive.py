"""ultimate_mimic: the edge-case backdoor attacker that sends its own benign ultimate layer."""

import json
import math
from pathlib import Path

import pytest
import torch

from fedgrad_core import ExperimentConfig
from fedgrad_core.attacks import RoundContext, make_attack
from fedgrad_core.attacks.adaptive import MimicHooks, reference_generator
from fedgrad_core.attacks.pgd import distance_to, project_onto_ball
from fedgrad_core.data import load_task
from fedgrad_core.models import make_model, ultimate_layer
from fedgrad_core.simulation import accuracy, run_experiment, train_clients
from fedgrad_core.training import LocalTraining, local_train

BENIGN = LocalTraining(lr=0.02, epochs=2, batch_size=32)
ATTACKER, HONEST = 3, 5
HEAD = ("classifier.weight", "classifier.bias")  # digits_mlp's ultimate layer


@pytest.fixture(scope="module")
def digits():
    return load_task("digits")


@pytest.fixture(scope="module")
def global_state(digits):
    # A non-trivial global model: the digits MLP trained for two epochs, so updates are not from init.
    model = make_model("digits_mlp", in_channels=1, num_classes=10, seed=0)
    local_train(model, digits.train.subset(range(300)), BENIGN, generator=torch.Generator().manual_seed(0))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _round(attack, task, global_state, *, seed=7):
    """One round of one attacker (client 3, 120 clean samples) and one honest client (client 5, 80
    samples) through the simulation's ``train_clients``; returns {client: sent state} and the shards."""
    shards = {ATTACKER: task.train.subset(range(0, 120)), HONEST: task.train.subset(range(120, 200))}
    generators = {c: torch.Generator().manual_seed(seed * 100 + c) for c in shards}
    data = {
        ATTACKER: attack.client_data(ATTACKER, 0, shards[ATTACKER], 1, generators[ATTACKER]),
        HONEST: shards[HONEST],
    }
    ctx = RoundContext(1, global_state, (ATTACKER, HONEST), (ATTACKER,), {c: len(d) for c, d in data.items()}, 0.02)
    worker = make_model("digits_mlp", in_channels=1, num_classes=10, seed=1)
    updates = train_clients(
        worker, global_state, data, generators, BENIGN, "cpu", attack=attack, pool=(ATTACKER,), ctx=ctx
    )
    return {u.client_id: u.state for u in updates}, shards, seed * 100 + ATTACKER


def _honest_reference(global_state, clean, round_seed):
    """What the attacker would send if it were honest: its clean shard, benign settings, reference generator."""
    model = make_model("digits_mlp", in_channels=1, num_classes=10, seed=2)
    model.load_state_dict(global_state)
    local_train(model, clean, BENIGN, generator=reference_generator(torch.Generator().manual_seed(round_seed)))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _model(state):
    model = make_model("digits_mlp", in_channels=1, num_classes=10, seed=0)
    model.load_state_dict(state)
    return model


def test_sent_ultimate_layer_is_the_attackers_own_benign_update(digits, global_state):
    # Prepare
    attack = make_attack("ultimate_mimic")
    task = attack.setup(digits, seed=0)
    # Execute
    sent, shards, round_seed = _round(attack, task, global_state)
    reference = _honest_reference(global_state, shards[ATTACKER], round_seed)
    # Assert: the head is exactly the honest update on the attacker's own clean data ...
    assert ultimate_layer(_model(global_state)) == HEAD
    for key in HEAD:
        assert torch.equal(sent[ATTACKER][key], reference[key])
        assert not torch.equal(sent[ATTACKER][key], global_state[key])  # a real update, not the global head
    # ... while every layer below differs from the honest update (it carries the backdoor)
    lower = [k for k in sent[ATTACKER] if k not in HEAD]
    assert lower and all(not torch.allclose(sent[ATTACKER][k], reference[k], atol=1e-4) for k in lower)
    # the honest client is untouched by the attack (trained as usual)
    assert not torch.equal(sent[HONEST][HEAD[0]], sent[ATTACKER][HEAD[0]])


def test_layers_below_carry_the_backdoor(digits, global_state):
    # Prepare
    attack = make_attack("ultimate_mimic")
    task = attack.setup(digits, seed=0)
    backdoor = attack.backdoor_test_set()
    # Execute
    sent, shards, round_seed = _round(attack, task, global_state)
    honest = accuracy(_model(_honest_reference(global_state, shards[ATTACKER], round_seed)), backdoor, "cpu")
    poisoned = accuracy(_model(sent[ATTACKER]), backdoor, "cpu")
    # Assert: with the same (benign) head, the attacker's layers below send far more edge cases to the target
    assert poisoned > honest + 0.3


def test_without_holding_the_head_the_layers_below_are_the_black_box_attackers(digits, global_state):
    # Prepare: hold_head=False trains exactly as black-box (same batches: the reference draws from its
    # own generator) and swaps the head in only at the end
    mimic = make_attack("ultimate_mimic", hold_head=False)
    blackbox = make_attack("blackbox")
    task = mimic.setup(digits, seed=0)
    blackbox.setup(digits, seed=0)
    # Execute
    sent_mimic, shards, round_seed = _round(mimic, task, global_state)
    sent_blackbox, _, _ = _round(blackbox, task, global_state)
    reference = _honest_reference(global_state, shards[ATTACKER], round_seed)
    # Assert
    for key, value in sent_mimic[ATTACKER].items():
        expected = reference[key] if key in HEAD else sent_blackbox[ATTACKER][key]
        assert torch.equal(value, expected), key
    assert not torch.equal(sent_blackbox[ATTACKER][HEAD[0]], reference[HEAD[0]])


def test_holding_the_head_changes_what_the_layers_below_learn(digits, global_state):
    held = make_attack("ultimate_mimic")
    swapped = make_attack("ultimate_mimic", hold_head=False)
    task = held.setup(digits, seed=0)
    swapped.setup(digits, seed=0)
    a, _, _ = _round(held, task, global_state)
    b, _, _ = _round(swapped, task, global_state)
    assert all(torch.equal(a[ATTACKER][k], b[ATTACKER][k]) for k in HEAD)  # same reference head
    assert not torch.equal(a[ATTACKER]["features.1.weight"], b[ATTACKER]["features.1.weight"])


def test_deterministic_for_a_seed_and_different_for_another(digits, global_state):
    runs = []
    for seed in (7, 7, 8):
        attack = make_attack("ultimate_mimic")
        task = attack.setup(digits, seed=0)
        runs.append(_round(attack, task, global_state, seed=seed)[0][ATTACKER])
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not torch.equal(runs[0][HEAD[0]], runs[2][HEAD[0]])


def test_eps_keeps_the_layers_below_inside_the_ball_and_the_head_benign(digits, global_state):
    # Prepare: a radius well below the free poisoned update of the layers below
    free = make_attack("ultimate_mimic")
    ball = make_attack("ultimate_mimic", eps=0.3, project_every=2)
    task = free.setup(digits, seed=0)
    ball.setup(digits, seed=0)
    # Execute
    sent_free, shards, round_seed = _round(free, task, global_state)
    sent_ball, _, _ = _round(ball, task, global_state)
    reference = _honest_reference(global_state, shards[ATTACKER], round_seed)
    # Assert
    assert float(distance_to(_model(sent_free[ATTACKER]), global_state, skip=HEAD)) > 0.3
    assert float(distance_to(_model(sent_ball[ATTACKER]), global_state, skip=HEAD)) == pytest.approx(0.3, rel=1e-4)
    assert all(torch.equal(sent_ball[ATTACKER][k], reference[k]) for k in HEAD)


def test_projection_with_skip_scales_only_the_layers_below():
    # Prepare: lower layer at (3, 4) from a center 0 (distance 5), head at 7
    model = torch.nn.Sequential(torch.nn.Linear(2, 1, bias=False), torch.nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[3.0, 4.0]]))
        model[1].weight.fill_(7.0)
    center = {"0.weight": torch.zeros(1, 2), "1.weight": torch.zeros(1, 1)}
    # Execute
    before = project_onto_ball(model, center, 1.0, skip=("1.weight",))
    # Assert
    assert before == pytest.approx(5.0)
    assert model[0].weight[0].tolist() == pytest.approx([0.6, 0.8])
    assert model[1].weight.item() == 7.0
    assert project_onto_ball(model, center, 2.0, skip=("1.weight",)) == pytest.approx(1.0)  # inside: unchanged
    assert model[0].weight[0].tolist() == pytest.approx([0.6, 0.8])


def test_hooks_project_every_project_every_steps():
    # A head-free toy: hold_head=False, eps=1; step 3 is not a projection step, step 4 is
    model = torch.nn.Sequential(torch.nn.Linear(2, 1, bias=False), torch.nn.Linear(1, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[3.0, 4.0]]))
    center = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    hooks = MimicHooks(center, None, lambda: BENIGN, torch.Generator(), hold_head=False, eps=1.0, project_every=4)
    hooks.after_step(model, 3)
    assert model[0].weight[0].tolist() == pytest.approx([3.0, 4.0])
    hooks.after_step(model, 4)
    assert model[0].weight[0].tolist() == pytest.approx([0.6, 0.8])


def test_reference_generator_leaves_the_round_generator_alone():
    g = torch.Generator().manual_seed(5)
    first = reference_generator(g)
    second = reference_generator(g)
    assert (
        torch.randint(0, 2**30, (1,), generator=g).item()
        == torch.randint(0, 2**30, (1,), generator=torch.Generator().manual_seed(5)).item()
    )
    assert torch.equal(torch.randperm(50, generator=first), torch.randperm(50, generator=second))
    assert first.initial_seed() != g.initial_seed()


@pytest.mark.parametrize(
    "params, message",
    [
        ({"hold_head": 1}, "hold_head must be True or False, got 1"),
        ({"eps": 0}, "eps .* must be None or a positive finite number, got 0"),
        ({"eps": -1.0}, "got -1.0"),
        ({"eps": math.nan}, "got nan"),
        ({"eps": math.inf}, "got inf"),
        ({"eps": True}, "got True"),
        ({"eps": "2"}, "got '2'"),
        ({"project_every": 0}, "project_every must be a positive integer .*, got 0"),
        ({"project_every": 2.0}, "got 2.0"),
        ({"project_every": True}, "got True"),
        ({"poisoned_data_rate": 0.0}, "poisoned_data_rate must be in"),
        ({"num_edge": 0}, "num_edge must be >= 1"),
        ({"ball": "honest"}, "ball .*global.*reference.*got .honest."),
    ],
)
def test_bad_parameters_raise(params, message):
    with pytest.raises(ValueError, match=message):
        make_attack("ultimate_mimic", **params)


def test_parameters_are_keyword_only_with_defaults():
    attack = make_attack("ultimate_mimic")
    assert (attack.hold_head, attack.eps, attack.project_every) == (True, None, 10)
    with pytest.raises(TypeError):
        type(attack)(False)


def test_hooks_without_client_data_or_settings_raise_clearly(digits, global_state):
    attack = make_attack("ultimate_mimic")
    attack.setup(digits, seed=0)
    ctx = RoundContext(1, global_state, (ATTACKER,), (ATTACKER,), {ATTACKER: 10}, 0.02)
    with pytest.raises(RuntimeError, match="client_data\\(\\) was not called for attacker 3"):
        attack.training_hooks(ATTACKER, 0, ctx, torch.Generator())
    with pytest.raises(RuntimeError, match="local_training\\(\\) was not called"):
        attack.benign_settings()


def test_notebook_profiles_share_table2s_black_box_runs():
    # beyond_adaptive's black-box runs come from Table 2's cache: the settings that define a run agree.
    profiles = json.loads((Path(__file__).resolve().parents[1] / "notebooks" / "profiles.json").read_text())
    shared = [
        "rounds",
        "switch_round",
        "deepsight_noise_samples",
        "models",
        "num_clients",
        "clients_per_round",
        "poisoned_data_rate",
        "edge_examples",
        "local_epochs",
        "pretrain_epochs",
        "eval_every",
        "phi",
        "seeds",
    ]
    for profile in ("smoke", "quick", "paper"):
        ours, table2 = profiles[profile]["beyond_adaptive"], profiles[profile]["table2_edge_case"]
        for key in shared:
            if key in table2:
                mine = ours.get(key, table2[key])
                if isinstance(mine, dict):  # per data set: ours may cover fewer data sets
                    assert mine == {d: table2[key][d] for d in mine}, (profile, key)
                else:
                    assert mine == table2[key], (profile, key)


@pytest.mark.slow
def test_end_to_end_on_digits_against_fedgrad():
    # A short digits federation under FedGrad: the run completes, is deterministic, and every round's
    # record holds the detection rates and, where evaluated, a backdoor accuracy in [0, 1].
    config = ExperimentConfig(
        dataset="digits",
        num_clients=16,
        clients_per_round=8,
        rounds=4,
        pretrain_epochs=2,
        attack="ultimate_mimic",
        defense="fedgrad",
        defense_params={"switch_round": 2},
        eval_every=2,
        seed=0,
    )
    first = run_experiment(config, progress=False)
    second = run_experiment(config, progress=False)
    assert [r["backdoor_acc"] for r in first.history] == [r["backdoor_acc"] for r in second.history]
    assert [r["flagged"] for r in first.history] == [r["flagged"] for r in second.history]
    evaluated = [r for r in first.history if r["backdoor_acc"] is not None]
    assert len(evaluated) == 2 and all(0 <= r["backdoor_acc"] <= 1 for r in evaluated)
    assert all(r["main_acc"] > 0.5 for r in evaluated)
    assert any(r["attackers"] for r in first.history)


# --------------------------------------------------------------------------- over several rounds


def _round_at(attack, task, global_state, settings, round_idx, *, seed):
    """As ``_round``, for round ``round_idx`` with benign ``settings``."""
    shards = {ATTACKER: task.train.subset(range(0, 120)), HONEST: task.train.subset(range(120, 200))}
    generators = {c: torch.Generator().manual_seed(seed * 100 + c) for c in shards}
    data = {
        ATTACKER: attack.client_data(ATTACKER, 0, shards[ATTACKER], round_idx, generators[ATTACKER]),
        HONEST: shards[HONEST],
    }
    ctx = RoundContext(
        round_idx, global_state, (ATTACKER, HONEST), (ATTACKER,), {c: len(d) for c, d in data.items()}, settings.lr
    )
    worker = make_model("digits_mlp", in_channels=1, num_classes=10, seed=1)
    updates = train_clients(
        worker, global_state, data, generators, settings, "cpu", attack=attack, pool=(ATTACKER,), ctx=ctx
    )
    return {u.client_id: u.state for u in updates}, shards[ATTACKER], seed * 100 + ATTACKER


def _reference_with(global_state, clean, round_seed, settings):
    model = _model(global_state)
    local_train(model, clean, settings, generator=reference_generator(torch.Generator().manual_seed(round_seed)))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("ball", ["global", "reference"])
def test_every_round_mimics_that_rounds_honest_update_inside_that_rounds_ball(digits, global_state, ball):
    """Round 2 has a new global model and new benign settings (a decayed learning rate, one epoch):
    an attacker that froze its reference, its settings or its ball centre after round 1 fails."""
    # Prepare
    eps = 0.2
    attack = make_attack("ultimate_mimic", eps=eps, project_every=1, ball=ball)
    task = attack.setup(digits, seed=0)
    round2 = LocalTraining(lr=0.05, epochs=1, batch_size=16)
    # Execute: round 1, then round 2 from the honest client's round-1 model
    sent1, clean, seed1 = _round_at(attack, task, global_state, BENIGN, 1, seed=7)
    g2 = {k: v.detach().clone() for k, v in sent1[HONEST].items()}
    sent2, clean2, seed2 = _round_at(attack, task, g2, round2, 2, seed=8)
    # Assert: the round-2 head is the honest update from round 2's model with round 2's settings
    reference2 = _reference_with(g2, clean2, seed2, round2)
    stale_settings = _reference_with(g2, clean2, seed2, BENIGN)
    for key in HEAD:
        assert torch.equal(sent2[ATTACKER][key], reference2[key]), key
        assert not torch.allclose(sent2[ATTACKER][key], stale_settings[key], atol=1e-5), key
        assert not torch.allclose(sent2[ATTACKER][key], sent1[ATTACKER][key], atol=1e-5), key
    # ... and the layers below sit on the round's ball: around g2, or around round 2's reference
    center = g2 if ball == "global" else reference2
    other = global_state if ball == "global" else g2
    assert float(distance_to(_model(sent2[ATTACKER]), center, skip=HEAD)) == pytest.approx(eps, rel=1e-4)
    assert float(distance_to(_model(sent2[ATTACKER]), other, skip=HEAD)) != pytest.approx(eps, rel=1e-3)


def test_reference_ball_keeps_the_whole_model_within_eps_of_the_honest_update(digits, global_state):
    # Prepare
    attack = make_attack("ultimate_mimic", eps=0.1, project_every=1, ball="reference")
    task = attack.setup(digits, seed=0)
    # Execute
    sent, clean, round_seed = _round_at(attack, task, global_state, BENIGN, 1, seed=7)
    reference = _reference_with(global_state, clean, round_seed, BENIGN)
    # Assert: head identical, so the whole model's distance to the honest one is the lower layers' (eps)
    assert float(distance_to(_model(sent[ATTACKER]), reference)) == pytest.approx(0.1, rel=1e-4)
    assert float(distance_to(_model(sent[ATTACKER]), global_state, skip=HEAD)) > 0.1
