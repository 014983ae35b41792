"""The command line explains itself (run --help, list) and answers bad input with one line and exit 2."""

from __future__ import annotations

import dataclasses
import pickle
import re

import pytest
import torch

from fedgrad_core import ExperimentConfig
from fedgrad_core.checkpoint import CHECKPOINT_VERSION, Checkpoint, save_checkpoint
from fedgrad_core.cli import FIELD_HELP, build_parser, main, where_saved
from fedgrad_core.defenses import Aggregate, available_defenses, register
from fedgrad_core.defenses.base import REGISTRY

#: Small and fast: a run of this configuration takes a few seconds on a CPU.
TINY = ["--rounds", "2", "--num-clients", "6", "--clients-per-round", "3", "--pretrain-epochs", "0", "--quiet"]


def _run_help() -> str:
    return build_parser()._subparsers._group_actions[0].choices["run"].format_help()  # type: ignore[union-attr]


def _option_help(text: str, flag: str) -> str:
    """The help paragraph of ``flag`` in ``fedgrad run --help``, on one line."""
    options = text.split("\noptions:\n", 1)[1]
    match = re.search(rf"^  {re.escape(flag)}\b.*?(?=^  -|\Z)", options, re.MULTILINE | re.DOTALL)
    assert match, f"{flag} is not in the help"
    return " ".join(match.group(0).split())


# --------------------------------------------------------------------------- run --help


def test_every_config_field_has_a_description():
    missing = {f.name for f in dataclasses.fields(ExperimentConfig)} - set(FIELD_HELP)
    assert not missing, f"add these fields to fedgrad_core.cli.FIELD_HELP: {sorted(missing)}"


@pytest.mark.parametrize("flag", ["--" + f.name.replace("_", "-") for f in dataclasses.fields(ExperimentConfig)])
def test_run_help_describes_every_config_option(flag):
    text = _option_help(_run_help(), flag)
    description = re.sub(r"\(default: [^)]*\)$", "", text.split(" ", 2)[2]).strip()
    assert len(description.split()) >= 6, f"{flag}: {text!r}"
    assert "(default: " in text


@pytest.mark.parametrize("flag", ["--out", "--checkpoint-every", "--resume", "--quiet", "--summary-window"])
def test_run_help_describes_the_other_options(flag):
    assert len(_option_help(_run_help(), flag).split()) >= 4


def test_run_help_gives_units_ranges_and_the_papers_symbols():
    text = _run_help()
    assert "N, the total number of clients; an integer >= 1" in _option_help(text, "--num-clients")
    assert "K, the clients the server samples each round" in _option_help(text, "--clients-per-round")
    assert "1 <= K <= N" in _option_help(text, "--clients-per-round")
    pdr = _option_help(text, "--poisoned-data-rate")
    assert "PDR" in pdr and "[0, 1)" in pdr
    assert "epsilon = |C| / N" in _option_help(text, "--attacker-fraction")
    assert "(default: 0.25)" in _option_help(text, "--attacker-fraction")
    assert "'{\"eps\": 2}'" in _option_help(text, "--attack-params")
    assert "(default: {})" in _option_help(text, "--defense-params")
    assert "(default: none)" in _option_help(text, "--poisoned-data-rate")


def test_run_help_lists_the_registered_names_including_plugins(clean_defenses):
    from fedgrad_core.attacks import available_attacks
    from fedgrad_core.data import available_datasets
    from fedgrad_core.models import available_models

    @register("cli_help_plugin")
    def rule(global_state, updates, round_idx):
        return Aggregate(dict(global_state))

    text = _run_help()
    for flag, names in (
        ("--defense", available_defenses()),
        ("--attack", available_attacks()),
        ("--dataset", available_datasets()),
        ("--model", ["auto", *available_models()]),
    ):
        listed = _option_help(text, flag).split("one of: ", 1)[1].split(" (default:")[0].split(", ")
        assert listed == names, flag
    assert "cli_help_plugin" in _option_help(text, "--defense")


# --------------------------------------------------------------------------- list


def _listing(capsys) -> dict[str, dict[str, str]]:
    assert main(["list"]) == 0
    blocks = {}
    for block in capsys.readouterr().out.strip().split("\n\n"):
        title, *lines = block.splitlines()
        blocks[title.rstrip(":")] = dict(re.fullmatch(r"  (\S+)  +(.+)", line).groups() for line in lines)
    return blocks


def test_list_gives_one_line_per_name(capsys):
    from fedgrad_core.attacks import available_attacks
    from fedgrad_core.data import available_datasets
    from fedgrad_core.models import available_models

    blocks = _listing(capsys)
    assert list(blocks) == ["datasets", "models", "defenses", "attacks"]
    assert list(blocks["defenses"]) == available_defenses() and list(blocks["attacks"]) == available_attacks()
    assert list(blocks["datasets"]) == available_datasets() and list(blocks["models"]) == available_models()
    assert blocks["defenses"]["fedavg"].startswith("FedAvg (McMahan et al., AISTATS 2017)")
    assert blocks["attacks"]["none"] == "No attack: every client is honest."
    assert blocks["datasets"]["digits"].startswith("scikit-learn's 8x8 digits")
    for block in blocks.values():
        for name, line in block.items():
            assert 10 <= len(line) <= 100, (name, line)


def test_list_describes_a_plugin_by_its_docstring(clean_defenses, capsys):
    @register("cli_list_plugin")
    def rule(global_state, updates, round_idx):
        """The coordinate-wise median of the updates.  Robust to a minority of outliers."""
        return Aggregate(dict(global_state))

    assert _listing(capsys)["defenses"]["cli_list_plugin"] == "The coordinate-wise median of the updates."


def test_a_long_first_sentence_is_cut_at_a_word(clean_defenses):
    @register("cli_long_plugin")
    def rule(global_state, updates, round_idx):
        """A rule with a very long first sentence that goes on and on, well past the width of one line
        of the listing, and says little."""

    line = REGISTRY.describe("cli_long_plugin", width=60)
    assert len(line) <= 60 and line.endswith("...") and line.startswith("A rule with a very long first")
    assert not line[:-3].endswith(" ")


# --------------------------------------------------------------------------- where the results went


def test_where_saved_names_the_result_and_the_checkpoint():
    assert where_saved(None, None) == "result: not saved (--out FILE saves it)"
    assert where_saved("results/a.json", None) == "result: results/a.json"
    assert where_saved("results/a.json", 5).splitlines() == [
        "result: results/a.json",
        "checkpoint: results/a.json.ckpt (every 5 rounds and after the last; --resume continues from it)",
    ]


@pytest.mark.slow
def test_run_prints_where_the_result_and_the_checkpoint_went(tmp_path, capsys):
    out = tmp_path / "run.json"
    assert main(["run", *TINY, "--out", str(out), "--checkpoint-every", "1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert f"result: {out}" in printed
    assert any(line.startswith(f"checkpoint: {out}.ckpt (every 1 rounds") for line in printed)
    assert out.exists() and (tmp_path / "run.json.ckpt").exists()


# --------------------------------------------------------------------------- bad input: one line, exit 2


def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.count("\n") == 0, err
    assert "Traceback" not in captured.err
    return err


class _WritesAMarker:
    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_resume_from_a_crafted_checkpoint_is_one_line_and_exit_2(tmp_path, capsys, writer):
    marker, out = tmp_path / "ran", tmp_path / "run.json"
    ckpt = tmp_path / "run.json.ckpt"
    payload = {"format": "fedgrad-checkpoint", "version": CHECKPOINT_VERSION, "defense": _WritesAMarker(marker)}
    with ckpt.open("wb") as fh:
        torch.save(payload, fh) if writer == "torch.save" else pickle.dump(payload, fh)

    code = main(["run", *TINY, "--out", str(out), "--resume"])

    err = _one_line_error(capsys)
    assert code == 2
    assert err.startswith(f"fedgrad: error: --resume: checkpoint {ckpt} was refused")
    assert "Nothing in it was run" in err
    assert not marker.exists() and not out.exists()


def test_resume_from_a_file_that_is_not_a_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "run.json"
    (tmp_path / "run.json.ckpt").write_bytes(b"not a checkpoint at all")
    assert main(["run", *TINY, "--out", str(out), "--resume"]) == 2
    err = _one_line_error(capsys)
    assert f"checkpoint {out}.ckpt was refused" in err


def test_resume_from_another_configurations_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "run.json"
    other = ExperimentConfig(rounds=2, num_clients=6, clients_per_round=3, pretrain_epochs=0, seed=7)
    save_checkpoint(tmp_path / "run.json.ckpt", Checkpoint(other.to_dict(), 1, {"w": torch.zeros(1)}, [], {}))
    assert main(["run", *TINY, "--out", str(out), "--resume"]) == 2
    err = _one_line_error(capsys)
    assert f"checkpoint {out}.ckpt was written for a different configuration (seed: 7 -> 0)" in err


def test_non_json_params_are_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--defense-params", "{bad", "--quiet"])
    assert exit_.value.code == 2
    err = _one_line_error(capsys)
    assert err.startswith("fedgrad run: error: argument --defense-params: not valid JSON")
    assert err.endswith("(fedgrad run --help lists the options)")


def test_fedgrad_zeta_out_of_range_is_one_line_and_exit_2(capsys):
    assert main(["run", "--defense", "fedgrad", "--defense-params", "zeta=2", "--quiet"]) == 2
    assert _one_line_error(capsys) == "fedgrad: error: zeta must lie in [0.0, 1.0], got 2"


def test_an_unknown_flag_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--bogus", "3"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --bogus 3" in _one_line_error(capsys)
