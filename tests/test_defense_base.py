import pytest
import torch

from fedgrad_core.defenses import ClientUpdate, Layout, make_defense


def _state(value, bias=0.0):
    return {"w": torch.full((2, 3), float(value)), "b": torch.full((2,), float(bias)), "steps": torch.tensor(7)}


def test_layout_round_trips_float_tensors_and_keeps_integer_buffers():
    state = {"w": torch.arange(6.0).view(2, 3), "b": torch.tensor([7.0, 8.0]), "steps": torch.tensor(3)}
    layout = Layout.of(state)

    vector = layout.flatten(state)
    back = layout.unflatten(vector * 2, state)

    assert vector.tolist() == [0, 1, 2, 3, 4, 5, 7, 8]
    assert layout.slice_of("b") == slice(6, 8)
    assert back["w"].tolist() == [[0, 2, 4], [6, 8, 10]] and back["b"].tolist() == [14, 16]
    assert back["steps"].item() == 3


def test_fedavg_weights_by_sample_count():
    updates = [ClientUpdate(0, _state(1), 1), ClientUpdate(1, _state(4), 3)]

    result = make_defense("fedavg").aggregate(_state(0), updates, round_idx=1)

    assert torch.allclose(result.global_state["w"], torch.full((2, 3), 3.25))
    assert result.flagged == frozenset()


def test_mismatched_shapes_name_the_tensor():
    bad = {"w": torch.zeros(3, 2), "b": torch.zeros(2), "steps": torch.tensor(7)}

    with pytest.raises(ValueError, match=r"shape mismatch for 'w': got \(3, 2\), global model has \(2, 3\)"):
        make_defense("fedavg").aggregate(_state(0), [ClientUpdate(0, bad, 1)], 1)


def test_missing_keys_are_named():
    with pytest.raises(ValueError, match="client 4: state keys differ"):
        make_defense("fedavg").aggregate(_state(0), [ClientUpdate(4, {"w": torch.zeros(2, 3)}, 1)], 1)


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_update_is_flagged_and_left_out(bad_value):
    updates = [ClientUpdate(0, _state(1), 1), ClientUpdate(1, _state(bad_value), 1), ClientUpdate(2, _state(3), 1)]

    result = make_defense("fedavg").aggregate(_state(0), updates, 1)

    assert result.flagged == frozenset({1})
    assert torch.allclose(result.global_state["w"], torch.full((2, 3), 2.0))


def test_only_non_finite_updates_keep_the_previous_model():
    result = make_defense("fedavg").aggregate(_state(5), [ClientUpdate(0, _state(float("nan")), 1)], 1)

    assert torch.equal(result.global_state["w"], _state(5)["w"])
    assert result.flagged == frozenset({0})


def test_unknown_defense_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"unknown defense 'nope'; choose one of \[.*'fedavg'.*\]"):
        make_defense("nope")


def test_fedavg_takes_integer_buffers_from_the_global_model_whatever_their_position():
    # Prepare: the integer buffer comes first in the state dict, float weights after it
    global_state = {"count": torch.tensor(7), "w": torch.tensor([1.0])}
    updates = [ClientUpdate(i, {"count": torch.tensor(100 + i), "w": torch.tensor([v])}, n)
               for i, (v, n) in enumerate([(2.0, 1), (5.0, 3)])]
    # Execute
    out = make_defense("fedavg").aggregate(global_state, updates, 0).global_state
    # Assert: (2 * 1 + 5 * 3) / 4
    assert out["count"].item() == 7
    assert out["w"].item() == pytest.approx(17 / 4)


def test_fedavg_accumulates_half_precision_in_float32_and_returns_half():
    # 7/3 in float32 rounds to float16's 2.333984375; accumulating in float16 gives 2.33203125
    global_state = {"w": torch.zeros(1, dtype=torch.float16)}
    updates = [ClientUpdate(i, {"w": torch.tensor([v], dtype=torch.float16)}, 1) for i, v in enumerate([1.0, 2.0, 4.0])]
    out = make_defense("fedavg").aggregate(global_state, updates, 0).global_state["w"]
    assert out.dtype == torch.float16
    assert out.item() == 2.333984375


def test_fedavg_keeps_float64_models_in_float64():
    # (0.1 + 0.3 + 0.3) / 3 in float64; float32 accumulation would be off by ~1e-8
    global_state = {"w": torch.zeros(1, dtype=torch.float64)}
    updates = [ClientUpdate(i, {"w": torch.tensor([v], dtype=torch.float64)}, 1) for i, v in enumerate([0.1, 0.3, 0.3])]
    out = make_defense("fedavg").aggregate(global_state, updates, 0).global_state["w"]
    assert out.dtype == torch.float64
    assert abs(out.item() - 0.7 / 3) < 1e-15


def test_is_finite_state_when_the_sum_overflows():
    from fedgrad_core.defenses.base import is_finite_state

    # the float32 sum is inf, yet every entry is finite: the full check decides
    assert is_finite_state({"w": torch.tensor([3e38, 3e38])})
    assert not is_finite_state({"w": torch.tensor([3e38, float("inf")])})


def test_aggregate_input_checks_name_the_problem():
    g = {k: torch.zeros(1) for k in ("a", "b", "c", "d")}
    other = {k: torch.zeros(1) for k in ("w", "x", "y", "z")}
    with pytest.raises(ValueError, match=r"^aggregate\(\) needs at least one client update$"):
        make_defense("fedavg").aggregate(g, [], 0)
    with pytest.raises(ValueError, match=r"^duplicate client ids in one round: \[1, 3, 3\]$"):
        make_defense("fedavg").aggregate(g, [ClientUpdate(i, dict(g), 1) for i in (3, 1, 3)], 0)
    with pytest.raises(ValueError, match=r"^client 0: state keys differ from the global model's "
                       r"\(missing \['a', 'b', 'c'\], unexpected \['w', 'x', 'y'\]\)$"):
        make_defense("fedavg").aggregate(g, [ClientUpdate(0, other, 1)], 0)
    with pytest.raises(ValueError, match=r"^every ClientUpdate needs num_samples > 0$"):
        make_defense("fedavg").aggregate(g, [ClientUpdate(0, dict(g), 0)], 0)


def test_all_non_finite_updates_keep_the_global_model():
    g = {"w": torch.tensor([1.0])}
    ups = [ClientUpdate(i, {"w": torch.tensor([float("nan")])}, 1) for i in (4, 2)]
    result = make_defense("fedavg").aggregate(g, ups, 0)
    assert result.global_state["w"].tolist() == [1.0]
    assert result.flagged == frozenset({2, 4})
    assert result.diagnostics == {"non_finite": [2, 4]}


def test_a_non_finite_aggregate_keeps_the_global_model_and_the_defenses_verdict():
    from fedgrad_core.defenses import Aggregate
    from fedgrad_core.defenses.base import Defense

    class Overflow(Defense):
        name = "overflow"

        def aggregate_finite(self, global_state, updates, round_idx):
            return Aggregate({"w": torch.tensor([float("inf")])}, frozenset({1}), {"note": 5})

    g = {"w": torch.tensor([2.0])}
    ups = [ClientUpdate(i, {"w": torch.tensor([float(i)])}, 1) for i in (0, 1)]
    result = Overflow().aggregate(g, ups, 0)
    assert result.global_state["w"].tolist() == [2.0]
    assert result.flagged == frozenset({1})
    assert result.diagnostics == {"note": 5, "kept_previous_model": "aggregate was not finite"}


def test_layout_skips_integer_buffers_wherever_they_sit_and_flatten_names_its_problems():
    # Prepare: an integer buffer between float tensors, seven float tensors in all
    later = {f"k{i}": torch.full((2,), float(i)) for i in range(1, 7)}
    state = {"k0": torch.zeros(2), "steps": torch.tensor(3), **later}
    # Execute
    layout = Layout.of(state)
    # Assert: every float tensor after the buffer is in the layout; the errors name at most five
    # missing keys, and the tensor and both shapes of a mismatch
    assert layout.names == tuple(f"k{i}" for i in range(7)) and layout.size == 14
    five = r"\['k0', 'k1', 'k2', 'k3', 'k4'\]"
    with pytest.raises(ValueError, match=rf"^state is missing keys {five} of the global model$"):
        layout.flatten({"steps": torch.tensor(3)})
    with pytest.raises(ValueError, match=r"^shape mismatch for 'k3': got \(3,\), global model has \(2,\)$"):
        layout.flatten({**state, "k3": torch.zeros(3)})
