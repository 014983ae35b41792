"""DeepSight (Rieger et al., NDSS 2022): filtering, its building blocks and its contracts."""

from __future__ import annotations

import functools
import io
import json
import pickle

import numpy as np
import pytest
import torch

from fedgrad_core.data import load_task
from fedgrad_core.data.task import Split
from fedgrad_core.defenses import ClientUpdate, build_defense, make_defense
from fedgrad_core.defenses.deepsight import (
    DeepSight,
    bias_cosine_distances,
    cluster_vote,
    co_membership_distances,
    hdbscan_labels,
    infer_input_shape,
    normalized_energy_updates,
    singleton_noise,
    suspicious_labels,
    threshold_exceedings,
)
from fedgrad_core.models import make_model
from fedgrad_core.training import LocalTraining, local_train

DIGITS = functools.partial(make_model, "digits_mlp", in_channels=1, num_classes=10, seed=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models here are tiny: one torch thread is faster than two (restored afterwards)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _copy(state):
    return {k: v.detach().clone() for k, v in state.items()}


def _shifted(state, gen, scale, bias_shift=None):
    """``state`` plus Gaussian noise of std ``scale`` (and an optional shift of the last bias)."""
    out = {k: v + scale * torch.randn(v.shape, generator=gen) for k, v in state.items()}
    if bias_shift is not None:
        out["classifier.bias"] = out["classifier.bias"] + bias_shift
    return out


# --------------------------------------------------------------------------- the attack scenario


@pytest.fixture(scope="module")
def relabel_round(one_thread):
    """A pretrained digits MLP, 7 benign clients on random shards, 3 attackers with 7 -> 1."""
    task = load_task("digits")
    x, y = task.train.x, task.train.y
    global_model = DIGITS()
    local_train(
        global_model,
        task.train,
        LocalTraining(lr=0.05, epochs=1, batch_size=32),
        generator=torch.Generator().manual_seed(0),
    )
    global_state = _copy(global_model.state_dict())
    settings = LocalTraining(lr=0.05, epochs=2, batch_size=32)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(y))
    updates = []
    for c in range(7):
        idx = perm[c * 120 : (c + 1) * 120]
        model = DIGITS()
        model.load_state_dict(global_state)
        local_train(model, task.train.subset(idx), settings, generator=torch.Generator().manual_seed(c + 1))
        updates.append(ClientUpdate(c, _copy(model.state_dict()), len(idx)))
    sevens = np.flatnonzero(y.numpy() == 7)
    for a in range(3):
        clean = rng.choice(len(y), 40, replace=False)
        poisoned = rng.choice(sevens, 80, replace=False)
        data = Split(
            torch.cat([x[poisoned], x[clean]]),
            torch.cat([torch.full((80,), 1, dtype=torch.int64), y[clean]]),
        )
        model = DIGITS()
        model.load_state_dict(global_state)
        local_train(model, data, settings, generator=torch.Generator().manual_seed(50 + a))
        updates.append(ClientUpdate(7 + a, _copy(model.state_dict()), len(data)))
    return global_state, updates


def test_flags_the_relabelling_attackers(relabel_round):
    # Prepare
    global_state, updates = relabel_round
    defense = make_defense("deepsight", model_factory=DIGITS, num_classes=10, seed=0)  # defaults
    # Execute
    result = defense.aggregate(global_state, updates, round_idx=1)
    # Assert
    attackers = {7, 8, 9}
    assert attackers <= result.flagged
    assert len(result.flagged - attackers) <= 2  # most benign clients accepted
    diag = result.diagnostics
    assert set(diag["accepted"]) == set(range(10)) - result.flagged
    assert [diag["suspicious"][i] for i in (7, 8, 9)] == [1, 1, 1]
    assert max(diag["threshold_exceedings"][7:]) < min(diag["threshold_exceedings"][:7])
    assert diag["input_shape"] == [1, 8, 8]
    json.dumps(diag)  # JSON-friendly
    assert all(torch.isfinite(v).all() for v in result.global_state.values())


def test_client_order_does_not_matter(relabel_round):
    # Prepare
    global_state, updates = relabel_round
    defense = DeepSight(model_factory=DIGITS, num_noise_samples=1000, seed=3)
    shuffled = [updates[i] for i in np.random.default_rng(1).permutation(len(updates))]
    # Execute
    a = defense.aggregate(global_state, updates, 1)
    b = defense.aggregate(global_state, shuffled, 1)
    # Assert
    assert a.flagged == b.flagged
    assert a.diagnostics == b.diagnostics
    for key in global_state:
        assert torch.equal(a.global_state[key], b.global_state[key])


# --------------------------------------------------------------------------- building blocks


def test_threshold_exceedings_by_hand():
    # Prepare: P = 6 -> factor max(0.01, 1/6) = 1/6; threshold 0.5 / 6 = 0.0833
    neups = torch.tensor([[0.5, 0.3, 0.1, 0.05, 0.04, 0.01]], dtype=torch.float64)
    # P = 200 -> factor 0.01; threshold 0.01 * 0.5 = 0.005 (strictly above counts).  float64
    # throughout: 0.5 * float64(0.01) == float64(0.005) exactly, so the 0.005 entry sits on the
    # threshold and ">" and ">=" differ
    many = torch.zeros(1, 200, dtype=torch.float64)
    many[0, :4] = torch.tensor([0.5, 0.2, 0.006, 0.005], dtype=torch.float64)
    # P = 4 -> factor 1/4; threshold 0.5 / 4 = 0.125, exact in binary: two entries sit on it
    four = torch.tensor([[0.5, 0.125, 0.125, 0.25]], dtype=torch.float64)
    # Execute / Assert
    assert many[0, 3].item() == 0.01 * 0.5  # on the threshold, not below it
    assert threshold_exceedings(neups).tolist() == [3]
    assert threshold_exceedings(many).tolist() == [3]
    assert threshold_exceedings(four).tolist() == [2]
    assert threshold_exceedings(four[0]).tolist() == [2]  # one model as a vector


def test_neups_by_hand():
    # Prepare: two output neurons with two inputs each
    w = torch.tensor([[[1.0, -1.0], [0.0, 0.5]]])  # energies |b| + sum|w|: 2 + 1 = 3, 0.5 + 0.5 = 1
    b = torch.tensor([[1.0, -0.5]])
    # Execute
    neups = normalized_energy_updates(w, b)
    # Assert: 9 / 10 and 1 / 10; zero update -> zero NEUPs
    assert torch.allclose(neups, torch.tensor([[0.9, 0.1]], dtype=torch.float64))
    assert normalized_energy_updates(torch.zeros(1, 2, 2), torch.zeros(1, 2)).sum() == 0


def test_classification_boundary_and_cluster_vote():
    # median(8, 2, 6, 2, 9) = 6 -> boundary 3, TE <= 3 is suspicious
    suspicious, boundary = suspicious_labels([8, 2, 6, 2, 9])
    assert boundary == 3.0
    assert suspicious.tolist() == [False, True, False, True, False]
    # cluster 0: 1 of 3 suspicious (= tau: rejected); cluster 1: 0 of 2 (accepted)
    accepted = cluster_vote(np.array([0, 0, 0, 1, 1]), np.array([1, 0, 0, 0, 0]), 1 / 3)
    assert accepted.tolist() == [False, False, False, True, True]
    # noise points are singletons in the co-membership distances
    dist = co_membership_distances(np.array([0, 0, -1, -1]))
    assert dist.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 1], [1, 1, 1, 0]]


def test_input_shape_inference():
    assert infer_input_shape(DIGITS()) == (1, 8, 8)
    assert infer_input_shape(make_model("lenet", in_channels=1, num_classes=10, seed=0)) == (1, 28, 28)
    assert infer_input_shape(make_model("vgg9", in_channels=3, num_classes=10, seed=0)) == (3, 32, 32)


# --------------------------------------------------------------------------- aggregation


def test_identical_benign_updates_return_that_update():
    # Prepare
    global_state = _copy(DIGITS().state_dict())
    local = _shifted(global_state, torch.Generator().manual_seed(1), 0.01)
    updates = [ClientUpdate(i, _copy(local), 10 + i) for i in range(5)]
    defense = DeepSight(model_factory=DIGITS, num_noise_samples=500)
    # Execute
    result = defense.aggregate(global_state, updates, 1)
    # Assert
    assert result.flagged == frozenset()
    for key in global_state:
        assert torch.allclose(result.global_state[key], local[key], atol=1e-6)


def test_clipping_to_the_median_norm_of_all_updates():
    # Prepare: the same direction at scales 1, 2 and 10 (NEUPs are scale-free: nobody suspicious)
    global_state = _copy(DIGITS().state_dict())
    direction = {k: 0.01 * torch.randn(v.shape, generator=torch.Generator().manual_seed(7))
                 for k, v in global_state.items()}
    updates = [
        ClientUpdate(i, {k: global_state[k] + s * direction[k] for k in global_state}, n)
        for i, (s, n) in enumerate([(1.0, 1), (2.0, 1), (10.0, 2)])
    ]
    # Execute
    weighted = DeepSight(model_factory=DIGITS, num_noise_samples=500).aggregate(global_state, updates, 1)
    uniform = DeepSight(model_factory=DIGITS, num_noise_samples=500, sample_weighted=False).aggregate(
        global_state, updates, 1
    )
    # Assert: bound = norm of the 2x update, so the 10x one counts as 2x
    assert weighted.flagged == uniform.flagged == frozenset()
    for key in global_state:
        expected_w = global_state[key] + (1 + 2 + 2 * 2) / 4 * direction[key]
        expected_u = global_state[key] + (1 + 2 + 2) / 3 * direction[key]
        assert torch.allclose(weighted.global_state[key], expected_w, atol=1e-5)
        assert torch.allclose(uniform.global_state[key], expected_u, atol=1e-5)


def _output_layer_unchanged(global_state: dict, k: int) -> list[ClientUpdate]:
    """K clients that moved every layer but the output layer: TE 0 for all, so all suspicious."""
    updates = []
    for i in range(k):
        state = _shifted(global_state, torch.Generator().manual_seed(i), 0.01)
        state["classifier.weight"] = global_state["classifier.weight"].clone()
        state["classifier.bias"] = global_state["classifier.bias"].clone()
        updates.append(ClientUpdate(i, state, 10))
    return updates


def test_all_rejected_keeps_the_previous_model():
    # Prepare: nobody changed the output layer -> TE 0 for all -> all suspicious
    global_state = _copy(DIGITS().state_dict())
    updates = _output_layer_unchanged(global_state, 4)
    # Execute
    result = DeepSight(model_factory=DIGITS, num_noise_samples=500).aggregate(global_state, updates, 1)
    # Assert
    assert result.flagged == frozenset(range(4))
    assert "kept_previous_model" in result.diagnostics
    for key in global_state:
        assert torch.equal(result.global_state[key], global_state[key])


# --------------------------------------------------------------------------- contracts


def test_missing_model_factory_raises_with_a_reason():
    with pytest.raises(ValueError, match="model_factory"):
        make_defense("deepsight")
    with pytest.raises(ValueError, match="model_factory"):
        build_defense("deepsight", {}, {"seed": 1, "num_classes": 10, "attacker_fraction": 0.3})


def test_other_broken_assumptions_raise():
    with pytest.raises(ValueError, match="at least 2"):
        DeepSight(model_factory=DIGITS).validate(1)
    global_state = _copy(DIGITS().state_dict())
    updates = [ClientUpdate(i, _copy(global_state), 1) for i in range(2)]
    with pytest.raises(ValueError, match="num_classes"):
        DeepSight(model_factory=DIGITS, num_classes=7, num_noise_samples=10).aggregate(global_state, updates, 1)
    with pytest.raises(ValueError, match="tau"):
        DeepSight(model_factory=DIGITS, tau=0.0)


def test_build_defense_fills_context_and_pickles():
    # Prepare
    defense = build_defense(
        "deepsight", {"num_noise_samples": 200}, {"seed": 5, "model_factory": DIGITS, "num_classes": 10}
    )
    global_state = _copy(DIGITS().state_dict())
    gen = torch.Generator().manual_seed(0)
    updates = [
        ClientUpdate(i, _shifted(global_state, gen, 0.01, bias_shift=0.05 * (i % 2)), 10) for i in range(4)
    ]
    # Execute
    buffer = io.BytesIO()
    torch.save(defense, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)
    again = pickle.loads(pickle.dumps(defense))
    # Assert
    assert (defense.seed, defense.num_classes, defense.num_noise_samples) == (5, 10, 200)
    a = defense.aggregate(global_state, updates, 1)
    b = restored.aggregate(global_state, updates, 1)
    c = again.aggregate(global_state, updates, 1)
    assert a.diagnostics == b.diagnostics == c.diagnostics
    for key in global_state:
        assert torch.equal(a.global_state[key], b.global_state[key])


def test_single_finite_update_is_aggregated():
    # Prepare: one client sends NaN, the base class filters it; one update remains
    global_state = _copy(DIGITS().state_dict())
    good = _shifted(global_state, torch.Generator().manual_seed(2), 0.01)
    bad = _copy(global_state)
    bad["classifier.bias"][0] = float("nan")
    updates = [ClientUpdate(0, good, 5), ClientUpdate(1, bad, 5)]
    # Execute
    result = DeepSight(model_factory=DIGITS, num_noise_samples=200).aggregate(global_state, updates, 1)
    # Assert
    assert result.flagged == frozenset({1})
    for key in global_state:
        assert torch.allclose(result.global_state[key], good[key], atol=1e-6)


# --------------------------------------------------------------------------- hand-built rounds


def _constant_output_state(bias):
    """A digits MLP whose output ignores the input: last-layer weight 0, bias = logits."""
    state = _copy(DIGITS().state_dict())
    state["classifier.weight"] = torch.zeros_like(state["classifier.weight"])
    state["classifier.bias"] = torch.as_tensor(bias, dtype=torch.float32)
    return state


def test_division_differences_are_local_over_global_probabilities():
    # Prepare: the global model predicts 0.1 for every class on every input; the local one
    # q = (0.3, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05, 0.04, 0.03, 0.03) whatever the input
    q = torch.tensor([0.3, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05, 0.04, 0.03, 0.03], dtype=torch.float64)
    global_model = DIGITS()
    global_model.load_state_dict(_constant_output_state(torch.zeros(10)))
    local = _constant_output_state(q.log().float())
    # 7 noise inputs in batches of 3, 3 and 1, two seeds
    defense = DeepSight(model_factory=DIGITS, num_noise_samples=7, noise_batch_size=3, num_seeds=2)
    # Execute
    ddifs = defense.division_differences(global_model.eval(), [local, local], (1, 8, 8))
    # Assert: DDif_i = mean_s p_local(i | x_s) / p_global(i | x_s) = q_i / 0.1 (not 0.1 / q_i)
    assert len(ddifs) == 2
    for d in ddifs:
        assert d.shape == (2, 10)
        np.testing.assert_allclose(d[0], (q / 0.1).numpy(), rtol=1e-5)
        np.testing.assert_allclose(d[1], (q / 0.1).numpy(), rtol=1e-5)


def test_bias_cosine_distances_by_hand():
    # b0 = (1, 0), b1 = (1, 1), b2 = (0, -1), b3 = 0: cosines 1/sqrt(2), 0, -1/sqrt(2)
    b = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -1.0], [0.0, 0.0]])
    r = 2 ** -0.5
    expected = [
        [0.0, 1 - r, 1.0, 1.0],
        [1 - r, 0.0, 1 + r, 1.0],
        [1.0, 1 + r, 0.0, 1.0],
        [1.0, 1.0, 1.0, 0.0],
    ]
    np.testing.assert_allclose(bias_cosine_distances(b), expected, atol=1e-12)
    np.testing.assert_allclose(bias_cosine_distances(torch.zeros(2, 3)), [[0, 0], [0, 0]])


def _output_layer_round():
    """Six benign clients and four attackers that change only the output layer.

    Benign i = 0..5: the same update direction spread over all ten output neurons (TE = 10), at
    scales s_i = 0.01 * (i + 1), n_i = i + 1 samples.  Attackers 6..9: one neuron only (TE = 1),
    large, bias update along another direction.  Median TE = 10 -> boundary 5 -> the attackers
    are suspicious.  Update norms: s_i * |D| for the benign, far larger for the attackers.
    """
    global_state = _copy(DIGITS().state_dict())
    gen = torch.Generator().manual_seed(11)
    w_dir = torch.rand((10, 64), generator=gen) + 0.5
    b_dir = torch.rand(10, generator=gen) + 0.5
    updates = []
    for i in range(6):
        state = _copy(global_state)
        s = 0.01 * (i + 1)
        state["classifier.weight"] += s * w_dir
        state["classifier.bias"] += s * b_dir
        updates.append(ClientUpdate(i, state, i + 1))
    for j in range(6, 10):
        state = _copy(global_state)
        state["classifier.weight"][1] += 0.5 + 0.01 * j
        state["classifier.bias"][1] += 2.0
        updates.append(ClientUpdate(j, state, 5))
    unit_norm = float(torch.cat([w_dir.flatten(), b_dir]).norm())
    return global_state, updates, w_dir, b_dir, unit_norm


def test_clip_bound_is_the_median_over_all_updates_and_clusters_follow_the_settings():
    # Prepare
    global_state, updates, w_dir, b_dir, unit_norm = _output_layer_round()
    defense = DeepSight(model_factory=DIGITS, num_noise_samples=200)
    # Execute
    result = defense.aggregate(global_state, updates, 1)
    # Assert: attackers suspicious and rejected
    diag = result.diagnostics
    assert diag["threshold_exceedings"] == [10] * 6 + [1] * 4
    assert diag["classification_boundary"] == 5.0
    assert result.flagged == frozenset({6, 7, 8, 9})
    # HDBSCAN with the library defaults: the benign share one bias direction, the four attackers
    # another, but four are fewer than min_cluster_size = 5, so the hierarchy holds one cluster
    # (all ten), which allow_single_cluster=False does not report: every model is noise and is
    # judged by its own label (as in the FedGrad authors' runs with K = 10)
    assert diag["clusters_cosine"] == [-1] * 10
    assert diag["clusters"] == [-1] * 10
    # clip bound = median of all ten norms = (0.05 + 0.06) / 2 * |D| (over the accepted six it
    # would be (0.03 + 0.04) / 2 * |D|); only the benign at 0.06 is clipped, to 0.055
    assert diag["clip_bound"] == pytest.approx(0.055 * unit_norm, rel=1e-5)
    factor = sum(n * min(0.01 * n, 0.055) for n in range(1, 7)) / 21  # n_i = i + 1, s_i = 0.01 n_i
    assert factor == pytest.approx(0.88 / 21)
    expected_w = global_state["classifier.weight"] + factor * w_dir
    expected_b = global_state["classifier.bias"] + factor * b_dir
    torch.testing.assert_close(result.global_state["classifier.weight"], expected_w, rtol=0, atol=1e-6)
    torch.testing.assert_close(result.global_state["classifier.bias"], expected_b, rtol=0, atol=1e-6)
    torch.testing.assert_close(result.global_state["features.1.weight"], global_state["features.1.weight"])


def test_hdbscan_settings_are_parameters():
    # Prepare: the same round with min_cluster_size = 4
    global_state, updates, *_ = _output_layer_round()
    small = DeepSight(model_factory=DIGITS, num_noise_samples=200, min_cluster_size=4)
    # Execute
    result = small.aggregate(global_state, updates, 1)
    # Assert: now the four attackers form a cluster of their own (still rejected: all suspicious)
    for key in ("clusters_cosine", "clusters_neup", "clusters"):
        assert result.diagnostics[key] == [0] * 6 + [1] * 4, key
    assert result.flagged == frozenset({6, 7, 8, 9})


def test_hdbscan_labels_defaults_are_the_library_defaults():
    # Prepare: 6 points at 0 and 4 at 10 (one dimension)
    rows = np.array([[0.0]] * 6 + [[10.0]] * 4)
    # Execute / Assert: min_cluster_size 5 -> the four cannot form a cluster and the six alone
    # are the root: no cluster is reported; with 4 (or with five at 10) there are two clusters
    assert hdbscan_labels(rows, precomputed=False).tolist() == [-1] * 10
    assert hdbscan_labels(rows, precomputed=False, min_cluster_size=4).tolist() == [0] * 6 + [1] * 4
    five = np.array([[0.0]] * 6 + [[10.0]] * 5)
    assert hdbscan_labels(five, precomputed=False).tolist() == [0] * 6 + [1] * 5
    # allow_single_cluster lets the six form the one cluster
    single = hdbscan_labels(rows, precomputed=False, allow_single_cluster=True)
    assert single.tolist() == [0] * 6 + [-1] * 4


def test_noise_inputs_default_to_uniform_on_0_1():
    defense = DeepSight(model_factory=DIGITS)
    x = defense._noise_batch(defense._noise_generator(0), 1000, (1, 8, 8))
    assert defense.noise == "uniform"
    assert x.min().item() >= 0.0 and x.max().item() < 1.0
    assert x.mean().item() == pytest.approx(0.5, abs=0.01)
    normal = DeepSight(model_factory=DIGITS, noise="normal")
    y = normal._noise_batch(normal._noise_generator(0), 1000, (1, 8, 8))
    assert y.min().item() < 0.0 and y.std().item() == pytest.approx(1.0, abs=0.02)


def test_defaults_are_the_documented_choices():
    # the FedGrad authors' runs: tau 1/3, 3 seeds of 2,000 U[0, 1) inputs, HDBSCAN library defaults,
    # sample-weighted average (module docstring says where each comes from)
    d = DeepSight(model_factory=DIGITS)
    assert (d.tau, d.num_seeds, d.num_noise_samples, d.noise) == (1 / 3, 3, 2000, "uniform")
    assert (d.min_cluster_size, d.min_samples, d.allow_single_cluster) == (5, None, False)
    assert d.sample_weighted is True


# --------------------------------------------------------------------------- gaps found by mutmut
# Each test below kills mutants that survived the suite (tests/MUTATION.md lists the run).


def test_neups_are_scale_free_for_small_updates():
    # Prepare: the hand example of test_neups_by_hand scaled by 0.1: energies 0.3 and 0.1, so
    # the sum of squared energies is 0.1 (below 1: real updates are small)
    w = 0.1 * torch.tensor([[[1.0, -1.0], [0.0, 0.5]]], dtype=torch.float64)
    b = 0.1 * torch.tensor([[1.0, -0.5]], dtype=torch.float64)
    # Execute
    neups = normalized_energy_updates(w, b)
    # Assert: still 0.09 / 0.1 and 0.01 / 0.1
    torch.testing.assert_close(neups, torch.tensor([[0.9, 0.1]], dtype=torch.float64), rtol=1e-12, atol=0)


def test_bias_cosine_distances_are_float64_and_clamped_to_0_2():
    # Prepare: nearly parallel float32 biases, 1 - cos = 1 - 1/sqrt(1 + x^2) ~ x^2 / 2 = 5e-9
    # (float32 arithmetic would round it to 0); parallel and anti-parallel float64 vectors whose
    # unrounded 1 - cos falls just outside [0, 2]
    near = torch.tensor([[1.0, 0.0], [1.0, 1e-4]])
    x = float(torch.tensor(1e-4))
    parallel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    v = torch.tensor([[-0.03687867231368961, 0.120590954166829, 0.6865975901424544, 0.684629777929102,
                       -0.3260484853922876]], dtype=torch.float64)
    opposite = torch.cat([v, -5.6438737213845815 * v])
    # Execute
    d_near = bias_cosine_distances(near)
    d_par = bias_cosine_distances(parallel)
    d_opp = bias_cosine_distances(opposite)
    # Assert
    assert d_near[0, 1] == pytest.approx(1 - 1 / (1 + x * x) ** 0.5, rel=1e-6)
    assert d_par[0, 1] == 0.0  # unclamped: -2.2e-16
    assert d_opp[0, 1] == 2.0  # unclamped: 2.0000000000000004


def test_singleton_noise_numbers_noise_points_after_the_largest_label():
    # Prepare / Execute / Assert: clusters 0 and 1 keep their labels, the two noise points get
    # 2 and 3 in order; all noise -> 0, 1, 2; an empty round -> empty; int32 in, int64 out
    mixed = singleton_noise(np.array([1, -1, 0, -1]))
    assert mixed.tolist() == [1, 2, 0, 3]
    assert singleton_noise(np.array([-1, -1, -1])).tolist() == [0, 1, 2]
    assert singleton_noise(np.array([], dtype=np.int64)).tolist() == []
    out = singleton_noise(np.array([0, -1], dtype=np.int32))
    assert out.dtype == np.int64 and out.tolist() == [0, 1]


def test_validate_accepts_two_clients():
    DeepSight(model_factory=DIGITS).validate(2)  # the smallest round: no error
    with pytest.raises(ValueError, match=r"needs at least 2 clients per round, got 1$"):
        DeepSight(model_factory=DIGITS).validate(1)


def test_each_clustering_gets_its_features_metric_and_settings(monkeypatch):
    # Prepare: record every HDBSCAN call of one round (and still cluster)
    from fedgrad_core.defenses import deepsight as module

    real = module.hdbscan_labels
    calls = []

    def spy(data, **kwargs):
        labels = real(data, **kwargs)
        calls.append((np.array(data, copy=True), kwargs, labels))
        return labels

    monkeypatch.setattr(module, "hdbscan_labels", spy)
    global_state, updates, *_ = _output_layer_round()
    defense = DeepSight(model_factory=DIGITS, num_noise_samples=100, num_seeds=2, min_cluster_size=3,
                        min_samples=2, allow_single_cluster=True)
    b_delta = torch.stack([u.state["classifier.bias"] - global_state["classifier.bias"] for u in updates])
    w_delta = torch.stack([u.state["classifier.weight"] - global_state["classifier.weight"] for u in updates])
    # Execute
    result = defense.aggregate(global_state, updates, 1)
    # Assert: two DDif clusterings, the NEUPs, the bias cosines, the merged matrix, in this order
    assert [c[1]["precomputed"] for c in calls] == [False, False, False, True, True]
    for _, kwargs, _ in calls:
        assert (kwargs["min_cluster_size"], kwargs["min_samples"], kwargs["allow_single_cluster"]) == (3, 2, True)
    assert [c[0].shape for c in calls[:2]] == [(10, 10), (10, 10)]  # K x P DDifs
    np.testing.assert_allclose(calls[2][0], normalized_energy_updates(w_delta, b_delta).numpy(), rtol=1e-6)
    np.testing.assert_allclose(calls[3][0], bias_cosine_distances(b_delta), atol=1e-6)
    # merged = (mean of the two DDif co-memberships + NEUP's + cosine's) / 3
    ddif, neup, cos = ([co_membership_distances(c[2]) for c in calls[:2]],
                       co_membership_distances(calls[2][2]), co_membership_distances(calls[3][2]))
    np.testing.assert_allclose(calls[4][0], ((ddif[0] + ddif[1]) / 2 + neup + cos) / 3, rtol=0, atol=1e-12)
    diag = result.diagnostics
    assert diag["clients"] == list(range(10))
    assert diag["clusters_ddif"] == [calls[0][2].tolist(), calls[1][2].tolist()]
    assert diag["clusters_neup"] == calls[2][2].tolist() and diag["clusters_cosine"] == calls[3][2].tolist()
    assert diag["clusters"] == calls[4][2].tolist()
    # update norms in float64 over the parameters of the float32 updates
    norms = [float(torch.cat([(u.state[k] - global_state[k]).double().flatten() for k in global_state]).norm())
             for u in updates]
    assert diag["update_norms"] == pytest.approx(norms, rel=1e-12)


def test_an_output_layer_without_bias_is_refused_with_a_reason():
    # Prepare: a model whose last Linear has no bias
    def factory():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10, bias=False))

    global_state = _copy(factory().state_dict())
    updates = [ClientUpdate(i, _copy(global_state), 1) for i in range(2)]
    # Execute / Assert
    with pytest.raises(ValueError, match=r"^DeepSight needs a bias in the output layer; '1.bias' is missing$"):
        DeepSight(model_factory=factory, num_noise_samples=10).aggregate(global_state, updates, 1)


def test_clipping_scales_small_updates_to_the_bound():
    # Prepare: one direction of norm 0.5 at scales 0.1, 0.2 and 1 (all norms below 1); equal counts
    global_state = _copy(DIGITS().state_dict())
    gen = torch.Generator().manual_seed(3)
    direction = {k: torch.randn(v.shape, generator=gen) for k, v in global_state.items()}
    total = float(torch.cat([v.flatten() for v in direction.values()]).norm())
    direction = {k: 0.5 * v / total for k, v in direction.items()}
    updates = [ClientUpdate(i, {k: global_state[k] + s * direction[k] for k in global_state}, 1)
               for i, s in enumerate([0.1, 0.2, 1.0])]
    # Execute
    result = DeepSight(model_factory=DIGITS, num_noise_samples=200).aggregate(global_state, updates, 1)
    # Assert: bound = median norm = 0.1; the norm-0.5 update is scaled by 0.1 / 0.5 to scale 0.2
    assert result.flagged == frozenset()
    assert result.diagnostics["clip_bound"] == pytest.approx(0.1, rel=1e-5)
    for key in global_state:
        expected = global_state[key] + (0.1 + 0.2 + 0.2) / 3 * direction[key]
        torch.testing.assert_close(result.global_state[key], expected, rtol=0, atol=1e-6)


def test_all_rejected_says_why():
    # Prepare: as test_all_rejected_keeps_the_previous_model (no output-layer change: all suspicious)
    global_state = _copy(DIGITS().state_dict())
    updates = _output_layer_unchanged(global_state, 3)
    # Execute
    result = DeepSight(model_factory=DIGITS, num_noise_samples=100).aggregate(global_state, updates, 1)
    # Assert
    assert result.diagnostics["kept_previous_model"] == "every cluster was rejected"


def test_neups_are_float64_and_per_model():
    # Prepare: model 0 has energies 1 + x and 1 with x = float32(1e-8) (a float32 sum drops x);
    # model 1 has energies 3 and 1 (its own normalisation, not the round's)
    x = float(torch.tensor(1e-8))
    w = torch.tensor([[[1.0, 1e-8], [1.0, 0.0]], [[2.0, 0.0], [0.5, 0.0]]])
    b = torch.tensor([[0.0, 0.0], [1.0, 0.5]])
    # Execute
    neups = normalized_energy_updates(w, b)
    # Assert
    assert neups.dtype == torch.float64
    assert neups[0, 0].item() == pytest.approx((1 + x) ** 2 / ((1 + x) ** 2 + 1), rel=1e-15, abs=0)
    assert neups[0, 0].item() != 0.5
    assert neups[1].tolist() == pytest.approx([0.9, 0.1], rel=1e-12)


def _batchnorm_mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 10)
    )


def test_float_buffers_are_averaged_unclipped():
    # Prepare: parameters move along one direction at scales 0.1, 0.2, 1 (the last is clipped by
    # 0.2); BatchNorm's running mean moves by 1, 2 and 6 times a vector r (a buffer: not clipped)
    global_state = _copy(_batchnorm_mlp().state_dict())
    gen = torch.Generator().manual_seed(5)
    params = [k for k in global_state if "running" not in k and "num_batches" not in k]
    direction = {k: torch.randn(global_state[k].shape, generator=gen) for k in params}
    total = float(torch.cat([v.flatten() for v in direction.values()]).norm())
    r = torch.rand(16, generator=gen)
    updates = []
    for i, (s, m) in enumerate([(0.1, 1.0), (0.2, 2.0), (1.0, 6.0)]):
        state = _copy(global_state)
        for k in params:
            state[k] = state[k] + s * 0.5 * direction[k] / total
        state["2.running_mean"] = state["2.running_mean"] + m * r
        updates.append(ClientUpdate(i, state, 1))
    # Execute
    result = DeepSight(model_factory=_batchnorm_mlp, num_noise_samples=100).aggregate(global_state, updates, 1)
    # Assert: parameters as clipped (0.1 + 0.2 + 0.2) / 3, the running mean by (1 + 2 + 6) / 3
    assert result.flagged == frozenset()
    torch.testing.assert_close(result.global_state["2.running_mean"], global_state["2.running_mean"] + 3.0 * r,
                               rtol=0, atol=1e-6)
    for k in params:
        expected = global_state[k] + (0.1 + 0.2 + 0.2) / 3 * 0.5 * direction[k] / total
        torch.testing.assert_close(result.global_state[k], expected, rtol=0, atol=1e-6)
    assert torch.equal(result.global_state["2.running_var"], global_state["2.running_var"])


def test_hdbscan_labels_of_a_single_model_is_cluster_0_as_int64():
    labels = hdbscan_labels(np.array([[0.5, 0.25]]), precomputed=False)
    assert labels.dtype == np.int64 and labels.tolist() == [0]
    more = hdbscan_labels(np.array([[0.0], [0.0], [1.0], [1.0]]), precomputed=False, min_cluster_size=2)
    assert more.dtype == np.int64  # labels stay integers in the JSON diagnostics


# --------------------------------------------------------------------------- hdbscan_labels' settings (mutmut)


def test_hdbscan_labels_min_samples_changes_the_clusters():
    # Prepare: 8 points; with min_cluster_size 3, min_samples 1 (single linkage on the plain
    # distances) puts point 2 (4, 6) with the right-hand group; min_samples None (= 3) smooths the
    # distances by each point's 3rd-nearest neighbour and puts it with the left-hand group
    pts = np.array([[1, 9], [1, 11], [4, 6], [4, 11], [8, 7], [8, 9], [10, 9], [11, 8]], dtype=np.float64)
    # Execute
    one = hdbscan_labels(pts, precomputed=False, min_cluster_size=3, min_samples=1)
    default = hdbscan_labels(pts, precomputed=False, min_cluster_size=3)
    # Assert
    assert one.tolist() == [0, 0, 1, 0, 1, 1, 1, 1]
    assert default.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_hdbscan_labels_caps_min_samples_at_k_minus_1():
    # Prepare: 4 points on a line in two pairs.  min_samples 10 is capped at K - 1 = 3: every
    # point's core distance reaches across both pairs and no cluster survives (all noise); with
    # 2 the pairs are two clusters
    pts = np.array([[4.0], [5.0], [6.5], [7.0]])
    # Execute
    capped = hdbscan_labels(pts, precomputed=False, min_cluster_size=2, min_samples=10)
    three = hdbscan_labels(pts, precomputed=False, min_cluster_size=2, min_samples=3)
    two = hdbscan_labels(pts, precomputed=False, min_cluster_size=2, min_samples=2)
    # Assert
    assert capped.tolist() == three.tolist() == [-1, -1, -1, -1]
    assert two.tolist() == [0, 0, 1, 1]


def test_hdbscan_labels_of_a_distance_matrix_are_those_of_its_points():
    # Prepare: 6 points (no tied distances) and their Euclidean distance matrix.  Read as 6
    # feature rows (another metric), the matrix gives no cluster at all: it must be clustered as
    # distances
    pts = np.array([[5.75, 5.0], [6.75, 8.75], [8.75, 7.75], [9.75, 3.0], [9.0, 9.0], [2.0, 4.5]])
    dist = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(axis=2))
    # Execute
    from_points = hdbscan_labels(pts, precomputed=False, min_cluster_size=2, min_samples=1)
    from_matrix = hdbscan_labels(dist, precomputed=True, min_cluster_size=2, min_samples=1)
    as_rows = hdbscan_labels(dist, precomputed=False, min_cluster_size=2, min_samples=1)
    # Assert: the three upper points together, the two left ones together, (9.75, 3) is noise
    assert from_points.tolist() == from_matrix.tolist() == [0, 1, 1, -1, 1, 0]
    assert as_rows.tolist() == [-1] * 6


# --------------------------------------------------------------------------- input shape and noise (mutmut)


def test_infer_input_shape_of_flat_models_square_grey_colour_and_plain():
    # Prepare: first Linear layers with 784 = 28^2, 192 = 3 x 8^2 and 10 input features
    from torch import nn

    grey = nn.Sequential(nn.Flatten(), nn.Linear(784, 4))
    colour = nn.Sequential(nn.Flatten(), nn.Linear(192, 4))
    plain = nn.Sequential(nn.Linear(10, 4))
    # Execute / Assert: a square image first (1 or 3 channels), else the flat vector
    assert infer_input_shape(grey) == (1, 28, 28)
    assert infer_input_shape(colour) == (3, 8, 8)
    assert infer_input_shape(plain) == (10,)
    with pytest.raises(ValueError) as info:
        infer_input_shape(nn.Sequential(nn.ReLU()))
    assert str(info.value) == "DeepSight cannot infer the input shape (no Conv2d/Linear); pass input_shape"


def test_noise_batches_come_from_the_given_generator():
    # Prepare: the same seed twice; the global RNG is moved in between (it must not matter)
    normal = DeepSight(model_factory=DIGITS, noise="normal")
    uniform = DeepSight(model_factory=DIGITS, noise="uniform")
    # Execute
    a = normal._noise_batch(torch.Generator().manual_seed(5), 2, (3,))
    torch.rand(7)
    b = normal._noise_batch(torch.Generator().manual_seed(5), 2, (3,))
    u = uniform._noise_batch(torch.Generator().manual_seed(5), 2, (3,))
    # Assert
    assert torch.equal(a, b) and torch.equal(a, torch.randn((2, 3), generator=torch.Generator().manual_seed(5)))
    assert torch.equal(u, torch.rand((2, 3), generator=torch.Generator().manual_seed(5)))


@pytest.mark.parametrize(
    "params, message",
    [
        ({"model_factory": None}, "DeepSight needs model_factory: the DDifs run every local model on noise inputs, "
                                  "so the defense must be able to build the run's architecture"),
        ({"model_factory": 3}, "model_factory must be a zero-argument callable returning an nn.Module"),
        ({"tau": 0.0}, "tau must lie in (0, 1], got 0.0"),
        ({"tau": 1.5}, "tau must lie in (0, 1], got 1.5"),
        ({"num_seeds": 0}, "num_seeds, num_noise_samples and noise_batch_size must be >= 1"),
        ({"num_noise_samples": 0}, "num_seeds, num_noise_samples and noise_batch_size must be >= 1"),
        ({"noise_batch_size": 0}, "num_seeds, num_noise_samples and noise_batch_size must be >= 1"),
        ({"noise": "gauss"}, "noise must be 'normal' or 'uniform', got 'gauss'"),
        ({"min_cluster_size": 1}, "HDBSCAN needs min_cluster_size >= 2 and min_samples >= 1 (or None), got 1 and None"),
        ({"min_samples": 0}, "HDBSCAN needs min_cluster_size >= 2 and min_samples >= 1 (or None), got 5 and 0"),
        ({"num_classes": 1}, "num_classes must be >= 2, got 1"),
    ],
)
def test_each_refused_deepsight_setting_gets_its_whole_message(params, message):
    # Execute
    with pytest.raises(ValueError) as info:
        DeepSight(**{"model_factory": DIGITS, **params})
    # Assert
    assert str(info.value) == message


def test_deepsight_defaults_and_the_smallest_accepted_settings():
    # Execute
    default = DeepSight(model_factory=DIGITS)
    edge = DeepSight(model_factory=DIGITS, tau=1.0, num_seeds=1, num_noise_samples=1, noise_batch_size=1,
                     min_cluster_size=2, min_samples=1, num_classes=2, input_shape=[1, 28, 28])
    # Assert: the documented defaults (library HDBSCAN settings, 3 seeds of 2,000 uniform inputs)
    assert (default.seed, default.tau, default.num_seeds) == (0, 1.0 / 3.0, 3)
    assert (default.num_noise_samples, default.noise_batch_size, default.noise) == (2000, 500, "uniform")
    assert (default.min_cluster_size, default.min_samples, default.allow_single_cluster) == (5, None, False)
    assert default.sample_weighted is True and default.num_classes is None and default.input_shape is None
    assert (edge.tau, edge.num_seeds, edge.min_cluster_size, edge.min_samples, edge.num_classes) == (1.0, 1, 2, 1, 2)
    assert edge.input_shape == (1, 28, 28)
