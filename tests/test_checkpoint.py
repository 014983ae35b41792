"""Checkpoints load without running code, and every defense's state survives a checkpoint file.

Issue 12: defense state as data (``state_dict`` / ``load_state_dict`` with a format version per
defense), checkpoints read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import torch

import fedgrad_core
from fedgrad_core import ExperimentConfig, run_experiment
from fedgrad_core.checkpoint import (
    CHECKPOINT_VERSION,
    Checkpoint,
    CheckpointError,
    check_plain,
    load_checkpoint,
    save_checkpoint,
)
from fedgrad_core.defenses import ClientUpdate, available_defenses, build_defense
from fedgrad_core.models import make_model

STATEFUL = {"fedgrad", "fedgrad_plus", "foolsgold"}


class _WritesAMarker:
    """Unpickling this object calls ``open(marker, "w")``: code run by merely loading a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _factory():
    return make_model("digits_mlp", in_channels=1, num_classes=10, seed=0)


CONTEXT = {"seed": 0, "attacker_fraction": 0.25, "model_factory": _factory, "num_classes": 10}
#: Small settings so that every defense runs three rounds in well under a second; FedGrad's hard
#: filter and trust score act from round 1, so all of its history is exercised.
PARAMS = {
    "fedgrad": {"switch_round": 1},
    "fedgrad_plus": {"switch_round": 1},
    "deepsight": {"num_seeds": 1, "num_noise_samples": 200, "noise_batch_size": 200},
}


def _global_state():
    return {k: v.detach().clone() for k, v in _factory().state_dict().items()}


def _round(g, ids, seed):
    """Clients ``ids``: the global model plus seeded noise and, except for clients 1 and 2, the
    round's common direction (moderate cosines: FoolsGold weights strictly between 0 and 1);
    ids 90+ also share one fixed direction (a sybil group for FoolsGold and FedGrad to find);
    unequal sample counts."""
    gen = torch.Generator().manual_seed(seed)
    common = {n: torch.randn(t.shape, generator=gen) for n, t in g.items()}
    sybil = {n: torch.randn(t.shape, generator=torch.Generator().manual_seed(99)) for n, t in g.items()}
    updates = []
    for cid in ids:
        c = 0.0 if cid in (1, 2) else 1.0
        state = {n: t + 0.01 * (c * common[n] + torch.randn(t.shape, generator=gen)) for n, t in g.items()}
        if cid >= 90:
            state = {n: t + 0.02 * sybil[n] for n, t in state.items()}
        updates.append(ClientUpdate(cid, state, 20 + 3 * (cid % 7)))
    return updates


#: Three rounds over overlapping client sets (new ids join in rounds 2 and 3).
ROUNDS = [
    [1, 2, 3, 4, 5, 90, 91],
    [2, 3, 5, 6, 7, 90, 92],
    [1, 3, 6, 7, 8, 91, 92],
]


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


# --------------------------------------------------------------------------- unsafe files


def test_the_crafted_pickle_really_runs_code_when_unpickled_unsafely(tmp_path):
    # The control: without this, the refusal tests below could pass with a harmless file.
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps({"defense": _WritesAMarker(marker)}))
    assert marker.exists()


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_crafted_checkpoint_is_refused_and_nothing_runs(tmp_path, writer):
    # Prepare: a checkpoint file whose loading would create the marker file
    marker = tmp_path / "ran"
    path = tmp_path / "run.json.ckpt"
    payload = {"format": "fedgrad-checkpoint", "version": CHECKPOINT_VERSION, "defense": _WritesAMarker(marker)}
    with path.open("wb") as fh:
        torch.save(payload, fh) if writer == "torch.save" else pickle.dump(payload, fh)
    # Execute / Assert: directly and through --resume
    with pytest.raises(CheckpointError, match="refused.*Nothing in it was run"):
        load_checkpoint(path)
    config = ExperimentConfig(rounds=2, num_clients=6, clients_per_round=3)
    with pytest.raises(ValueError, match="refused"):
        run_experiment(config, checkpoint_path=path, resume=True, progress=False)
    assert not marker.exists()


def test_a_checkpoint_of_the_old_format_is_refused_with_a_reason(tmp_path):
    # Before format 2 the whole defense object was pickled into the checkpoint.
    path = tmp_path / "old.ckpt"
    defense = build_defense("fedgrad", {}, CONTEXT)
    torch.save({"config": {}, "round": 1, "history": [], "defense": defense, "global_state": {}}, path)

    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "FedGrad" in message and "format 2" in message and "weights_only=False" not in message


def test_a_file_that_is_not_a_checkpoint_gives_one_clear_error(tmp_path):
    garbage, other, future = tmp_path / "garbage", tmp_path / "other", tmp_path / "future"
    garbage.write_bytes(b"not a checkpoint at all")
    torch.save({"weights": torch.zeros(2)}, other)
    torch.save({"format": "fedgrad-checkpoint", "version": CHECKPOINT_VERSION + 1}, future)

    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="not a fedgrad checkpoint"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match=f"format version {CHECKPOINT_VERSION + 1}.*reads version {CHECKPOINT_VERSION}"):
        load_checkpoint(future)


def test_no_unsafe_torch_load_in_the_package():
    package = Path(fedgrad_core.__file__).parent
    offenders = [
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if re.search(r"weights_only\s*=\s*False", p.read_text())
    ]
    assert offenders == []


# --------------------------------------------------------------------------- the checkpoint file


def test_checkpoint_round_trips_config_round_model_history_and_state(tmp_path):
    # Prepare: a history with the value kinds a real one holds (None, nested dicts, floats)
    g = _global_state()
    defense = build_defense("fedgrad", PARAMS["fedgrad"], CONTEXT)
    defense.aggregate(g, _round(g, ROUNDS[0], seed=0), round_idx=1)
    history = [{"round": 1, "main_acc": None, "tpr": 0.5, "flagged": [2, 90], "defense": {"trust": {"2": 0.375}}}]
    config = {"dataset": "digits", "defense_params": {"ultimate_layer": ("a.weight", "a.bias")}, "seed": 3}
    saved = Checkpoint(config, 1, g, history, defense.state_dict())
    # Execute
    path = save_checkpoint(tmp_path / "sub" / "run.ckpt", saved)
    loaded = load_checkpoint(path)
    # Assert: exact values; the tuple comes back as JSON's list
    assert loaded.round == 1 and loaded.history == history
    assert loaded.config == {"dataset": "digits", "defense_params": {"ultimate_layer": ["a.weight", "a.bias"]}, "seed": 3}
    _assert_same_state(loaded.global_state, g)
    _assert_same_state(loaded.defense_state, saved.defense_state)
    assert [p.name for p in path.parent.iterdir()] == ["run.ckpt"]  # written atomically


def test_saving_a_state_that_would_not_load_safely_fails_at_save_time(tmp_path):
    import numpy as np

    with pytest.raises(TypeError, match=r"defense_state\['history'\] is a numpy.ndarray.*torch.from_numpy"):
        save_checkpoint(tmp_path / "x.ckpt", Checkpoint({}, 1, {}, [], {"history": np.zeros(3)}))
    with pytest.raises(TypeError, match="key of type tuple"):
        check_plain({(1, 2): 3.0})
    assert not (tmp_path / "x.ckpt").exists()


def test_resume_with_another_configuration_names_the_differences(tmp_path):
    out = tmp_path / "run.json"
    config = ExperimentConfig(rounds=1, num_clients=4, clients_per_round=2, local_epochs=1, pretrain_epochs=0)
    run_experiment(config, out=out, checkpoint_every=1, progress=False)

    with pytest.raises(ValueError, match=r"different configuration \(local_epochs: 1 -> 2; seed: 0 -> 9\)"):
        run_experiment(config.replace(local_epochs=2, seed=9), out=out, resume=True, progress=False)


# --------------------------------------------------------------------------- defense states


@pytest.mark.parametrize("name", available_defenses())
def test_every_defense_continues_identically_after_its_state_goes_through_a_checkpoint(tmp_path, name):
    # Prepare: two rounds on one instance, its state through a real checkpoint file
    g = _global_state()
    params = PARAMS.get(name, {})
    straight = build_defense(name, params, CONTEXT)
    for r in (1, 2):
        straight.aggregate(g, _round(g, ROUNDS[r - 1], seed=r), round_idx=r)
    state = straight.state_dict()
    check_plain(state)
    path = save_checkpoint(tmp_path / "ckpt", Checkpoint({}, 2, g, [], state))
    # Execute: a fresh instance loads it; both run round 3
    resumed = build_defense(name, params, CONTEXT)
    resumed.load_state_dict(load_checkpoint(path).defense_state)
    third = _round(g, ROUNDS[2], seed=3)
    a = straight.aggregate(g, third, round_idx=3)
    b = resumed.aggregate(g, third, round_idx=3)
    # Assert
    _assert_same_state(a.global_state, b.global_state)
    assert a.flagged == b.flagged and a.diagnostics == b.diagnostics
    _assert_same_state(straight.state_dict(), resumed.state_dict())
    if name in STATEFUL:
        assert state["defense"] == name and state["version"] == straight.state_version
        # the state matters: an instance without it aggregates round 3 differently
        fresh = build_defense(name, params, CONTEXT).aggregate(g, third, round_idx=3)
        assert any(not torch.equal(fresh.global_state[k], a.global_state[k]) for k in g)
    else:
        assert state == {}


@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_a_state_of_another_version_or_defense_is_refused_by_name(name):
    g = _global_state()
    defense = build_defense(name, PARAMS.get(name, {}), CONTEXT)
    defense.aggregate(g, _round(g, ROUNDS[0], seed=0), round_idx=1)
    state = defense.state_dict()
    version = defense.state_version
    fresh = build_defense(name, PARAMS.get(name, {}), CONTEXT)

    older = {**state, "version": version - 1}
    with pytest.raises(ValueError, match=rf"defense '{name}': the saved state has format version {version - 1}, this code reads version {version}"):
        fresh.load_state_dict(older)
    other = {**state, "defense": "someone_else"}
    with pytest.raises(ValueError, match=rf"defense '{name}' \(state format version {version}\) cannot load a state written for defense 'someone_else'"):
        fresh.load_state_dict(other)
    with pytest.raises(ValueError, match=rf"defense '{name}'.*cannot load an empty state"):
        fresh.load_state_dict({})
    damaged = {**state}
    damaged.pop(next(k for k in state if k not in ("defense", "version")))
    with pytest.raises(ValueError, match=rf"defense '{name}': the saved state \(version {version}\) lacks"):
        fresh.load_state_dict(damaged)
    key = "pair_w" if name.startswith("fedgrad") else "history"
    wrong_dtype = {**state, key: state[key].double()}
    with pytest.raises(ValueError, match=rf"defense '{name}': saved state entry '{key}' should be a torch.float32 tensor"):
        fresh.load_state_dict(wrong_dtype)


def test_a_stateless_defense_refuses_a_stateful_ones_state():
    g = _global_state()
    fedgrad = build_defense("fedgrad", PARAMS["fedgrad"], CONTEXT)
    fedgrad.aggregate(g, _round(g, ROUNDS[0], seed=0), round_idx=1)
    krum = build_defense("krum", {}, CONTEXT)

    krum.load_state_dict({})  # its own (empty) state
    with pytest.raises(ValueError, match="defense 'krum' .* written for defense 'fedgrad'"):
        krum.load_state_dict(fedgrad.state_dict())


def test_foolsgold_refuses_a_history_over_other_features():
    g = _global_state()
    full = build_defense("foolsgold", {}, CONTEXT)
    full.aggregate(g, _round(g, ROUNDS[0], seed=0), round_idx=1)

    with pytest.raises(ValueError, match="features='all', this run uses features='ultimate'"):
        build_defense("foolsgold", {"features": "ultimate"}, CONTEXT).load_state_dict(full.state_dict())


def test_foolsgold_refuses_a_history_summed_with_another_clip_norm():
    # histories of clipped updates resumed without clipping would mix two scales of update
    g = _global_state()
    clipped = build_defense("foolsgold", {}, CONTEXT)
    clipped.aggregate(g, _round(g, ROUNDS[0], seed=0), round_idx=1)
    state = clipped.state_dict()
    assert state["clip_norm"] == 1.0

    with pytest.raises(ValueError, match="clip_norm=1.0, this run uses clip_norm=None"):
        build_defense("foolsgold", {"clip_norm": None}, CONTEXT).load_state_dict(state)
    with pytest.raises(ValueError, match="clip_norm=1.0, this run uses clip_norm=0.5"):
        build_defense("foolsgold", {"clip_norm": 0.5}, CONTEXT).load_state_dict(state)
    resumed = build_defense("foolsgold", {}, CONTEXT)
    resumed.load_state_dict(state)
    assert sorted(resumed.history) == sorted(clipped.history)


def test_fedgrad_state_holds_its_history_as_hand_checkable_tensors():
    # Prepare: two rounds, client 2 in both
    g = _global_state()
    defense = build_defense("fedgrad", {"switch_round": 1}, CONTEXT)
    defense.aggregate(g, _round(g, [1, 2, 3, 90], seed=1), round_idx=1)
    defense.aggregate(g, _round(g, [2, 4, 5, 91], seed=2), round_idx=2)
    # Execute
    state = defense.state_dict()
    # Assert: ids ascending, counts per client, pair arrays over the 7 ids seen in order of arrival
    assert state["soft_ids"].tolist() == [1, 2, 3, 4, 5, 90, 91]
    assert state["soft_rounds"].tolist() == [1, 2, 1, 1, 1, 1, 1]
    assert state["trust_count"].tolist() == [2, 3, 2, 2, 2, 2, 2]  # the starting 0.5 counts once
    assert state["pair_ids"].tolist() == [1, 2, 3, 90, 4, 5, 91]
    assert state["pair_n"].shape == (7, 7) and state["pair_n"][1, 1] == 2 and state["pair_n"][0, 4] == 0
    for i in range(7):
        assert defense.trust_of(state["trust_ids"][i].item()) == pytest.approx(
            state["trust_sum"][i].item() / state["trust_count"][i].item()
        )


def test_the_base_class_messages_name_the_defense_the_found_type_and_what_to_do():
    # Prepare: a stateless defense and a stateful one
    fedavg, fedgrad = build_defense("fedavg", {}, CONTEXT), build_defense("fedgrad", {}, CONTEXT)
    stale = {"defense": "fedgrad", "version": 0}
    # Execute / Assert: the whole message, so a lost type name or a lost last sentence fails
    with pytest.raises(ValueError, match=r"^defense 'fedavg': a saved state must be a dict, got list$"):
        fedavg.load_state_dict([1, 2])
    with pytest.raises(ValueError, match=r"^defense 'fedavg' keeps no state, but the saved state holds "
                                         r"\['defense', 'version'\]$"):
        fedavg.load_state_dict({"defense": "fedavg", "version": 1})
    with pytest.raises(ValueError, match=r"^defense 'fedgrad' \(state format version 1\) cannot load int: "
                                         r"was the checkpoint written for a stateless defense\?$"):
        fedgrad.load_state_dict(7)
    with pytest.raises(ValueError, match=r"^defense 'fedgrad': the saved state has format version 0, this code reads "
                                         r"version 1; it was written by another version of fedgrad_core: resume "
                                         r"with that version or start the run afresh$"):
        fedgrad.load_state_dict(stale)
