"""Golden record: every registered defense over a few seeded rounds of digits gives the recorded result.

Each built-in defense plays ``ROUNDS`` rounds of one small digits run (black-box attack, N = 12,
K = 8, one pretraining epoch) through the simulation's round loop; FedGrad switches at round 2, so
its hard filter and trust score act; FedGrad plays again with each of its options (``VARIANTS``).
Per round the test compares with ``tests/golden/defenses.pt``:

- the flagged set, exactly;
- the defense's ``state_dict()``: same keys, types, dtypes and shapes, values to 1e-6;
- the global model: every tensor to 1e-6 after the last round (FedGrad's variants: by sketch).

Where a full record would make the fixture large (every defense's model after every round, and
FoolsGold's history of 12 x 17,226 floats: 2.5 MB and 0.8 MB), a tensor is recorded by a sketch
(sum, sum of absolute values, projection on a fixed random unit vector; per row for a defense's
state) and compared to the bound that tensors equal to 1e-6 give.  A round's model feeds the next round, so a
change that a sketch hides still shows in the later rounds and in the final model.

The record guards refactoring: behaviour must not change.  When a change is *meant* to alter a
defense's result, regenerate the fixture and say why in the commit::

    FEDGRAD_GOLDEN_REGENERATE=1 .venv/bin/python -m pytest -q tests/test_golden_defenses.py

The runs use one CPU thread, so the float sums do not depend on the machine's thread count.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from fedgrad_core import ExperimentConfig
from fedgrad_core.defenses import available_defenses
from fedgrad_core.defenses.base import REGISTRY

GOLDEN = Path(__file__).parent / "golden" / "defenses.pt"
REGENERATE = os.environ.get("FEDGRAD_GOLDEN_REGENERATE") == "1"
ROUNDS = 4
TOL = 1e-6
#: Per-defense parameters beyond the run's context: FedGrad's hard filter and trust act from round 2.
PARAMS: dict[str, dict[str, Any]] = {"fedgrad": {"switch_round": 2}, "fedgrad_plus": {"switch_round": 2}}
BUILTIN = sorted(n for n in available_defenses() if REGISTRY.source(n).startswith("fedgrad_core."))
#: FedGrad's options, each case under its own name: (defense, parameters).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "fedgrad[update,raw,ultimate]": (
        "fedgrad",
        {"switch_round": 2, "gradient": "update", "bias": "raw", "closeness": "ultimate"},
    ),
    "fedgrad[largest_gap,decay]": ("fedgrad", {"switch_round": 2, "soft_threshold": "largest_gap", "trust_decay": 0.8}),
    "fedgrad[strict,no fallback]": (
        "fedgrad",
        {"switch_round": 1, "strict_factor": 0.5, "fallback": "none", "num_attackers_estimate": 2},
    ),
    "fedgrad[hard only]": ("fedgrad", {"switch_round": 2, "use_soft": False, "use_trust": False}),
    "fedgrad[soft only]": ("fedgrad", {"switch_round": 2, "use_hard": False}),
    "fedgrad[named layer,gamma]": (
        "fedgrad",
        {
            "switch_round": 2,
            "ultimate_layer": ("classifier.weight", "classifier.bias"),
            "kmeans_n_init": 3,
            "zeta": 0.3,
            "gamma": 0.6,
            "lambda1": 0.1,
            "lambda2": 0.9,
        },
    ),
}
CASES = {**{name: (name, PARAMS.get(name, {})) for name in BUILTIN}, **VARIANTS}


def config(case: str) -> ExperimentConfig:
    defense, params = CASES[case]
    return ExperimentConfig(
        dataset="digits",
        num_clients=12,
        clients_per_round=8,
        rounds=ROUNDS,
        local_epochs=1,
        attack="blackbox",
        defense=defense,
        defense_params=params,
        pretrain_epochs=1,
        seed=3,
        device="cpu",
    )


#: Tensors of a defense's state with more entries than this are recorded by their sketch.
BIG = 4096


def sketch(tensor: torch.Tensor, *, by_row: bool = False) -> dict[str, Any]:
    """Of the whole tensor, or of every row with ``by_row``, float64: sum, sum of |x|, projection
    on a fixed seeded unit vector."""
    rows = tensor.detach().to(torch.float64).reshape(tensor.shape[0] if by_row and tensor.dim() > 1 else 1, -1)
    direction = torch.randn(rows.shape[1], generator=torch.Generator().manual_seed(rows.shape[1]), dtype=torch.float64)
    direction /= direction.norm().clamp_min(1e-300)
    return {"sketch": torch.stack([rows.sum(1), rows.abs().sum(1), rows @ direction], dim=1), "row": rows.shape[1]}


def recorded(value: Any, *, full: bool) -> Any:
    """``value`` with its tensors copied, or sketched unless ``full`` (and always when BIG)."""
    if isinstance(value, dict):
        return {k: recorded(v, full=full) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(recorded(v, full=full) for v in value)
    if isinstance(value, torch.Tensor):
        return value.detach().clone() if full and value.numel() <= BIG else sketch(value, by_row=True)
    return value


def play(case: str) -> dict[str, Any]:
    """The case's rounds: flagged set, model and defense state after each round."""
    from fedgrad_core import simulation

    cfg = config(case)
    run = simulation.setup_run(cfg, "cpu")
    simulation.load_pretrained(run, cfg, "cpu")
    rounds = []
    for round_idx, record in enumerate(simulation.play_rounds(cfg, run, "cpu", range(1, ROUNDS + 1)), start=1):
        full = round_idx == ROUNDS and case in BUILTIN
        model = {k: (v.detach().clone() if full else sketch(v)) for k, v in run.model.state_dict().items()}
        rounds.append(
            {"flagged": record["flagged"], "model": model, "state": recorded(run.defense.state_dict(), full=True)}
        )
    return {"rounds": rounds}


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def golden(tmp_path_factory, one_thread) -> dict[str, Any]:
    if REGENERATE:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("FEDGRAD_CACHE", str(tmp_path_factory.mktemp("cache")))
            record = {case: play(case) for case in CASES}
        GOLDEN.parent.mkdir(exist_ok=True)
        torch.save(record, GOLDEN)
    return torch.load(GOLDEN, weights_only=True)


def assert_same(got: Any, want: Any, where: str) -> None:
    """Same structure and types; tensors of the same dtype and shape, equal to TOL."""
    assert type(got) is type(want), f"{where}: {type(got).__name__} != {type(want).__name__}"
    if isinstance(want, dict) and set(want) == {"sketch", "row"}:
        # rows equal to TOL: sums within row * TOL, the unit projection within sqrt(row) * TOL
        assert got["row"] == want["row"], f"{where}: row length {got['row']} != {want['row']}"
        n = want["row"]
        bound = torch.tensor([n, n, n**0.5], dtype=torch.float64) * TOL
        assert got["sketch"].shape == want["sketch"].shape, f"{where}: sketch shape"
        assert ((got["sketch"] - want["sketch"]).abs() <= bound).all(), f"{where}: sketches differ"
    elif isinstance(want, dict):
        assert list(got) == list(want), f"{where}: keys {list(got)} != {list(want)}"
        for key in want:
            assert_same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), f"{where}: length {len(got)} != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype and got.shape == want.shape, f"{where}: {got.dtype}{tuple(got.shape)}"
        torch.testing.assert_close(got, want, rtol=0, atol=TOL, msg=lambda m: f"{where}: {m}")
    elif isinstance(want, float):
        assert abs(got - want) <= TOL, f"{where}: {got} != {want}"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def test_the_record_covers_every_builtin_defense(golden):
    assert set(BUILTIN) <= set(CASES) and sorted(golden) == sorted(CASES)


@pytest.mark.parametrize("case", list(CASES))
def test_defense_gives_the_recorded_rounds(case, golden, tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("FEDGRAD_CACHE", str(tmp_path))
    got, want = play(case), golden[case]

    assert len(got["rounds"]) == len(want["rounds"]) == ROUNDS
    for r, (g, w) in enumerate(zip(got["rounds"], want["rounds"]), start=1):
        assert g["flagged"] == w["flagged"], f"{case} round {r}: flagged {g['flagged']} != {w['flagged']}"
        assert_same(g["state"], w["state"], f"{case} round {r} state")
        assert_same(g["model"], w["model"], f"{case} round {r} model")
