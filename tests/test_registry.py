"""The registries' plug-in machinery: duplicates, unregistering, entry points, FEDGRAD_PLUGINS,
broken plug-ins, and a plain aggregation function registered as a defense (fast unit tests)."""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import re
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch

from fedgrad_core import ExperimentConfig
from fedgrad_core.cli import main
from fedgrad_core.config import validate
from fedgrad_core.defenses import Aggregate, ClientUpdate, available_defenses, make_defense, register
from fedgrad_core.defenses.base import REGISTRY, accepted_params, build_defense
from fedgrad_core.defenses.function import FunctionDefense, is_aggregation_rule
from fedgrad_core.registry import PluginWarning, Registry

GROUP = "fedgrad_core.defenses"


def fake_entry_points(monkeypatch, *entries: tuple[str, str]) -> None:
    """``importlib.metadata.entry_points`` answers ``entries`` (name, value) for the defenses' group."""
    eps = [importlib.metadata.EntryPoint(name, value, GROUP) for name, value in entries]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: eps if group == GROUP else [])


def write_module(tmp_path, monkeypatch, name: str, source: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)


# --------------------------------------------------------------------------- the generic registry


def test_duplicate_names_both_sources():
    reg: Registry = Registry("gadget", builtin="json")

    @reg.register("g")
    def first():
        return 1

    def second():
        return 2

    with pytest.raises(ValueError) as err:
        reg.register("g")(second)
    message = str(err.value)
    assert "gadget 'g' is registered twice" in message
    assert f"{__name__}.test_duplicate_names_both_sources.<locals>.first" in message
    assert f"{__name__}.test_duplicate_names_both_sources.<locals>.second" in message
    assert reg.make("g") == 1  # the first registration stays


def test_unregister_and_registered_context():
    reg: Registry = Registry("gadget", builtin="json")
    with reg.registered("tmp", lambda *, x=3: x * 2) as factory:
        assert reg.names() == ["tmp"] and factory(x=4) == 8
        assert reg.make("tmp", x=5) == 10
    assert reg.names() == []
    with pytest.raises(ValueError, match="cannot unregister gadget 'tmp': it is not registered"):
        reg.unregister("tmp")
    with pytest.raises(ValueError, match="unknown gadget 'tmp'; choose one of \\[\\]"):
        reg.make("tmp")


def test_registered_context_unregisters_after_an_error():
    reg: Registry = Registry("gadget", builtin="json")
    with pytest.raises(RuntimeError):
        with reg.registered("tmp", dict):
            raise RuntimeError("inside")
    assert reg.names() == []


def test_bad_names_and_objects_are_refused():
    reg: Registry = Registry("gadget", builtin="json")
    with pytest.raises(ValueError, match="non-empty string name"):
        reg.register("")(dict)
    with pytest.raises(TypeError, match="is not callable"):
        reg.add("x", 42)


def test_entry_point_groups_by_kind():
    assert Registry("defense", builtin="json").group == "fedgrad_core.defenses"
    assert Registry("attack", builtin="json").group == "fedgrad_core.attacks"
    assert Registry("data set", builtin="json").group == "fedgrad_core.datasets"
    assert Registry("model", builtin="json").group == "fedgrad_core.models"
    assert Registry("gadget", builtin="json").group is None


# --------------------------------------------------------------------------- plug-ins of the defenses


def test_entry_point_plugin_is_a_valid_name(tmp_path, monkeypatch, capsys, clean_defenses):
    # Prepare: an "installed" package whose entry point names a plain aggregation function.
    write_module(tmp_path, monkeypatch, "fedgrad_ep_plugin", """
        from fedgrad_core.defenses import Aggregate

        def first_client(global_state, updates, round_idx, *, pick=0):
            return Aggregate(dict(updates[pick].state))
    """)
    fake_entry_points(monkeypatch, ("first_client", "fedgrad_ep_plugin:first_client"))

    # Execute
    REGISTRY.reload_plugins()

    # Assert: a valid name everywhere names are checked, with its source and its parameter.
    assert "first_client" in available_defenses()
    validate(ExperimentConfig(defense="first_client", defense_params={"pick": 1}))
    assert accepted_params("first_client") == {"pick"}
    assert "fedgrad_ep_plugin.first_client" in REGISTRY.source("first_client")
    assert "entry point 'first_client'" in REGISTRY.source("first_client")
    assert main(["list"]) == 0
    listed = dict(re.findall(r"^  (\S+)  +(.*)$", capsys.readouterr().out.split("defenses:")[1], re.MULTILINE))
    assert listed["first_client"] == "(no description)"  # neither the function nor its module has a docstring


def test_entry_point_module_registers_with_the_decorator(tmp_path, monkeypatch, clean_defenses):
    write_module(tmp_path, monkeypatch, "fedgrad_ep_module", """
        from fedgrad_core.defenses import Aggregate, register

        @register("via_module")
        def via_module(global_state, updates, round_idx):
            return Aggregate(dict(global_state))
    """)
    fake_entry_points(monkeypatch, ("anything", "fedgrad_ep_module"))
    REGISTRY.reload_plugins()
    assert "via_module" in available_defenses() and "anything" not in available_defenses()
    assert "from entry point 'anything'" in REGISTRY.source("via_module")


def test_broken_plugin_is_reported_and_builtins_work(tmp_path, monkeypatch, clean_defenses):
    # Prepare: one plug-in that is not installed, one that registers a name and then fails.
    write_module(tmp_path, monkeypatch, "fedgrad_half_broken", """
        from fedgrad_core.defenses import Aggregate, register

        @register("half_registered")
        def half(global_state, updates, round_idx):
            return Aggregate(dict(global_state))

        raise RuntimeError("broken on purpose")
    """)
    fake_entry_points(
        monkeypatch, ("missing", "fedgrad_no_such_package_xyz:rule"), ("half", "fedgrad_half_broken")
    )
    errors_before = len(REGISTRY.plugin_errors)

    # Execute
    with pytest.warns(PluginWarning) as caught:
        REGISTRY.reload_plugins()

    # Assert: both named with their errors; nothing half-registered; the built-ins still build.
    messages = [str(w.message) for w in caught]
    assert any("'missing'" in m and "ModuleNotFoundError" in m and "fedgrad_no_such_package_xyz" in m for m in messages)
    assert any("'half'" in m and "RuntimeError: broken on purpose" in m for m in messages)
    assert len(REGISTRY.plugin_errors) == errors_before + 2
    assert "half_registered" not in available_defenses()
    assert {"fedavg", "fedgrad", "krum"} <= set(available_defenses())
    assert make_defense("fedavg").name == "fedavg"


def test_plugin_taking_a_builtin_name_is_reported_with_both_sources(tmp_path, monkeypatch, clean_defenses):
    write_module(tmp_path, monkeypatch, "fedgrad_clash", """
        def fedavg(global_state, updates, round_idx):
            raise AssertionError("never called")
    """)
    fake_entry_points(monkeypatch, ("fedavg", "fedgrad_clash:fedavg"))
    with pytest.warns(PluginWarning, match="registered twice") as caught:
        REGISTRY.reload_plugins()
    message = str(caught[0].message)
    assert "fedgrad_core.defenses.fedavg.FedAvg" in message and "fedgrad_clash.fedavg" in message
    assert isinstance(make_defense("fedavg"), type(make_defense("fedavg")))
    assert REGISTRY.source("fedavg") == "fedgrad_core.defenses.fedavg.FedAvg"


def test_fedgrad_plugins_environment_variable(tmp_path, monkeypatch, clean_defenses):
    write_module(tmp_path, monkeypatch, "fedgrad_env_plugin", """
        from fedgrad_core.defenses import Aggregate, register

        @register("from_env")
        def from_env(global_state, updates, round_idx):
            return Aggregate(dict(global_state))
    """)
    fake_entry_points(monkeypatch)
    monkeypatch.setenv("FEDGRAD_PLUGINS", " fedgrad_env_plugin , ")
    REGISTRY.reload_plugins()
    assert "from_env" in available_defenses()
    assert "FEDGRAD_PLUGINS" in REGISTRY.source("from_env")


# --------------------------------------------------------------------------- plain functions as defenses


def test_plain_function_runs_behind_the_nan_guard(clean_defenses):
    # Prepare: a non-zero global model, unequal values, one client sending inf.
    seen: list[list[int]] = []

    @register("mean_flag_top")
    def rule(global_state, updates, round_idx, *, scale=1.0):
        seen.append([u.client_id for u in updates])
        mean = torch.stack([u.state["w"] for u in updates]).mean(dim=0) * scale
        top = max(updates, key=lambda u: float(u.state["w"][0])).client_id
        return SimpleNamespace(global_state={"w": mean}, flagged=[top])  # no diagnostics

    g = {"w": torch.tensor([1.0, 2.0])}
    updates = [
        ClientUpdate(0, {"w": torch.tensor([3.0, 4.0])}, 10),
        ClientUpdate(1, {"w": torch.tensor([5.0, 7.0])}, 30),
        ClientUpdate(9, {"w": torch.tensor([float("inf"), 0.0])}, 10),
    ]

    # Execute
    defense = make_defense("mean_flag_top", scale=0.5)
    out = defense.aggregate(g, updates, round_idx=3)

    # Assert: the rule never saw client 9; (3+5)/2 * 0.5 = 2, (4+7)/2 * 0.5 = 2.75.
    assert isinstance(defense, FunctionDefense) and defense.name == "mean_flag_top"
    assert seen == [[0, 1]]
    assert torch.equal(out.global_state["w"], torch.tensor([2.0, 2.75]))
    assert out.flagged == frozenset({1, 9})
    assert out.diagnostics == {"non_finite": [9]}
    assert defense.state_dict() == {}


def test_plain_function_parameters_and_context(clean_defenses):
    @register("with_seed")
    def rule(global_state, updates, round_idx, threshold=0.5, *, seed):
        return Aggregate(dict(global_state), diagnostics={"seed": seed, "threshold": threshold})

    assert accepted_params("with_seed") == {"threshold", "seed"}
    with pytest.raises(ValueError, match="has no parameter\\(s\\) \\['eps'\\]; it accepts \\['seed', 'threshold'\\]"):
        make_defense("with_seed", eps=1)
    defense = build_defense("with_seed", {"threshold": 0.25}, {"seed": 7, "num_classes": 10})
    g = {"w": torch.tensor([1.5])}
    out = defense.aggregate(g, [ClientUpdate(0, {"w": torch.tensor([2.0])}, 1)], 1)
    assert out.diagnostics == {"seed": 7, "threshold": 0.25}


def test_plain_function_must_return_an_aggregate_like_object(clean_defenses):
    @register("returns_dict")
    def rule(global_state, updates, round_idx):
        return dict(global_state)

    @register("drops_a_key")
    def rule2(global_state, updates, round_idx):
        return Aggregate({})

    g = {"w": torch.tensor([1.0])}
    ups = [ClientUpdate(0, {"w": torch.tensor([2.0])}, 1)]
    with pytest.raises(TypeError, match="'returns_dict' returned a dict without \\['global_state', 'flagged'\\]"):
        make_defense("returns_dict").aggregate(g, ups, 1)
    with pytest.raises(ValueError, match="'drops_a_key' returned a global model whose keys differ .*missing \\['w'\\]"):
        make_defense("drops_a_key").aggregate(g, ups, 1)


def test_which_objects_count_as_aggregation_rules():
    class Cls:
        def __init__(self, a, b, c):
            pass

    def factory(*, eps=1.0):
        pass

    def two(a, b):
        pass

    def defaulted(a, b, c=1):
        pass

    def first_defaulted(a, b=1, c=1):
        pass

    def keyword_factory(*, seed, attacker_fraction, eps=1.0):
        pass

    assert is_aggregation_rule(lambda g, u, r: None)
    assert is_aggregation_rule(defaulted)  # rule(global_state, updates, round_idx=None)
    assert not is_aggregation_rule(Cls)
    assert not is_aggregation_rule(factory)
    assert not is_aggregation_rule(keyword_factory)
    assert not is_aggregation_rule(two)
    assert not is_aggregation_rule(first_defaulted)


def test_a_rule_with_a_default_round_index_is_a_rule_not_a_factory(clean_defenses):
    # A plug-in author's median with round_idx=None was once taken for a factory, and failed at
    # the first round with "missing 2 required positional arguments".
    seen = []

    @register("median_default_round")
    def median(global_state, updates, round_idx=None, trim=0):
        seen.append((round_idx, trim))
        stacked = {k: torch.stack([u.state[k] for u in updates]) for k in global_state}
        return Aggregate({k: v.median(dim=0).values for k, v in stacked.items()})

    assert accepted_params("median_default_round") == {"trim"}
    g = {"w": torch.tensor([0.0])}
    ups = [ClientUpdate(i, {"w": torch.tensor([float(v)])}, 1) for i, v in enumerate([1, 2, 9])]
    out = build_defense("median_default_round", {"trim": 1}, {"seed": 0}).aggregate(g, ups, 3)
    assert out.global_state["w"].item() == 2.0 and seen == [(3, 1)]
    validate(ExperimentConfig(defense="median_default_round", defense_params={"trim": 1}))


def test_plain_function_receives_the_round_index(clean_defenses):
    @register("echo_round")
    def rule(global_state, updates, round_idx):
        return Aggregate(dict(global_state), diagnostics={"round": round_idx})

    g = {"w": torch.tensor([1.0])}
    out = make_defense("echo_round").aggregate(g, [ClientUpdate(0, {"w": torch.tensor([2.0])}, 1)], round_idx=4)
    assert out.diagnostics == {"round": 4}


def test_plain_function_error_messages_in_full(clean_defenses):
    # Prepare: a rule returning a dict, one whose model has 4 missing and 4 unexpected keys (the
    # message names the first 3 of each, sorted), and one whose diagnostics are a list
    @register("returns_none")
    def rule(global_state, updates, round_idx):
        return None

    @register("wrong_keys")
    def rule2(global_state, updates, round_idx):
        return Aggregate({k: torch.zeros(1) for k in ("x", "y", "z", "zz")})

    @register("list_diagnostics")
    def rule3(global_state, updates, round_idx):
        return SimpleNamespace(global_state=dict(global_state), flagged=[], diagnostics=["a"])

    g = {k: torch.tensor([1.0]) for k in ("a", "b", "c", "d")}
    ups = [ClientUpdate(0, {k: torch.tensor([2.0]) for k in g}, 1)]
    # Execute / Assert
    with pytest.raises(TypeError) as err:
        make_defense("returns_none").aggregate(g, ups, 1)
    assert str(err.value) == (
        "defense 'returns_none' returned a NoneType without ['global_state', 'flagged']; return an "
        "Aggregate (fedgrad_core.defenses.Aggregate) or an object with .global_state and .flagged"
    )
    with pytest.raises(ValueError) as err:
        make_defense("wrong_keys").aggregate(g, ups, 1)
    assert str(err.value).endswith("(missing ['a', 'b', 'c'], unexpected ['x', 'y', 'z'])")
    with pytest.raises(TypeError) as err:
        make_defense("list_diagnostics").aggregate(g, ups, 1)
    assert str(err.value) == "defense 'list_diagnostics': diagnostics must be a dict, got list"


def test_plain_function_factory_signature_and_names(clean_defenses):
    # Prepare: a rule with a positional-or-keyword parameter and **options, and a functools.partial
    # (no __name__) registered under another name
    def rule(global_state, updates, round_idx, threshold=0.5, **options):
        """Echo the parameters."""
        return Aggregate(dict(global_state), diagnostics={"threshold": threshold, **options})

    def scaled(global_state, updates, round_idx, *, scale):
        return Aggregate({k: v * scale for k, v in global_state.items()})

    register("with_options")(rule)
    register("partial_rule")(functools.partial(scaled, scale=2.0))
    # Execute
    factory = REGISTRY.factory("with_options")
    params = inspect.signature(factory).parameters
    # Assert: the extra parameters are keyword-only, **options stays a catch-all
    assert [(p.name, p.kind) for p in params.values()] == [
        ("threshold", inspect.Parameter.KEYWORD_ONLY), ("options", inspect.Parameter.VAR_KEYWORD)]
    assert inspect.signature(factory).return_annotation is FunctionDefense
    assert accepted_params("with_options") == {"threshold"}
    assert factory.__name__ == "rule" and factory.__qualname__.endswith("rule")
    assert factory.rule is rule and factory.__doc__ == "Echo the parameters."
    g = {"w": torch.tensor([1.5])}
    ups = [ClientUpdate(0, {"w": torch.tensor([2.0])}, 1)]
    out = make_defense("with_options", threshold=0.25, colour="red").aggregate(g, ups, 0)
    assert out.diagnostics == {"threshold": 0.25, "colour": "red"}
    partial_factory = REGISTRY.factory("partial_rule")
    assert partial_factory.__name__ == "partial_rule" and partial_factory.__qualname__ == "partial_rule"
    assert make_defense("partial_rule").aggregate(g, ups, 0).global_state["w"].item() == 3.0


def test_callables_without_a_signature_are_not_aggregation_rules():
    # builtins such as max have no inspectable signature
    assert not is_aggregation_rule(max)
