"""fedgrad_core.pages: what the experiment notebooks share (parameters -> Page -> configs, captions)."""

from __future__ import annotations


import pytest

from fedgrad_core.config import ExperimentConfig
from fedgrad_core.pages import (
    AUTHORS_CODE,
    AUTHORS_CODE_COMMIT,
    AUTHORS_CODE_URL,
    JOINS_ROW,
    PAPER,
    PAPER_COMPONENTS_SETTINGS,
    PAPER_EDGE_CASE_SETTINGS,
    PAPER_NONIID_SETTINGS,
    PAPER_STABILITY_SETTINGS,
    PAPER_TRIGGER_SETTINGS,
    Page,
    display_name,
    parse_injected,
    per_dataset,
)
from fedgrad_core.results import RunResult

#: A notebook's parameters cell at the quick profile of Table 2 (two data sets, per-data-set values).
QUICK = dict(
    profile="quick", datasets=["cifar10", "mnist"], attacks=["blackbox"], seeds=[0, 1], rounds=12, switch_round=3,
    deepsight_noise_samples=500, models={"cifar10": "vgg9_slim", "mnist": "cnn_mnist"},
    num_clients={"cifar10": 500, "mnist": 600}, clients_per_round={"cifar10": 10, "mnist": 10},
    edge_examples={"cifar10": 100, "mnist": None}, local_epochs=2, pretrain_epochs={"cifar10": 6, "mnist": 2},
    eval_every=3, phi=0.5, window=3, executor="sequential", workers=None, out_dir="results/x",
)


def test_parse_injected_turns_papermill_text_back_into_lists_and_dicts():
    # Prepare: what `papermill -p` leaves in the namespace
    ns = {"defenses": '["fedavg", "fedgrad"]', "edge": '{"mnist": null}', "pairs": "[(1, 2), None]",
          "profile": "quick", "_private": "[1]", "rounds": 5}
    # Execute
    parse_injected(ns)
    # Assert: JSON first (null), then Python literals (tuples, None); plain strings and private names untouched
    assert ns == {"defenses": ["fedavg", "fedgrad"], "edge": {"mnist": None}, "pairs": [(1, 2), None],
                  "profile": "quick", "_private": "[1]", "rounds": 5}


def test_parse_injected_names_the_parameter_it_cannot_read():
    with pytest.raises(ValueError, match="parameter 'seeds'"):
        parse_injected({"seeds": "[0, 1"})


def test_per_dataset_reads_a_single_value_or_a_dict():
    assert per_dataset(6, "mnist") == 6
    assert per_dataset({"cifar10": 6, "mnist": 2}, "mnist") == 2
    with pytest.raises(KeyError, match="'emnist'"):
        per_dataset({"mnist": 2}, "emnist")


def test_from_parameters_takes_the_shared_fields_and_ignores_the_page_s_own():
    page = Page.from_parameters(QUICK)
    assert page.rounds == 12 and page.deepsight_noise_samples == 500 and page.executor == "sequential"
    assert not hasattr(page, "attacks") and not hasattr(page, "window")  # the page keeps its own
    # optional fields keep their defaults when a page does not set them
    minimal = {k: v for k, v in QUICK.items() if k not in ("phi", "models", "edge_examples", "deepsight_noise_samples")}
    page = Page.from_parameters(minimal)
    assert page.phi == 0.5 and page.models == {} and page.edge_examples == {} and page.deepsight_noise_samples is None


def test_config_builds_the_run_the_old_notebook_code_built():
    # Prepare
    page = Page.from_parameters(QUICK)
    # Execute
    got = page.config("cifar10", "fedgrad", "pgd", 1, poisoned_data_rate=0.33)
    # Assert: every field as the notebooks set it (a different config would miss the run cache)
    want = ExperimentConfig(
        dataset="cifar10", model="vgg9_slim", num_clients=500, clients_per_round=10, rounds=12, local_epochs=2,
        pretrain_epochs=6, eval_every=3, partition="phi", noniid=0.5, attack="pgd", defense="fedgrad",
        defense_params={"switch_round": 3}, seed=1, attack_params={"num_edge": 100}, poisoned_data_rate=0.33,
    )
    assert got == want


@pytest.mark.parametrize(
    ("defense", "attack", "defense_params", "want_defense", "want_attack"),
    [
        ("deepsight", "blackbox", None, {"num_noise_samples": 500}, {"num_edge": 100}),
        # DBA is not an edge-case attack: no num_edge
        ("fedgrad", "dba", {"use_trust": False}, {"switch_round": 3, "use_trust": False}, {}),
        ("fedgrad", "blackbox", {"switch_round": 7}, {"switch_round": 7}, {"num_edge": 100}),  # explicit params win
        ("krum", "ultimate_mimic", None, {}, {"num_edge": 100}),
        # the page's settings go to whichever defense accepts them, by signature, not by name
        ("fedgrad_plus", "blackbox", None, {"switch_round": 3}, {"num_edge": 100}),
        ("flame", "pgd", None, {}, {"num_edge": 100}),
    ],
)
def test_config_gives_each_defense_and_attack_its_page_parameters(defense, attack, defense_params, want_defense,
                                                                    want_attack):
    got = Page.from_parameters(QUICK).config("cifar10", defense, attack, 0, defense_params)
    assert dict(got.defense_params) == want_defense and dict(got.attack_params) == want_attack


def test_config_leaves_deepsight_and_edge_sizes_at_their_defaults_when_the_page_does_not_set_them():
    page = Page.from_parameters({**QUICK, "deepsight_noise_samples": None})
    got = page.config("mnist", "deepsight", "blackbox", 0)  # mnist: edge_examples None
    assert dict(got.defense_params) == {} and dict(got.attack_params) == {}
    assert got.model == "cnn_mnist" and got.pretrain_epochs == 2 and got.num_clients == 600


def test_settings_note_puts_the_paper_and_the_authors_code_in_their_own_columns():
    # Prepare: the paper states K and rounds; only the authors' code sets N; nobody pretraining epochs
    page = Page.from_parameters({**QUICK, "datasets": ["cifar10"]})
    stated = {"clients per round K": 10, "rounds": 1000, "PDR": 0.33}
    paper = {"cifar10": {PAPER: stated, AUTHORS_CODE: {"clients N": 200}}}
    # Execute
    note = page.settings_note(paper, {"cifar10": {"PDR": 0.33}})
    # Assert
    rows = {line.split(" | ")[0].strip("| "): line for line in note.splitlines() if line.startswith("| ")}
    assert rows["rounds"] == "| rounds | **12** | 1000 | – |"
    assert rows["clients per round K"] == "| clients per round K | 10 | 10 | – |"
    assert rows["clients N"] == "| clients N | **500** | – | 200 |"  # bold against the code's value
    assert rows["pretraining epochs"] == "| pretraining epochs | 6 | – | – |"
    assert rows["PDR"] == "| PDR | 0.33 | 0.33 | – |"
    # derived: rounds x K / N, ours 12 x 10 / 500; the reference 1000 x 10 / 200 in the code's column
    assert rows[JOINS_ROW] == f"| {JOINS_ROW} | **0.24** | – | 50 |"
    assert "profile `quick`" in note
    assert "| CIFAR-10: this page | CIFAR-10: the paper | CIFAR-10: the authors' code |" in note
    assert f"{AUTHORS_CODE_URL}) (commit {AUTHORS_CODE_COMMIT})" in note


def test_settings_note_keeps_an_unsourced_table_in_one_column_not_headed_the_paper():
    page = Page.from_parameters({**QUICK, "datasets": ["cifar10"]})
    note = page.settings_note({"cifar10": {"clients N": 200, "rounds": 100}})
    assert "| CIFAR-10: this page | CIFAR-10: the paper or the authors' code |" in note
    assert "| clients N | **500** | 200 |" in note


def test_reference_tables_hold_only_what_the_paper_states_in_its_column():
    # section 5.1: K = 10 / 20 / 30 for CIFAR-10 / MNIST / EMNIST; N, edge-case set sizes, DeepSight's
    # noise inputs and the switch round come from the authors' code, seeds from nowhere
    tables = [
        PAPER_EDGE_CASE_SETTINGS,
        PAPER_TRIGGER_SETTINGS,
        PAPER_COMPONENTS_SETTINGS,
        PAPER_STABILITY_SETTINGS,
        PAPER_NONIID_SETTINGS,
    ]
    code_only = {"clients N", "edge-case examples", "DeepSight noise inputs per seed", "FedGrad switch_round", "seeds"}
    k_of = {"CIFAR-10": 10, "MNIST": 20, "EMNIST": 30}
    for table in tables:
        for sources in table.values():
            assert set(sources) == {PAPER, AUTHORS_CODE}
            stated = sources[PAPER]
            assert stated["clients per round K"] == k_of[stated["data set"]]
            assert not code_only & set(stated)
    assert PAPER_TRIGGER_SETTINGS["mnist"][AUTHORS_CODE]["clients per round K"] == 10
    assert PAPER_COMPONENTS_SETTINGS["cifar10"][PAPER]["rounds"] == 100


def test_expected_joins_per_client_of_the_papers_settings():
    page = Page.from_parameters({**QUICK, "datasets": ["cifar10", "mnist"]})
    note = page.settings_note(PAPER_EDGE_CASE_SETTINGS)
    row = next(line for line in note.splitlines() if line.startswith(f"| {JOINS_ROW}"))
    # 1,000 x 10 / 200 = 50 (CIFAR-10); 1,000 x 30 / 3,383 = 8.87 (EMNIST)
    assert row.split(" | ")[3] == "50" and row.split(" | ")[6].rstrip(" |") == "8.87"


def test_caption_is_the_provenance_line_of_every_run_in_italics():
    page = Page.from_parameters(QUICK)
    meta = {"data_source": "offline copy", "hardware": "cpu-x", "device": "cpu", "git_commit": "0123456789ab"}
    runs = {"a": [RunResult(ExperimentConfig(seed=0), [], meta)], "b": [RunResult(ExperimentConfig(seed=4), [], meta)]}
    assert page.caption(runs) == (
        "*Measured: profile quick, seeds [0, 4], data offline copy, hardware cpu-x [cpu], commit 01234567.*"
    )
    assert page.caption(runs["a"]).startswith("*Measured: profile quick, seeds [0],")


def test_show_caption_and_settings_note_display_the_markdown_they_return(monkeypatch):
    # Prepare: capture what the notebook would display
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj.data))
    page = Page.from_parameters(QUICK)
    runs = [RunResult(ExperimentConfig(seed=1), [], {"git_commit": "abcdef012345"})]
    paper = {"cifar10": {"rounds": 1000}, "mnist": {"rounds": 500}}
    # Execute
    page.show_caption(runs)
    page.show_settings_note(paper)
    # Assert
    assert shown == [page.caption(runs), page.settings_note(paper)]


def test_display_names_are_the_readers_names():
    assert display_name("pgd_mr") == "PGD + MR" and display_name("mnist") == "MNIST"
    assert display_name("my_new_defense") == "my_new_defense"


def test_config_takes_subsamples_per_data_set_and_one_pretrain_seed_for_every_run_seed():
    page = Page.from_parameters(
        {**QUICK, "train_samples": {"cifar10": 5000, "mnist": 3000}, "eval_samples": 2000, "pretrain_seed": 0}
    )
    cifar, mnist = page.config("cifar10", "fedgrad", "blackbox", 2), page.config("mnist", "fedavg", "pgd", 1)
    assert (cifar.train_samples, cifar.eval_samples, cifar.pretraining_seed, cifar.seed) == (5000, 2000, 0, 2)
    assert (mnist.train_samples, mnist.eval_samples, mnist.pretraining_seed, mnist.seed) == (3000, 2000, 0, 1)
    plain = Page.from_parameters(QUICK).config("mnist", "fedavg", "pgd", 1)
    assert (plain.train_samples, plain.eval_samples, plain.pretraining_seed) == (None, None, 1)
    note = page.settings_note({})
    assert "| training images the clients share | 5000 |" in note and "| pretrained starting models | 1 |" in note
