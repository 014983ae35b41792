"""Trigger patterns, stamping, per-batch poisoning and the three trigger attacks' hooks."""

import os
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from fedgrad_core.attacks import RoundContext, make_attack
from fedgrad_core.attacks.pgd import distance_to
from fedgrad_core.attacks.triggers import (
    TABLE1,
    TriggerPoisoning,
    global_trigger,
    local_triggers,
    exact_rate,
    poison_total,
    stamp,
    trigger_mask,
)
from fedgrad_core.config import ExperimentConfig, attack_params
from fedgrad_core.data import load_task
from fedgrad_core.models import make_model
from fedgrad_core.training import LocalTraining, local_train

TRIGGER_ATTACKS = ["pixel_trigger", "constrain_scale", "dba"]


@pytest.fixture(scope="module")
def digits():
    return load_task("digits")


def _ctx(global_state, num_samples=None):
    num_samples = num_samples or {0: 64, 1: 64}
    return RoundContext(1, global_state, tuple(sorted(num_samples)), (0,), num_samples, 0.1)


def _images(n, c, h, w, seed=0):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- patterns


def test_dba_geometry_on_mnist_and_cifar_sizes():
    # DBA's MNIST trigger: rows 0 and 3, columns 0-3 and 6-9; CIFAR: rows 0 and 4, columns 0-5, 9-14
    assert local_triggers(28, 28)[1] == ((0, 6), (0, 7), (0, 8), (0, 9))
    assert local_triggers(28, 28)[2] == ((3, 0), (3, 1), (3, 2), (3, 3))
    assert local_triggers(32, 32)[3] == tuple((4, c) for c in range(9, 15))
    assert local_triggers(8, 8) == (((0, 0), (0, 1)), ((0, 3), (0, 4)), ((2, 0), (2, 1)), ((2, 3), (2, 4)))


@pytest.mark.parametrize("size", [(8, 8), (28, 28), (32, 32)])
def test_four_local_triggers_are_disjoint_and_together_the_global_trigger(size):
    parts = [set(p) for p in local_triggers(*size)]
    assert len(parts) == 4 and all(parts)
    assert sum(len(p) for p in parts) == len(set().union(*parts))  # disjoint
    assert set().union(*parts) == set(global_trigger(*size))
    assert all(0 <= r < size[0] and 0 <= c < size[1] for r, c in global_trigger(*size))


@pytest.mark.parametrize("shape", [(5, 1, 8, 8), (3, 1, 28, 28), (2, 3, 32, 32)])
def test_stamp_sets_exactly_the_trigger_pixels_in_every_channel(shape):
    # Prepare
    n, c, h, w = shape
    x = _images(*shape)
    pixels = global_trigger(h, w)
    value = torch.arange(1, c + 1, dtype=torch.float32) * 10  # one distinct value per channel
    # Execute
    out = stamp(x, pixels, value)
    # Assert: trigger pixels hold the channel's value, every other pixel is unchanged, input intact
    mask = trigger_mask(pixels, h, w)
    assert int(mask.sum()) == len(pixels)
    for ch in range(c):
        assert torch.all(out[:, ch][:, mask] == value[ch])
    assert torch.equal(out[:, :, ~mask], x[:, :, ~mask])
    assert torch.equal(x, _images(*shape))


def test_stamp_of_one_local_trigger_changes_only_that_part():
    x = _images(4, 1, 8, 8)
    part = local_triggers(8, 8)[2]
    changed = (stamp(x, part, torch.tensor([9.0])) != x).any(dim=0)[0]
    assert {tuple(p) for p in changed.nonzero().tolist()} <= set(part)


def test_stamp_rejects_a_wrong_number_of_channel_values():
    with pytest.raises(ValueError, match="channel"):
        stamp(_images(1, 3, 8, 8), global_trigger(8, 8), torch.tensor([1.0, 2.0]))


# --------------------------------------------------------------------------- poisoning rate


@pytest.mark.parametrize(
    "rate, samples, expected",
    [(5 / 64, 64, 5), (5 / 64, 32, 3), (5 / 64, 0, 0), (12 / 64, 100, 19), (6 / 25, 25, 6), (0.24, 50, 12),
     (0.3, 5, 2), (0.25, 70, 18), (1.0, 7, 7)],
)
def test_poison_total_is_rate_times_samples_rounded_half_up_exactly(rate, samples, expected):
    # 0.3 * 5 = 1.5 rounds up to 2 (in binary floating point 0.3 * 5 + 0.5 falls just below 2)
    assert poison_total(rate, samples) == expected


def test_exact_rate_recovers_table1_fractions_and_rejects_rates_outside_0_1():
    assert exact_rate(6 / 25) == Fraction(6, 25) and exact_rate(0.24) == Fraction(6, 25)
    assert exact_rate(5 / 64) == Fraction(5, 64)
    for bad in (0.0, -0.1, 1.5, True):
        with pytest.raises(ValueError, match="poisoned data rate"):
            exact_rate(bad)


def _poisoned_per_batch(hooks, batch_sizes, target=2):
    """Feed batches of the given sizes (zero images, label 0) and count the stamped, relabelled samples."""
    counts = []
    for n in batch_sizes:
        x, y = torch.zeros(n, 1, 8, 8), torch.zeros(n, dtype=torch.int64)
        px, py = hooks.transform_batch(x, y)
        stamped = (px != x).flatten(1).any(1)
        assert torch.equal(stamped, py == target)  # stamped exactly when relabelled
        assert not stamped[int(stamped.sum()):].any()  # the first samples of the batch
        counts.append(int(stamped.sum()))
    return counts


@pytest.mark.parametrize(
    "rate, batch_sizes, expected",
    [
        # Table 1's MNIST rate at DBA's batch of 64: 5 in every batch, as in the DBA code
        (5 / 64, [64] * 10, [5] * 10),
        # ... at batch 32: 2.5 per batch carried as 3, 2, 3, 2 (rounding per batch gave 3 each: 6/64)
        (5 / 64, [32] * 10, [3, 2] * 5),
        # an epoch of 600 at batch 64 ends with a small batch of 24: 46.875 -> 47 in all
        (5 / 64, [64] * 9 + [24], [5] * 9 + [2]),
        # batch 10 (round(0.78) = 1 per batch would poison 10 of 100 instead of 7.8)
        (5 / 64, [10] * 10, [1, 1, 0, 1, 1, 1, 0, 1, 1, 1]),
        # the digits default 8/32 on a client of 70 (32, 32, 6), two epochs: the remainder carries over
        (0.25, [32, 32, 6, 32, 32, 6], [8, 8, 2, 8, 8, 1]),
        # CIFAR-10's 6/25 at batch 32 with a last batch of 4 (100 samples: 24)
        (6 / 25, [32, 32, 32, 4], [8, 7, 8, 1]),
    ],
)
def test_poisoning_keeps_the_stated_rate_over_an_epoch(rate, batch_sizes, expected):
    # Prepare
    hooks = TriggerPoisoning(global_trigger(8, 8), torch.tensor([7.0]), target=2, rate=rate)
    # Execute
    counts = _poisoned_per_batch(hooks, batch_sizes)
    # Assert: the hand-computed schedule; in all, round(rate x samples), within one of the rate
    assert counts == expected
    samples = sum(batch_sizes)
    assert sum(counts) == poison_total(rate, samples) == hooks.poisoned and hooks.seen == samples
    assert abs(sum(counts) - rate * samples) <= 0.5
    # every epoch (here: every stretch of batches) is within one of its share
    for start in range(len(counts)):
        for stop in range(start + 1, len(counts) + 1):
            assert abs(sum(counts[start:stop]) - rate * sum(batch_sizes[start:stop])) <= 1


def test_poisoned_batch_holds_the_stated_rate_of_stamped_target_samples():
    # Prepare: a batch of 64 with labels 0..9 and Table 1's MNIST rate 5/64
    x = _images(64, 1, 8, 8)
    y = torch.arange(64) % 10
    value = torch.tensor([7.0])
    pixels = global_trigger(8, 8)
    hooks = TriggerPoisoning(pixels, value, target=2, rate=5 / 64)
    # Execute
    px, py = hooks.transform_batch(x, y)
    # Assert: exactly 5 samples stamped and relabelled to 2, the other 59 untouched
    mask = trigger_mask(pixels, 8, 8)
    stamped = torch.all(px[:, 0][:, mask] == 7.0, dim=1) & (px != x).any(dim=(1, 2, 3))
    assert int(stamped.sum()) == 5
    assert torch.all(py[stamped] == 2)
    assert torch.equal(px[~stamped], x[~stamped]) and torch.equal(py[~stamped], y[~stamped])


@pytest.mark.parametrize("name", TRIGGER_ATTACKS)
def test_attacks_poison_every_training_batch_at_their_rate(digits, name):
    # Prepare: the digits default (8 of 32) and record the batches local training sees
    attack = make_attack(name)
    task = attack.setup(digits, seed=0)
    model = make_model("digits_mlp", in_channels=1, num_classes=10, seed=0)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = attack.training_hooks(0, 0, _ctx(global_state), torch.Generator().manual_seed(0))
    seen = []
    original = hooks.transform_batch

    def recording(x, y):
        px, py = original(x, y)
        seen.append((len(y), int((px != x).flatten(1).any(1).sum())))
        return px, py

    hooks.transform_batch = recording
    data = task.train.subset(range(100))
    settings = attack.local_training(LocalTraining(lr=0.02, epochs=2, batch_size=32))
    # Execute
    local_train(model, data, settings, generator=torch.Generator().manual_seed(0), hooks=hooks)
    # Assert: 4 batches per epoch (32, 32, 32, 4): 25 of the 100 samples poisoned in every epoch
    assert settings.epochs == attack.settings.poison_epochs and settings.lr == attack.settings.poison_lr
    assert [n for n, _ in seen] == [32, 32, 32, 4] * settings.epochs
    assert hooks.poisoned == 25 * settings.epochs and hooks.seen == 100 * settings.epochs
    # a stamped sample can equal its original only if its trigger pixels were white already
    assert all(n_poisoned <= 8 for n, n_poisoned in seen)
    assert sum(p for _, p in seen) >= 0.9 * hooks.poisoned


# --------------------------------------------------------------------------- the attacks


@pytest.mark.parametrize("name", TRIGGER_ATTACKS)
def test_backdoor_test_set_is_non_target_test_images_with_the_full_trigger(digits, name):
    attack = make_attack(name, target=3)
    attack.setup(digits, seed=0)
    backdoor = attack.backdoor_test_set()
    keep = digits.test.y != 3
    white = digits.pixel_value(digits.pixel_max)
    assert len(backdoor) == int(keep.sum())
    assert torch.all(backdoor.y == 3)
    assert torch.equal(backdoor.x, stamp(digits.test.x[keep], global_trigger(8, 8), white))


def test_dba_attackers_stamp_their_local_trigger_by_rank_mod_4(digits):
    attack = make_attack("dba", poisoned_data_rate=1.0)
    attack.setup(digits, seed=0)
    x = digits.test.x[:16]
    ctx = _ctx({k: v for k, v in make_model("digits_mlp", in_channels=1, num_classes=10, seed=0).state_dict().items()})
    for rank in range(6):
        hooks = attack.training_hooks(0, rank, ctx, torch.Generator().manual_seed(0))
        px, _ = hooks.transform_batch(x, digits.test.y[:16])
        part = local_triggers(8, 8)[rank % 4]
        mask = trigger_mask(part, 8, 8)
        assert torch.equal(px[:, :, ~mask], x[:, :, ~mask])
        assert torch.all(px[:, 0][:, mask] == digits.pixel_value(16)[0])


def test_pixel_trigger_and_constrain_scale_train_with_the_full_trigger(digits):
    for name in ("pixel_trigger", "constrain_scale"):
        attack = make_attack(name, poisoned_data_rate=1.0)
        attack.setup(digits, seed=0)
        hooks = attack.training_hooks(0, 1, _ctx({}), torch.Generator())
        assert hooks.pixels == global_trigger(8, 8)


def test_table1_defaults_and_overrides():
    mnist = make_attack("constrain_scale").defaults("mnist")
    assert (mnist.poisoned_data_rate, mnist.scale, mnist.poison_lr, mnist.poison_epochs) == (5 / 64, 100.0, 0.1, 2)
    assert make_attack("pixel_trigger").defaults("cifar10").poisoned_data_rate == 12 / 64
    assert make_attack("dba").defaults("cifar10").scale == 20.0
    assert TABLE1["pixel_trigger"]["emnist"] == TABLE1["pixel_trigger"]["mnist"]
    params = attack_params(ExperimentConfig(attack="dba", poisoned_data_rate=0.1))
    assert params == {"poisoned_data_rate": 0.1}


def test_given_parameters_override_the_data_set_defaults(digits):
    attack = make_attack("constrain_scale", scale=7.0, poison_lr=0.01, poison_epochs=3, poisoned_data_rate=0.5)
    attack.setup(digits, seed=0)
    assert (attack.settings.scale, attack.settings.poison_lr, attack.settings.poison_epochs) == (7.0, 0.01, 3)
    assert attack.settings.poisoned_data_rate == 0.5
    local = attack.local_training(LocalTraining(lr=0.02, epochs=2, batch_size=32, momentum=0.5))
    assert (local.lr, local.epochs, local.batch_size, local.momentum) == (0.01, 3, 32, 0.5)


def test_scaled_attacks_multiply_the_update_by_the_scale_factor(digits):
    global_state = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    trained = {"w": torch.tensor([1.5, 1.75]), "n": torch.tensor(4)}
    for name, factor in (("constrain_scale", 4.0), ("dba", 4.0), ("pixel_trigger", 1.0)):
        attack = make_attack(name, scale=factor)
        attack.setup(digits, seed=0)
        sent = attack.after_training(trained, 0, 0, _ctx(global_state))
        assert torch.equal(sent["w"] - global_state["w"], factor * (trained["w"] - global_state["w"]))
        assert torch.equal(sent["n"], trained["n"])


def test_constrain_scale_loss_adds_the_weighted_distance_to_the_global_model(digits):
    # Prepare
    attack = make_attack("constrain_scale", alpha=0.6)
    attack.setup(digits, seed=0)
    model = make_model("digits_mlp", in_channels=1, num_classes=10, seed=0)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = attack.training_hooks(0, 0, _ctx(global_state), torch.Generator())
    x, y = digits.train.x[:8], digits.train.y[:8]
    # Execute / Assert: at the global model the distance is 0 and its gradient is finite
    task_loss = F.cross_entropy(model(x), y)
    loss = hooks.loss(model, task_loss)
    loss.backward()
    assert loss.item() == pytest.approx(0.6 * task_loss.item())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    task_loss = F.cross_entropy(model(x), y)
    expected = 0.6 * task_loss + 0.4 * distance_to(model, global_state)
    assert hooks.loss(model, task_loss).item() == pytest.approx(expected.item())
    # pixel_trigger and dba have no anomaly term
    plain = make_attack("dba")
    plain.setup(digits, seed=0)
    assert plain.training_hooks(0, 0, _ctx(global_state), torch.Generator()).loss(model, task_loss) is task_loss


@pytest.mark.parametrize("name", TRIGGER_ATTACKS)
def test_trigger_attack_training_is_deterministic_for_a_seed(digits, name):
    states = []
    for _ in range(2):
        attack = make_attack(name)
        attack.setup(digits, seed=1)
        model = make_model("digits_mlp", in_channels=1, num_classes=10, seed=0)
        global_state = {k: v.clone() for k, v in model.state_dict().items()}
        gen = torch.Generator().manual_seed(11)
        ctx = _ctx(global_state)
        data = attack.client_data(0, 1, digits.train.subset(range(80)), 1, gen)
        local_train(model, data, attack.local_training(LocalTraining(0.02, 2, 32)), generator=gen,
                    hooks=attack.training_hooks(0, 1, ctx, gen))
        states.append(attack.after_training(model.state_dict(), 0, 1, ctx))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("pixel_trigger", {"target": -1}, "target"),
        ("dba", {"target": 1.5}, "target"),
        ("dba", {"poisoned_data_rate": 0.0}, "poisoned_data_rate"),
        ("pixel_trigger", {"poisoned_data_rate": 1.2}, "poisoned_data_rate"),
        ("constrain_scale", {"scale": 0}, "scale"),
        ("constrain_scale", {"poison_lr": -0.1}, "poison_lr"),
        ("dba", {"poison_epochs": 1.5}, "poison_epochs"),
        ("constrain_scale", {"alpha": 0.0}, "alpha"),
        ("constrain_scale", {"alpha": 1.5}, "alpha"),
        ("dba", {"alpha": 0.5}, "alpha"),  # DBA has no anomaly loss: not a parameter
    ],
)
def test_invalid_parameters_raise_value_errors_naming_them(name, params, message):
    with pytest.raises(ValueError, match=message):
        make_attack(name, **params)


def test_target_outside_the_classes_is_rejected_at_setup(digits):
    with pytest.raises(ValueError, match="target 10"):
        make_attack("pixel_trigger", target=10).setup(digits, seed=0)


@pytest.mark.needs_data
@pytest.mark.skipif(not os.environ.get("FEDGRAD_DATA_SOURCE"), reason="MNIST needs FEDGRAD_DATA_SOURCE (offline copy)")
def test_mnist_backdoor_set_carries_dbas_28x28_trigger_in_white():
    task = load_task("mnist")
    attack = make_attack("dba")
    attack.setup(task, seed=0)
    backdoor = attack.backdoor_test_set()
    mask = trigger_mask(global_trigger(28, 28), 28, 28)
    assert int(mask.sum()) == 16
    assert torch.all(backdoor.x[:, 0][:, mask] == task.pixel_value(task.pixel_max)[0])
    assert attack.settings.poisoned_data_rate == 5 / 64 and attack.settings.scale == 100.0
