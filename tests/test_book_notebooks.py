"""The book's theory notebooks follow the notebook conventions, and run at the smoke profile.

Conventions: a ``parameters`` cell of flat, commented ``name = value`` lines including ``profile``
(papermill overrides them); profiles set only names of that cell; every plotting cell is
collapsed (``hide-input``); results are written with provenance.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
THEORY = ["prop1_ultimate_gradient", "fig3_4_byclass_similarity", "fig10_similarity_convergence"]
PROFILES = json.loads((NOTEBOOKS / "profiles.json").read_text())


def _cells(name: str) -> list[dict]:
    return json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _parameters(name: str) -> dict[str, object]:
    cells = [c for c in _cells(name) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{name}: expected one cell tagged 'parameters', found {len(cells)}"
    values = {}
    for line in _source(cells[0]).splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        assert "#" in line, f"{name}: parameter line without a comment: {line!r}"
        tree = ast.parse(line.split("  #", 1)[0])
        (assign,) = tree.body  # one flat assignment per line
        assert isinstance(assign, ast.Assign) and isinstance(assign.targets[0], ast.Name), line
        values[assign.targets[0].id] = ast.literal_eval(assign.value)
    return values


@pytest.mark.parametrize("name", THEORY)
def test_parameters_cell_is_flat_and_commented(name):
    params = _parameters(name)
    assert params["profile"] == "smoke"
    assert "out_dir" in params and str(params["out_dir"]).startswith("results/")


@pytest.mark.parametrize("profile", ["smoke", "quick", "paper"])
@pytest.mark.parametrize("name", THEORY)
def test_profiles_set_only_existing_parameters(name, profile):
    given = PROFILES[profile].get(name)
    assert given is not None, f"profile {profile} has no entry for {name}"
    unknown = sorted(set(given) - set(_parameters(name)))
    assert not unknown, f"profile {profile} sets {unknown}, which {name}'s parameters cell does not have"


@pytest.mark.parametrize("name", THEORY)
def test_plotting_cells_are_collapsed(name):
    for cell in _cells(name):
        if cell["cell_type"] == "code" and ("plt." in _source(cell) or "sns." in _source(cell)):
            assert "hide-input" in cell.get("metadata", {}).get("tags", []), _source(cell)[:80]


@pytest.mark.parametrize("name", THEORY)
def test_describes_the_papers_figure(name):
    text = " ".join(_source(c) for c in _cells(name) if c["cell_type"] == "markdown")
    assert "The paper's" in text or "the paper's" in text


@pytest.mark.slow
@pytest.mark.parametrize("name", ["prop1_ultimate_gradient", "fig10_similarity_convergence"])
def test_runs_with_overrides_and_records_provenance(name, tmp_path):
    # Prepare: the smoke profile, made smaller, results into a temporary folder
    papermill = pytest.importorskip("papermill", reason="papermill comes with the book extra")
    params = {"profile": "smoke-test", **PROFILES["smoke"][name], "out_dir": str(tmp_path / "results")}
    if name == "fig10_similarity_convergence":
        params.update(totals=[20, 40], rates=[0.2, 0.5, 1.0], repetitions=5, pair_totals=[20], pair_repetitions=3)
    else:
        params.update(pretrain_epochs=1, local_epochs=1)
    # Execute
    papermill.execute_notebook(
        str(NOTEBOOKS / f"{name}.ipynb"), str(tmp_path / f"{name}.ipynb"), parameters=params,
        kernel_name="python3", cwd=str(ROOT), progress_bar=False,
    )
    # Assert: one result file, with the overrides and the provenance
    (written,) = (tmp_path / "results").glob("*.json")
    record = json.loads(written.read_text())
    assert record["profile"] == "smoke-test"
    assert {"git_commit", "hardware", "torch_version", "fedgrad_core_version"} <= set(record["meta"])
    if name == "fig10_similarity_convergence":
        assert {r["n"] for r in record["rows"]} == {20, 40}
        assert all(r["bound (Theorem 1)"] >= r["all clients, exact"] for r in record["rows"])
    else:
        assert record["one_step"]["holds"] and record["one_step"]["max_error"] < 1e-12
        assert record["one_class_training"]["plain SGD"]["agreement_w"] == 1.0
