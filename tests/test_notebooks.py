"""The experiment notebooks: parameters agree with notebooks/profiles.json; each runs at the smoke profile.

The smoke runs execute every notebook under papermill on scikit-learn's digits (no downloads), with
one run cache for the whole module, so Figure 6 reuses Table 2's runs as in the book.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
# Every notebook except the quick start and the theory pages (tests/test_book_notebooks.py): a new
# experiment notebook is held to these conventions without editing this list.
NOT_EXPERIMENTS = {"quickstart", "prop1_ultimate_gradient", "fig3_4_byclass_similarity", "fig10_similarity_convergence"}
EXPERIMENTS = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb") if p.stem not in NOT_EXPERIMENTS)
PROFILES = json.loads((NOTEBOOKS / "profiles.json").read_text())
# Values a profile never sets: where the results go and how runs are executed belong to the caller.
NOT_PROFILED = {"profile", "out_dir", "executor", "workers"}


def load(name: str) -> dict:
    return json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())


def parameters(name: str) -> dict:
    """The parameters cell's assignments (literal values) of notebook ``name``."""
    cells = [c for c in load(name)["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{name} must have exactly one cell tagged 'parameters'"
    values = {}
    for node in ast.parse("".join(cells[0]["source"])).body:
        assert isinstance(node, ast.Assign), f"{name}: the parameters cell holds only assignments"
        values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_defaults_are_the_quick_profile(name):
    defaults = parameters(name)
    assert defaults["profile"] == "quick"
    quick = PROFILES["quick"][name]
    assert quick == {k: v for k, v in defaults.items() if k not in NOT_PROFILED}


@pytest.mark.parametrize("profile", ["smoke", "quick", "paper"])
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_profiles_only_set_existing_parameters(name, profile):
    unknown = set(PROFILES[profile][name]) - set(parameters(name))
    assert not unknown, f"profile {profile!r} sets {sorted(unknown)}, which {name}.ipynb does not have"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_parameters_and_plotting_are_collapsed(name):
    cells = load(name)["cells"]
    tagged = [c for c in cells if c["cell_type"] == "code" and "hide-input" in c.get("metadata", {}).get("tags", [])]
    assert any("parameters" in c["metadata"]["tags"] for c in tagged)
    assert all("hide-input" in c.get("metadata", {}).get("tags", []) for c in cells
               if c["cell_type"] == "code" and ("plt.show()" in "".join(c["source"])))
    assert all(not c.get("outputs") for c in cells if c["cell_type"] == "code"), "commit notebooks without outputs"


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("notebook-cache")


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_notebook_runs_at_smoke_profile(name, tmp_path, shared_cache, monkeypatch):
    papermill = pytest.importorskip("papermill", reason="papermill is in the 'book' extra")
    monkeypatch.setenv("FEDGRAD_CACHE", str(shared_cache))
    params = {**PROFILES["smoke"][name], "profile": "smoke", "out_dir": str(tmp_path / "results")}

    papermill.execute_notebook(
        str(NOTEBOOKS / f"{name}.ipynb"), str(tmp_path / f"{name}.ipynb"), parameters=params,
        kernel_name="python3", cwd=str(ROOT), progress_bar=False,
    )

    written = sorted(p.name for p in (tmp_path / "results").iterdir())
    assert f"{name}.csv" in written and f"{name}.json" in written
    executed = json.loads((tmp_path / f"{name}.ipynb").read_text())
    text = json.dumps([c.get("outputs", []) for c in executed["cells"]])
    assert "Measured: profile smoke" in text  # the provenance line is shown
    assert "image/png" in text  # a figure was drawn
    assert os.environ["FEDGRAD_CACHE"] == str(shared_cache)


@pytest.mark.parametrize("profile", ["smoke", "quick", "paper"])
def test_figure6_uses_table2s_runs(profile):
    # Figure 6 draws Table 2's runs from the run cache: every setting that defines a run must agree.
    fig6 = {k: v for k, v in PROFILES[profile]["fig6_ba_over_rounds"].items() if k != "smooth"}
    assert fig6 == PROFILES[profile]["table2_edge_case"]


@pytest.mark.slow
def test_text_overrides_as_papermill_cli_gives_them(tmp_path, shared_cache, monkeypatch):
    # `papermill ... -p defenses '["fedavg", "fedgrad"]'` hands the notebook a string, not a list.
    papermill = pytest.importorskip("papermill", reason="papermill is in the 'book' extra")
    monkeypatch.setenv("FEDGRAD_CACHE", str(shared_cache))
    params = {**PROFILES["smoke"]["table2_edge_case"], "profile": "smoke", "out_dir": str(tmp_path / "results"),
              "defenses": '["fedavg", "fedgrad"]', "seeds": "[0, 1]", "poisoned_data_rate": '{"digits": null}'}

    papermill.execute_notebook(
        str(NOTEBOOKS / "table2_edge_case.ipynb"), str(tmp_path / "out.ipynb"), parameters=params,
        kernel_name="python3", cwd=str(ROOT), progress_bar=False,
    )

    import pandas as pd

    table = pd.read_csv(tmp_path / "results" / "table2_edge_case.csv")
    assert sorted(table["defense"].unique()) == ["fedavg", "fedgrad"]
    assert sorted(table["seed"].unique()) == [0, 1]
