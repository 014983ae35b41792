"""The Flower strategies (fedgrad_core.integrations.flower): the same answers as the defenses, and a
run of Flower's own simulation engine with one poisoning node.  Skipped without ``flwr`` (the
``flower`` extra, which CI installs)."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

# Flower reads this when imported: no usage reports from an offline test machine
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
flwr = pytest.importorskip("flwr", reason='Flower is not installed: pip install -e ".[flower]"')

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.common import Metadata  # noqa: E402

from fedgrad_core.defenses import ClientUpdate, make_defense  # noqa: E402
from fedgrad_core.integrations.flower import (  # noqa: E402
    DefenseStrategy,
    FedGradStrategy,
    FoolsGoldStrategy,
    KrumStrategy,
    MultiKrumStrategy,
    arrays_to_state,
    state_to_arrays,
)

# --------------------------------------------------------------------------- hand-built replies


def _model() -> torch.nn.Module:
    # ultimate layer "2.weight" (3 x 5) and "2.bias"
    return torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))


def _reply(node_id: int, state: dict, num_examples: int, *, named: bool = True) -> Message:
    arrays = ArrayRecord(state) if named else ArrayRecord([v.numpy() for v in state.values()])
    metrics = MetricRecord({"num-examples": num_examples, "loss": float(node_id % 7)})
    content = RecordDict({"arrays": arrays, "metrics": metrics})
    metadata = Metadata(
        run_id=1, message_id="", src_node_id=node_id, dst_node_id=0, reply_to_message_id="m",
        group_id="1", created_at=time.time(), ttl=60.0, message_type="train",
    )
    return Message(content=content, metadata=metadata)


def _round_states(generator: torch.Generator, global_state: dict, k: int, bad: int) -> list[dict]:
    """k clients near the global model; client ``bad`` moved far along one direction."""
    states = []
    for i in range(k):
        scale = 3.0 if i == bad else 0.05
        states.append({n: v + scale * torch.randn(v.shape, generator=generator) for n, v in global_state.items()})
    return states


# Flower's node ids are random 64-bit integers, beyond int64 for some; listed out of order.
NODES = [2**63 + 11, 17, 2**40 + 3, 5, 2**62 + 1]


def _by_rank(nodes):
    """The strategy's small client index of each node: ascending node id on first sight."""
    return {n: i for i, n in enumerate(sorted(nodes))}


@pytest.mark.parametrize("named", [True, False], ids=["named-arrays", "ordered-list"])
def test_krum_strategy_equals_the_defense_and_flags_node_ids(named):
    # Prepare: a non-zero global model, unequal sample counts, one far-off node (NODES[2])
    generator = torch.Generator().manual_seed(0)
    template = _model()
    global_state = {n: v + 0.5 for n, v in template.state_dict().items()}
    states = _round_states(generator, global_state, len(NODES), bad=2)
    counts = [30, 10, 25, 40, 15]
    strategy = KrumStrategy(template, f=1)
    strategy.set_global(global_state)
    rank = _by_rank(NODES)
    reference = make_defense("krum", f=1).aggregate(
        global_state, [ClientUpdate(rank[n], s, c) for n, s, c in zip(NODES, states, counts)], 1
    )
    # Execute
    replies = [_reply(n, s, c, named=named) for n, s, c in zip(NODES, states, counts)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    # Assert: the same global model, flagged indices mapped back to node ids, keys as sent
    got = arrays_to_state(arrays, template.state_dict())
    for key, value in reference.global_state.items():
        assert torch.equal(got[key], value), key
    flagged = sorted(n for n in NODES if rank[n] in reference.flagged)
    assert len(flagged) == 4 and NODES[2] in flagged
    assert metrics["flagged-node-ids"] == flagged and metrics["num-flagged"] == 4
    assert list(arrays.keys()) == (list(template.state_dict()) if named else ["0", "1", "2", "3"])
    # the metrics are those of the one accepted node (Krum keeps one)
    (kept,) = set(NODES) - set(flagged)
    assert metrics["loss"] == pytest.approx(float(kept % 7))


@pytest.mark.parametrize("name,params", [("fedgrad", {"switch_round": 2, "attacker_fraction": 0.2}), ("foolsgold", {})])
def test_stateful_strategies_key_their_history_by_node_id(name, params):
    # Prepare: three rounds; the replies arrive in a different order each round and a new node joins
    # in round 2.  The reference defense sees each node under its stable index.
    generator = torch.Generator().manual_seed(1)
    template = _model()
    strategy = DefenseStrategy(name, params, template=template)
    reference = make_defense(name, **params)
    global_state = {n: v * 2.0 + 0.1 for n, v in template.state_dict().items()}
    index = _by_rank(NODES)
    rounds = [NODES, NODES[::-1] + [3], [NODES[3], 3, NODES[0], NODES[4], NODES[1], NODES[2]]]
    for round_idx, nodes in enumerate(rounds, start=1):
        index.setdefault(3, len(index))  # the new node comes after the first round's five
        states = _round_states(generator, global_state, len(nodes), bad=nodes.index(NODES[2]))
        counts = [10 + 7 * i for i in range(len(nodes))]
        strategy.set_global(global_state)
        # Execute
        replies = [_reply(n, s, c) for n, s, c in zip(nodes, states, counts)]
        arrays, metrics = strategy.aggregate_train(round_idx, replies)
        expected = reference.aggregate(
            global_state, [ClientUpdate(index[n], s, c) for n, s, c in zip(nodes, states, counts)], round_idx
        )
        # Assert
        got = arrays_to_state(arrays, template.state_dict())
        for key, value in expected.global_state.items():
            assert torch.allclose(got[key], value, rtol=0, atol=1e-6), (round_idx, key)
        node_of = {i: n for n, i in index.items()}
        assert metrics["flagged-node-ids"] == sorted(node_of[i] for i in expected.flagged)
        global_state = expected.global_state
    assert strategy.node_id_of(index[3]) == 3 and index[3] == 5
    # the strategy's saved history round-trips into a fresh strategy
    saved = strategy.state_dict()
    fresh = DefenseStrategy(name, params, template=template)
    fresh.load_state_dict(saved)
    assert fresh.state_dict()["node_ids"] == saved["node_ids"] and fresh.flagged_history == strategy.flagged_history


def test_each_named_strategy_wraps_its_defense_with_the_given_parameters():
    from fedgrad_core.integrations import flower as bridge

    named = {
        "FedGradStrategy": "fedgrad", "KrumStrategy": "krum", "MultiKrumStrategy": "multikrum",
        "FoolsGoldStrategy": "foolsgold", "RFAStrategy": "rfa", "RLRStrategy": "rlr",
        "FlameStrategy": "flame", "DeepSightStrategy": "deepsight",
    }
    for cls_name, defense_name in named.items():
        params = {"num_classes": 3} if defense_name == "deepsight" else {}
        strategy = getattr(bridge, cls_name)(_model(), fedavg_kwargs={"min_available_nodes": 5}, **params)
        assert strategy.defense.name == defense_name and strategy.min_available_nodes == 5
    assert FoolsGoldStrategy(_model(), kappa=2.0).defense.kappa == 2.0
    assert FedGradStrategy(_model(), switch_round=3).defense.switch_round == 3


def test_fedgrad_finds_the_ultimate_layer_of_an_ordered_list():
    # Prepare: unnamed arrays map to the state dict's keys by position
    template = _model().state_dict()
    record = ArrayRecord([v.numpy() + 1.0 for v in template.values()])
    # Execute
    state = arrays_to_state(record, template)
    # Assert
    assert list(state) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert torch.equal(state["2.bias"], template["2.bias"] + 1.0)
    from fedgrad_core.defenses.fedgrad import find_ultimate_layer

    assert find_ultimate_layer(state) == ("2.weight", "2.bias")
    assert list(state_to_arrays(state).keys()) == list(template)


def test_array_count_or_shape_mismatch_names_the_array():
    template = _model().state_dict()
    with pytest.raises(ValueError, match="holds 3 arrays, the model's state dict 4"):
        arrays_to_state(ArrayRecord([v.numpy() for v in list(template.values())[:3]]), template)
    wrong = [v.numpy() for v in template.values()]
    wrong[2] = np.zeros((5, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"array 2 \(model key '2.weight'\) has shape \(5, 3\)"):
        arrays_to_state(ArrayRecord(wrong), template)


def test_a_ready_defense_takes_no_params_and_aggregation_needs_a_global_model():
    with pytest.raises(ValueError, match="already built"):
        DefenseStrategy(make_defense("krum"), {"f": 1}, template=_model())
    strategy = FedGradStrategy(_model(), switch_round=2)
    state = _model().state_dict()
    with pytest.raises(RuntimeError, match="no global model"):
        strategy.aggregate_train(1, [_reply(n, state, 10) for n in NODES])


# --------------------------------------------------------------------------- our Krum and Flower's


def compare_krum(seed: int, spread: float, *, k: int = 10, f: int = 2, m: int = 6) -> dict:
    """Our Krum and Multi-Krum (KrumStrategy, MultiKrumStrategy) and Flower's own (``Krum``,
    ``MultiKrum`` of ``flwr.serverapp.strategy``) on the same k replies: a global model with N(0, 1)
    weights (the digits MLP's shapes), k - f clients at N(0, spread^2) around it and f at 20 times
    that.  Returns the largest difference of the aggregates and whether Flower's selection rule,
    evaluated in float64, picks the client our Krum picks."""
    from flwr.serverapp.strategy import Krum, MultiKrum

    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    template = _digits_model().state_dict()
    global_state = {n: torch.randn(v.shape, generator=generator) for n, v in template.items()}
    nodes = [int(x) for x in rng.integers(1, 2**63, size=k)]
    counts = [int(c) for c in rng.integers(10, 100, size=k)]
    scales = [spread * (20.0 if i < f else 1.0) for i in range(k)]
    states = [{n: v + s * torch.randn(v.shape, generator=generator) for n, v in global_state.items()} for s in scales]
    replies = [_reply(n, s, c) for n, s, c in zip(nodes, states, counts)]
    out = {}
    for label, ours, theirs in (
        ("krum", KrumStrategy(template, f=f), Krum(num_malicious_nodes=f)),
        ("multikrum", MultiKrumStrategy(template, f=f, m=m), MultiKrum(num_malicious_nodes=f, num_nodes_to_select=m)),
    ):
        ours.set_global(global_state)
        a, _ = ours.aggregate_train(1, replies)
        b, _ = theirs.aggregate_train(1, replies)
        sa, sb = arrays_to_state(a, template), arrays_to_state(b, template)
        out[label] = max(float((sa[n] - sb[n]).abs().max()) for n in template)
        if label == "krum":
            # Flower's rule (|x|^2 + |y|^2 - 2 x.y on the raw models, n - f - 2 nearest) in float64
            flat = np.stack([np.concatenate([s[n].numpy().ravel() for n in template]) for s in states])
            flat = flat.astype(np.float64)
            sq = (flat**2).sum(axis=1)
            dist = sq[:, None] + sq[None, :] - 2.0 * flat @ flat.T
            scores = [np.sort(np.delete(row, i))[: k - f - 2].sum() for i, row in enumerate(dist)]
            ours_node = ours.node_id_of(ours.last_aggregate.diagnostics["selected"][0])
            out["float64_same_choice"] = nodes[int(np.argmin(scores))] == ours_node
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_our_krum_and_flowers_agree_when_the_clients_are_well_apart(seed):
    # Prepare / Execute: updates of 0.1 on weights of 1 (float32 resolves the distances)
    result = compare_krum(seed, spread=0.1)
    # Assert: the same client for Krum, the same average up to float32 rounding for Multi-Krum
    assert result["krum"] == 0.0
    assert result["multikrum"] < 1e-5
    assert result["float64_same_choice"]


def test_flowers_krum_differs_only_by_its_float32_distances():
    # Prepare / Execute: updates of 1e-4 on weights of 1: Flower's float32 |x|^2 + |y|^2 - 2 x.y on
    # the raw models cancels to noise, our float64 Gram of the updates does not
    results = [compare_krum(seed, spread=1e-4) for seed in range(4)]
    # Assert: Flower's own rule evaluated in float64 always picks our client
    assert all(r["float64_same_choice"] for r in results)
    assert any(r["krum"] > 0.0 for r in results), "the float32 cancellation should show in some seed"


# --------------------------------------------------------------------------- Flower's simulation engine
# The example of book/flower.md: six nodes train a small MLP on shards of scikit-learn's digits;
# the node with partition id 0 trains on labels all set to 0 and boosts its update (a poisoned
# model every round).  FedGrad's hard filter starts at round SWITCH_ROUND.

NUM_NODES, NUM_ROUNDS, SWITCH_ROUND, BOOST = 6, 3, 2, 5.0
FLAGGED: dict = {}


def _digits_model() -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    generator = torch.Generator().manual_seed(0)  # the same initial model on every call
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.uniform_(-0.1, 0.1, generator=generator)
    return model


def _shard(partition: int):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))[: NUM_NODES * 200]
    part = order[partition::NUM_NODES]
    return torch.tensor(x[part] / 16.0, dtype=torch.float32), torch.tensor(y[part], dtype=torch.int64)


def _client_train(msg, context):
    torch.set_num_threads(1)
    partition = int(context.node_config["partition-id"])
    model = _digits_model()
    keys = list(model.state_dict())
    start = arrays_to_state(msg.content["arrays"], model.state_dict())
    model.load_state_dict(start)
    x, y = _shard(partition)
    poisoned = partition == 0
    if poisoned:
        y = torch.zeros_like(y)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(partition)
    for _ in range(2):
        for batch in torch.randperm(len(y), generator=generator).split(32):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
    state = model.state_dict()
    if poisoned:  # model replacement: boost the malicious change
        state = {k: start[k] + BOOST * (state[k] - start[k]) for k in keys}
    # Flower's classic form: an ordered list of arrays without names
    arrays = ArrayRecord([state[k].numpy() for k in keys])
    # "poisoned" only lets the test find the attacker's node id; the defense never reads it
    metrics = MetricRecord({"num-examples": len(y), "train-loss": float(loss.detach()), "poisoned": int(poisoned)})
    return Message(content=RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


class _WatchedFedGrad(FedGradStrategy):
    """FedGradStrategy that also notes which node says it poisons (the test's ground truth)."""

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        for msg in replies:
            if msg.content["metrics"]["poisoned"]:
                FLAGGED.setdefault("attackers", set()).add(int(msg.metadata.src_node_id))
        return super().aggregate_train(server_round, replies)


def _server_main(grid, context):
    model = _digits_model()
    strategy = _WatchedFedGrad(
        model, switch_round=SWITCH_ROUND, attacker_fraction=0.2,
        fedavg_kwargs={"fraction_evaluate": 0.0, "min_available_nodes": NUM_NODES},
    )
    initial = ArrayRecord([v.numpy() for v in model.state_dict().values()])
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=NUM_ROUNDS)
    FLAGGED["by_round"] = {r: list(m["flagged-node-ids"]) for r, m in result.train_metrics_clientapp.items()}
    FLAGGED["strategy"] = dict(strategy.flagged_history)


def run_digits_example() -> tuple[dict, float]:
    """Run the example on Flower's simulation engine (Ray backend, CPU only); returns what the
    server noted (flagged node ids per round from Flower's logged metrics, the poisoning node ids)
    and the seconds taken."""
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    client_app = ClientApp()
    client_app.train()(_client_train)
    server_app = ServerApp()
    server_app.main()(_server_main)
    FLAGGED.clear()
    pythonpath = os.environ.get("PYTHONPATH")  # Flower's Ray backend rewrites it for its workers
    started = time.perf_counter()
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=NUM_NODES,
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"num_cpus": 2, "num_gpus": 0, "include_dashboard": False},
            },
        )
    finally:
        if pythonpath is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = pythonpath
    return dict(FLAGGED), time.perf_counter() - started


@pytest.mark.slow
def test_fedgrad_excludes_the_poisoning_node_in_flowers_simulation_from_switch_round_on():
    # Prepare / Execute: Flower's own engine, offline, 6 nodes, one sending a poisoned model each round
    noted, seconds = run_digits_example()
    # Assert: one attacker node; flagged in every round from the hard filter's start, as Flower logged it
    (attacker,) = noted["attackers"]
    assert sorted(noted["by_round"]) == list(range(1, NUM_ROUNDS + 1))
    for round_idx in range(SWITCH_ROUND, NUM_ROUNDS + 1):
        flagged = noted["by_round"][round_idx]
        assert attacker in flagged, (round_idx, flagged)
        assert len(flagged) <= NUM_NODES - 2, "honest nodes must still be aggregated"
    assert noted["strategy"] == noted["by_round"]
    print(f"Flower {flwr.__version__}: {NUM_NODES} nodes x {NUM_ROUNDS} rounds in {seconds:.1f} s")


if __name__ == "__main__":
    # python tests/test_flower.py        : the simulated run of book/flower.md
    # python tests/test_flower.py krum   : the Krum comparison table of book/flower.md
    import logging
    import sys

    if sys.argv[1:] == ["krum"]:
        logging.getLogger("flwr").setLevel(logging.WARNING)
        trials = 30
        for spread in (1e-1, 1e-3, 1e-4):
            rows = [compare_krum(seed, spread) for seed in range(trials)]
            for label in ("krum", "multikrum"):
                diffs = [r[label] for r in rows]
                same = sum(d < 1e-5 for d in diffs)
                print(f"| {spread:g} | {label} | {same}/{trials} | {max(diffs):.2g} |", end="")
                print(f" {sum(r['float64_same_choice'] for r in rows)}/{trials} |" if label == "krum" else " |")
    else:
        noted, seconds = run_digits_example()
        print(noted, f"{seconds:.1f} s")
