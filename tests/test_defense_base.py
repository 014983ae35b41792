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
