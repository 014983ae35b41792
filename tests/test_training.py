"""Local training: batched clients against one-by-one training, the mode switch, evaluation."""

import pytest
import torch
from torch import nn

from fedgrad_core import ConfigError, ExperimentConfig
from fedgrad_core.attacks import RoundContext
from fedgrad_core.config import validate
from fedgrad_core.data.task import Split
from fedgrad_core.models import make_model
from fedgrad_core.simulation import train_clients, use_client_batching
from fedgrad_core.training import LocalTraining, TrainingHooks, local_train, local_train_batched, predict

SETTINGS = LocalTraining(lr=0.05, epochs=2, batch_size=16, momentum=0.9, weight_decay=1e-3)


def _clients(sizes, shape=(1, 8, 8), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [Split(torch.randn(n, *shape, generator=gen), torch.randint(0, 10, (n,), generator=gen)) for n in sizes]


def _sequential(name, datasets, settings, seeds, shape=(1, 8, 8)):
    states, gens = [], []
    for data, seed in zip(datasets, seeds):
        model = make_model(name, in_channels=shape[0], num_classes=10, seed=0)
        gen = torch.Generator().manual_seed(seed)
        local_train(model, data, settings, generator=gen)
        states.append(model.state_dict())
        gens.append(gen)
    return states, gens


def test_batched_training_equals_one_by_one_up_to_rounding_for_unequal_clients():
    # Prepare: sizes 40, 17 and 70 give 3, 2 and 5 batches an epoch (last batches 8, 1 and 6 samples)
    datasets = _clients([40, 17, 70])
    model = make_model("digits_mlp", in_channels=1, num_classes=10, seed=0)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    gens = [torch.Generator().manual_seed(s) for s in (3, 4, 5)]

    # Execute
    batched = local_train_batched(model, datasets, SETTINGS, generators=gens)
    sequential, seq_gens = _sequential("digits_mlp", datasets, SETTINGS, (3, 4, 5))

    # Assert: same result up to float32 rounding, every client moved, the model handed in unchanged,
    # and each generator advanced exactly as local_train advances it
    for b, s in zip(batched, sequential):
        assert b.keys() == s.keys()
        for k in s:
            assert torch.allclose(b[k], s[k], atol=1e-5, rtol=0), k
            assert b[k].dtype == s[k].dtype
        assert max((s[k] - start[k]).abs().max() for k in s) > 1e-2
    for k, v in model.state_dict().items():
        assert torch.equal(v, start[k])
    for g, sg in zip(gens, seq_gens):
        assert torch.equal(torch.randint(0, 2**30, (4,), generator=g), torch.randint(0, 2**30, (4,), generator=sg))


def test_batched_training_with_dropout_is_deterministic_for_the_generators_but_not_bitwise_sequential():
    datasets = _clients([20, 33], shape=(1, 28, 28))
    model = make_model("lenet", in_channels=1, num_classes=10, seed=0)
    settings = LocalTraining(lr=0.05, epochs=1, batch_size=16)

    a = local_train_batched(model, datasets, settings, generators=[torch.Generator().manual_seed(s) for s in (1, 2)])
    b = local_train_batched(model, datasets, settings, generators=[torch.Generator().manual_seed(s) for s in (1, 2)])
    c = local_train_batched(model, datasets, settings, generators=[torch.Generator().manual_seed(s) for s in (1, 3)])

    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)
    assert not torch.equal(a[1]["classifier.weight"], c[1]["classifier.weight"])


def test_batched_training_refuses_models_with_buffers_and_mismatched_inputs():
    bn = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(64), nn.Linear(64, 10))
    with pytest.raises(ValueError, match="has buffers"):
        local_train_batched(bn, _clients([8, 8]), SETTINGS, generators=[torch.Generator(), torch.Generator()])
    model = make_model("digits_mlp", in_channels=1, num_classes=10, seed=0)
    with pytest.raises(ValueError, match="2 data sets but 1 generators"):
        local_train_batched(model, _clients([8, 8]), SETTINGS, generators=[torch.Generator()])
    with pytest.raises(ValueError, match="empty data set"):
        local_train_batched(model, _clients([8, 0]), SETTINGS, generators=[torch.Generator(), torch.Generator()])


def test_client_batching_mode_follows_the_table_and_refuses_on_for_buffers():
    mlp = make_model("digits_mlp", in_channels=1, num_classes=10, seed=0)
    lenet = make_model("lenet", in_channels=1, num_classes=10, seed=0)
    resnet = make_model("resnet18", in_channels=3, num_classes=10, seed=0)

    assert use_client_batching("auto", "digits_mlp", mlp, "cpu") is True
    assert use_client_batching("auto", "lenet", lenet, "cpu") is False
    assert use_client_batching("on", "lenet", lenet, "cpu") is True
    assert use_client_batching("off", "digits_mlp", mlp, "cpu") is False
    assert use_client_batching("auto", "resnet18", resnet, "cuda") is False
    with pytest.raises(ValueError, match="without buffers"):
        use_client_batching("on", "resnet18", resnet, "cpu")
    with pytest.raises(ConfigError, match="client_batching must be 'auto', 'on' or 'off', got 'fast'"):
        validate(ExperimentConfig(client_batching="fast"))
    validate(ExperimentConfig(client_batching="on"))


class _CountingAttack:
    """A stand-in attack: counts hook calls and scales the attacker's model by 2 after training."""

    def __init__(self):
        self.steps = 0

    def local_training(self, base):
        return base

    def training_hooks(self, client_id, rank, ctx, generator):
        attack = self

        class Hooks(TrainingHooks):
            def after_step(self, model, step):
                attack.steps += 1

        return Hooks()

    def after_training(self, state, client_id, rank, ctx):
        return {k: 2 * v for k, v in state.items()}


def test_train_clients_trains_attackers_one_by_one_through_their_hooks_when_batched():
    # Prepare: clients 0..3, client 2 is an attacker with 40 samples (3 batches x 2 epochs)
    datasets = _clients([24, 30, 40, 9])
    data = dict(enumerate(datasets))
    worker = make_model("digits_mlp", in_channels=1, num_classes=10, seed=0)
    global_state = {k: v.clone() + 0.01 for k, v in worker.state_dict().items()}
    ctx = RoundContext(1, global_state, (0, 1, 2, 3), (2,), {c: len(d) for c, d in data.items()}, 0.05)

    def run(batched):
        attack = _CountingAttack()
        gens = {c: torch.Generator().manual_seed(10 + c) for c in data}
        ups = train_clients(worker, global_state, data, gens, SETTINGS, "cpu", batched=batched,
                            attack=attack, pool=(2,), ctx=ctx)
        return ups, attack.steps

    # Execute
    batched, steps_b = run(True)
    sequential, steps_s = run(False)

    # Assert: order and sample counts kept, the attacker's hooks ran 6 steps and its scaling applied,
    # bit-identical attacker in both modes, honest clients equal up to rounding
    assert [u.client_id for u in batched] == [0, 1, 2, 3]
    assert [u.num_samples for u in batched] == [24, 30, 40, 9]
    assert steps_b == steps_s == 6
    for b, s in zip(batched, sequential):
        for k in s.state:
            if b.client_id == 2:
                assert torch.equal(b.state[k], s.state[k])
            else:
                assert torch.allclose(b.state[k], s.state[k], atol=1e-5, rtol=0)
    attacker_alone = make_model("digits_mlp", in_channels=1, num_classes=10, seed=0)
    attacker_alone.load_state_dict(global_state)
    local_train(attacker_alone, datasets[2], SETTINGS, generator=torch.Generator().manual_seed(12))
    assert torch.equal(batched[2].state["classifier.bias"], 2 * attacker_alone.state_dict()["classifier.bias"])


def test_predict_matches_the_models_argmax_across_a_ragged_last_batch():
    model = make_model("digits_mlp", in_channels=1, num_classes=10, seed=0)
    x = torch.randn(23, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    model.train()

    labels = predict(model, x, batch_size=5)

    with torch.no_grad():
        expected = model.eval()(x).argmax(1)
    assert labels.dtype == torch.int64 and torch.equal(labels, expected)
    assert not model.training
    assert predict(model, x[:0]).shape == (0,)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        predict(model, x, batch_size=0)


@pytest.mark.parametrize("name, shape", [("cnn_mnist", (1, 28, 28)), ("vgg9_slim", (3, 32, 32))])
def test_channels_last_training_equals_the_default_layout_and_leaves_plain_tensors(name, shape, monkeypatch):
    # Prepare: two copies of a convolutional model and 37 samples (a ragged last batch of 5)
    from fedgrad_core import training

    data = _clients([37], shape=shape)[0]
    settings = LocalTraining(lr=0.05, epochs=1, batch_size=16)
    trained = {}
    for fast in (False, True):
        monkeypatch.setattr(training, "CPU_CHANNELS_LAST", fast)
        model = make_model(name, in_channels=shape[0], num_classes=10, seed=0)
        # Execute
        local_train(model, data, settings, generator=torch.Generator().manual_seed(1))
        trained[fast] = (model.state_dict(), predict(model, data.x))

    # Assert: the same model up to float rounding, the same predictions, and every tensor handed
    # back in the default layout (defenses flatten state dicts)
    (plain, plain_labels), (fast, fast_labels) = trained[False], trained[True]
    for key in plain:
        assert fast[key].is_contiguous(), key
        torch.testing.assert_close(fast[key], plain[key], rtol=1e-4, atol=1e-5)
    assert torch.equal(fast_labels, plain_labels)


def test_channels_last_applies_to_convolutional_models_on_the_cpu_only():
    from fedgrad_core.training import _fast_layout

    cnn = make_model("cnn_mnist", in_channels=1, num_classes=10, seed=0)
    mlp = make_model("digits_mlp", in_channels=1, num_classes=10, seed=0)
    assert _fast_layout(cnn, "cpu") == torch.channels_last
    assert _fast_layout(mlp, "cpu") == torch.contiguous_format
    assert _fast_layout(cnn, "cuda") == torch.contiguous_format
