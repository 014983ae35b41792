"""Properties every registered defense owes the server, parametrised over ``available_defenses()``.

States come from the digits MLP (realistic keys and shapes, so that defenses which inspect the
model, like DeepSight, can run); clients are the global model plus small seeded noise.
"""

import io

import pytest
import torch

from fedgrad_core.defenses import ClientUpdate, available_defenses, build_defense, make_defense
from fedgrad_core.models import make_model

K = 10


def _factory():
    return make_model("digits_mlp", in_channels=1, num_classes=10, seed=0)


CONTEXT = {"seed": 0, "attacker_fraction": 0.25, "model_factory": _factory, "num_classes": 10}

#: What each defense documents for K identical updates, where it is not "that update".
#: foolsgold: identical histories are sybils of one another -> previous model, all flagged.
IDENTICAL_GIVES_PREVIOUS = {"foolsgold"}
#: flame: adds Gaussian noise sigma = 0.001 x median norm (checked against that scale).
NOISY = {"flame"}


def _global_state():
    return {k: v.detach().clone() for k, v in _factory().state_dict().items()}


def _round(seed=0, k=K):
    g = _global_state()
    gen = torch.Generator().manual_seed(seed)
    updates = [
        ClientUpdate(
            100 + 7 * i,
            {n: t + 0.01 * torch.randn(t.shape, generator=gen) for n, t in g.items()},
            20 + 5 * i,
        )
        for i in range(k)
    ]
    return g, updates


def _build(name, **params):
    return build_defense(name, params, CONTEXT)


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", available_defenses())
def test_permuting_the_clients_leaves_the_aggregate_unchanged(name):
    g, updates = _round()
    perm = torch.randperm(K, generator=torch.Generator().manual_seed(1)).tolist()
    first = _build(name).aggregate(g, updates, round_idx=3)
    second = _build(name).aggregate(g, [updates[i] for i in perm], round_idx=3)
    _assert_same(first.global_state, second.global_state)
    assert first.flagged == second.flagged


@pytest.mark.parametrize("name", available_defenses())
def test_identical_benign_updates_return_that_update(name):
    g, _ = _round()
    gen = torch.Generator().manual_seed(2)
    model = {n: t + 0.01 * torch.randn(t.shape, generator=gen) for n, t in g.items()}
    updates = [ClientUpdate(i, {n: t.clone() for n, t in model.items()}, 10 + i) for i in range(K)]
    result = _build(name).aggregate(g, updates, round_idx=0)
    if name in IDENTICAL_GIVES_PREVIOUS:
        _assert_same(result.global_state, g)
        assert result.flagged == frozenset(range(K))
        return
    if name in NOISY:
        sigma = result.diagnostics["noise_sigma"]
        assert sigma > 0
        for key in model:
            assert (result.global_state[key] - model[key]).abs().max() <= 6 * sigma + 1e-6
        return
    _assert_same(result.global_state, model)


@pytest.mark.parametrize("name", available_defenses())
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_update_does_not_crash_and_the_result_stays_finite(name, bad):
    g, updates = _round()
    broken = dict(updates[3].state)
    key = next(iter(broken))
    broken[key] = broken[key].clone()
    broken[key].view(-1)[0] = bad
    updates[3] = ClientUpdate(updates[3].client_id, broken, updates[3].num_samples)
    result = _build(name).aggregate(g, updates, round_idx=0)
    assert all(torch.isfinite(t).all() for t in result.global_state.values())
    assert updates[3].client_id in result.flagged


@pytest.mark.parametrize("name", available_defenses())
def test_unknown_parameter_names_raise(name):
    with pytest.raises(ValueError, match="no parameter"):
        make_defense(name, not_a_parameter=1)


@pytest.mark.parametrize("name", available_defenses())
def test_defense_survives_torch_save_and_load_mid_run(name):
    g, updates = _round()
    defense = _build(name)
    defense.aggregate(g, updates, round_idx=0)
    buffer = io.BytesIO()
    torch.save(defense, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)
    _, later = _round(seed=5)
    _assert_same(
        defense.aggregate(g, later, round_idx=1).global_state,
        restored.aggregate(g, later, round_idx=1).global_state,
    )


@pytest.mark.parametrize(
    "name, params, clients",
    [
        ("krum", {}, 4),
        ("multikrum", {}, 4),
        ("krum", {"f": 3}, 8),
        ("multikrum", {"m": 11}, 10),
        ("rlr", {"threshold": 11}, 10),
    ],
)
def test_impossible_settings_raise_in_validate(name, params, clients):
    with pytest.raises(ValueError):
        _build(name, **params).validate(clients)


@pytest.mark.parametrize(
    "name, params",
    [
        ("krum", {"f": -1}),
        ("multikrum", {"attacker_fraction": -0.5}),
        ("rfa", {"max_iter": -3}),
        ("rfa", {"eps": 0.0}),
        ("rlr", {"server_lr": -1.0}),
        ("flame", {"noise_factor": -1.0}),
        ("foolsgold", {"kappa": 0.0}),
    ],
)
def test_invalid_hyper_parameters_raise(name, params):
    with pytest.raises(ValueError):
        _build(name, **params)


@pytest.mark.parametrize("name", available_defenses())
def test_every_defense_runs_with_the_paper_round_size(name):
    _build(name).validate(K)
    g, updates = _round()
    result = _build(name).aggregate(g, updates, round_idx=0)
    assert result.global_state.keys() == g.keys()
    assert all(result.global_state[k].shape == g[k].shape for k in g)


BASELINES = ["krum", "multikrum", "rfa", "rlr", "flame", "foolsgold"]


@pytest.mark.slow
@pytest.mark.parametrize("name", BASELINES)
def test_baseline_runs_end_to_end_on_digits(name):
    from fedgrad_core.config import ExperimentConfig
    from fedgrad_core.simulation import run_experiment

    config = ExperimentConfig(
        dataset="digits", attack="blackbox", defense=name, num_clients=12, clients_per_round=6,
        rounds=2, local_epochs=1, pretrain_epochs=1, seed=0,
    )
    result = run_experiment(config, progress=False)
    assert len(result.history) == 2
    last = result.history[-1]
    assert 0.0 <= last["main_acc"] <= 1.0 and 0.0 <= last["backdoor_acc"] <= 1.0
