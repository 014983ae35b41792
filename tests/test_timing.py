"""fedgrad_core.timing: interleaved timing, log-log slopes, synthetic rounds and the server-cost helper."""

from __future__ import annotations

import pytest
import torch

from fedgrad_core import timing
from fedgrad_core.defenses import Aggregate, ClientUpdate
from fedgrad_core.timing import (
    FLOOR,
    hardware_info,
    hardware_line,
    interleaved_medians,
    interleaved_times,
    loglog_slope,
    server_seconds,
    synthetic_round,
    weighted_average_floor,
)


class FakeClock:
    """perf_counter that advances only when a variant 'runs' for a set duration."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def runner(self, durations, log, name):
        durations = iter(durations)

        def run():
            log.append(name)
            self.now += next(durations)

        return run


def test_variants_alternate_after_an_untimed_warmup(monkeypatch):
    # Prepare: the warm-up calls (9 s) must not count.
    clock, log = FakeClock(), []
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    variants = {"a": clock.runner([9.0, 1.0, 5.0, 2.0], log, "a"), "b": clock.runner([9.0, 4.0, 0.5, 6.0], log, "b")}

    # Execute
    times = interleaved_times(variants, 3)

    # Assert: one warm-up pass, then alternation
    assert log == ["a", "b"] * 4
    assert times == {"a": [1.0, 5.0, 2.0], "b": [4.0, 0.5, 6.0]}


def test_medians_are_taken_per_variant_without_warmup(monkeypatch):
    clock, log = FakeClock(), []
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    variants = {"a": clock.runner([1.0, 5.0, 2.0], log, "a"), "b": clock.runner([0.5, 0.25, 3.0], log, "b")}

    medians = interleaved_medians(variants, 3, warmup=False)

    assert log == ["a", "b"] * 3
    assert medians == {"a": 2.0, "b": 0.5}


def test_interleaved_times_needs_a_timed_call():
    with pytest.raises(ValueError, match="at least one timed call, got repeats = 0"):
        interleaved_times({"a": lambda: None}, 0)


def test_loglog_slope_of_power_laws():
    ks = [10, 30, 100]
    assert loglog_slope(ks, [0.01 * k**1.5 for k in ks]) == pytest.approx(1.5)
    assert loglog_slope([10, 100], [1.0, 100.0]) == pytest.approx(2.0)
    # Three points off a line (log-times 0, ln 3, ln 3 at ln 10, ln 30, ln 100): by hand,
    # dx = (-1.1337, -0.0351, 1.1689), dy = (-0.7324, 0.3662, 0.3662), sum dx dy / sum dx^2 = 1.2455 / 2.6529.
    assert loglog_slope(ks, [1.0, 3.0, 3.0]) == pytest.approx(0.4695, abs=1e-4)


def test_loglog_slope_errors_name_the_problem():
    with pytest.raises(ValueError, match="2 K values but 3 times"):
        loglog_slope([10, 30], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="at least two different K values"):
        loglog_slope([10, 10], [1.0, 2.0])
    with pytest.raises(ValueError, match="must be positive"):
        loglog_slope([10, 30], [0.0, 2.0])


def test_synthetic_round_is_seeded_noisy_and_leaves_the_global_rng_alone():
    rng_before = torch.random.get_rng_state()

    global_state, updates = synthetic_round("digits_mlp", 3, seed=4)
    again_global, again = synthetic_round("digits_mlp", 3, seed=4)
    _, other = synthetic_round("digits_mlp", 3, seed=5)

    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert [u.client_id for u in updates] == [0, 1, 2]
    assert [u.num_samples for u in updates] == [50, 60, 70]
    for u, v, w in zip(updates, again, other):
        assert set(u.state) == set(global_state)
        for name, tensor in u.state.items():
            assert torch.equal(tensor, v.state[name])  # same seed, same round
            assert not torch.equal(tensor, w.state[name])  # another seed, other noise
            diff = (tensor - global_state[name]).abs()
            assert 0 < diff.max() < 0.01  # noise of standard deviation 0.001 around the global model
    assert all(torch.equal(global_state[n], again_global[n]) for n in global_state)


def test_synthetic_round_errors():
    with pytest.raises(ValueError, match="no input channels known for model 'mystery'; pass in_channels"):
        synthetic_round("mystery", 2)
    with pytest.raises(ValueError, match="at least one client, got K = 0"):
        synthetic_round("digits_mlp", 0)


def test_floor_is_the_sample_weighted_average_and_keeps_integer_buffers():
    # Prepare: unequal counts 10 and 30, a non-zero global model and an integer buffer.
    global_state = {"w": torch.tensor([1.0, 2.0]), "steps": torch.tensor(7)}
    updates = [
        ClientUpdate(0, {"w": torch.tensor([1.0, 1.0]), "steps": torch.tensor(99)}, 10),
        ClientUpdate(1, {"w": torch.tensor([4.0, 7.0]), "steps": torch.tensor(99)}, 30),
    ]

    out = weighted_average_floor(global_state, updates)

    # (10 * 1 + 30 * 4) / 40 = 3.25, (10 * 1 + 30 * 7) / 40 = 5.5
    assert torch.allclose(out["w"], torch.tensor([3.25, 5.5]))
    assert out["steps"].item() == 7


def test_floor_errors():
    with pytest.raises(ValueError, match="at least one update"):
        weighted_average_floor({"w": torch.zeros(1)}, [])
    with pytest.raises(ValueError, match="sum to a positive number, got 0.0"):
        weighted_average_floor({"w": torch.zeros(1)}, [ClientUpdate(0, {"w": torch.ones(1)}, 0)])


def test_server_seconds_times_the_floor_and_each_defense():
    result = server_seconds(
        "digits_mlp", 4, ["fedavg", "krum", "fedgrad"], repeats=1, defense_params={"fedgrad": {"switch_round": 1}}
    )

    assert list(result) == [FLOOR, "fedavg", "krum", "fedgrad"]
    assert all(0 < s < 60 for s in result.values())


def test_server_seconds_calls_one_defense_round_after_round_with_its_parameters(monkeypatch):
    # Prepare: a recording defense in place of the registry's.
    built, rounds = [], []

    class Recorder:
        def aggregate(self, global_state, updates, round_idx):
            rounds.append((round_idx, len(updates), sorted(u.num_samples for u in updates)))
            return Aggregate(dict(global_state))

    def fake_build(name, params, context):
        built.append((name, params, sorted(context)))
        return Recorder()

    monkeypatch.setattr(timing, "build_defense", fake_build)

    # Execute: one warm-up call and two timed ones.
    result = server_seconds("digits_mlp", 3, ["rec"], repeats=2, defense_params={"rec": {"x": 1}, "other": {"y": 2}})

    # Assert: built once with its own parameters and the run's context; rounds count up from 1.
    assert built == [("rec", {"x": 1}, ["attacker_fraction", "model_factory", "num_classes", "seed"])]
    assert rounds == [(1, 3, [50, 60, 70]), (2, 3, [50, 60, 70]), (3, 3, [50, 60, 70])]
    assert set(result) == {FLOOR, "rec"}


def test_server_seconds_rejects_the_floor_as_a_defense():
    with pytest.raises(ValueError, match="'floor' is the reference"):
        server_seconds("digits_mlp", 2, ["floor"])


def test_hardware_line_names_cpu_threads_gpu_and_load():
    info = {
        "cpu": "Test CPU 9000",
        "logical_cpus": 2,
        "torch_version": "9.9",
        "torch_threads": 1,
        "gpu": None,
        "load_average_1min": 3.25,
    }

    line = hardware_line(info)

    assert line.startswith("hardware: Test CPU 9000, 2 logical CPUs, torch 9.9 with 1 threads, no GPU used;")
    assert "1-minute load average 3.2" in line
    assert "Tesla X" in hardware_line({**info, "gpu": "Tesla X", "load_average_1min": None})
    assert set(hardware_info()) == set(info)
