"""The committed record the site is built from (book/record.py, book/headline.py).

The record is kept honest here: every recorded notebook's source hash must equal the hash of the
same notebook in notebooks/ now (a notebook edited after its recorded run fails this test until
``make book`` and ``make record`` are run again), the recorded copies must be the ones the manifest
describes, the record comes from a real-data profile and stays under 20 MB.  Those checks skip,
with the reason, only while no record is committed (no book/record/manifest.json).  The mechanism
itself is tested on a small hand-made record in a temporary folder.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "book" / "record"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "book" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


record = _load("record")
headline = _load("headline")


# --------------------------------------------------------------------------- a hand-made record


def _cell(kind: str, source: str, tags: list[str] | None = None, outputs: list | None = None) -> dict:
    cell = {"cell_type": kind, "metadata": {"tags": tags} if tags else {}, "source": source}
    if kind == "code":
        cell.update(execution_count=None, outputs=outputs or [])
    return cell


def _source_notebook() -> dict:
    return {"cells": [
        _cell("markdown", "# A page\n\nWhat it shows."),
        _cell("code", 'profile = "smoke"  # p\nseeds = [0]  # s\nout_dir = "results/a"  # o', ["parameters"]),
        _cell("code", "print(1 + 1)"),
    ], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def _executed(source: dict, out_dir: Path) -> dict:
    """What papermill makes of ``source``: injected cell, outputs, its metadata, widget state."""
    nb = json.loads(json.dumps(source))
    injected = _cell("code", f'profile = "quick"\nseeds = [0, 1]\nout_dir = "{out_dir}"\n',
                     ["injected-parameters", "hide-input"])
    nb["cells"].insert(2, injected)
    nb["cells"][3]["outputs"] = [
        {"output_type": "stream", "name": "stdout", "text": "2\n"},
        {"output_type": "display_data", "metadata": {},
         "data": {"text/plain": "w", "application/vnd.jupyter.widget-view+json": {"model_id": "x"}}},
    ]
    nb["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    nb["metadata"]["papermill"] = {
        "parameters": {"profile": "quick", "seeds": [0, 1], "out_dir": str(out_dir)},
        "end_time": "2026-12-06T21:03:04.5", "duration": 12.5, "exception": None,
    }
    return nb


@pytest.fixture
def build(tmp_path):
    """notebooks/ with one notebook, and book/experiments/ as make book leaves it (before stage)."""
    notebooks, executed, results = tmp_path / "notebooks", tmp_path / "experiments", tmp_path / "results" / "a"
    for folder in (notebooks, executed, results):
        folder.mkdir(parents=True)
    source = _source_notebook()
    (notebooks / "a_page.ipynb").write_text(json.dumps(source))
    (executed / "a_page.ipynb").write_text(json.dumps(_executed(source, results)))
    (executed / "timings.json").write_text(json.dumps({
        "profile": "quick", "seconds": {"a_page": 13.1}, "total_seconds": 13.1,
        "runs": {"a_page": {"commit": "0123456789abcdef", "dirty": ["fedgrad_core/x.py"],
                            "code_fingerprint": "feed", "hardware": "Some CPU (2 cores)"}},
    }))
    (executed / "_execution.md").write_text("## Environment\n")
    return notebooks, executed, tmp_path


def _banner(path: Path) -> list[str]:
    cells = json.loads(path.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if record.BANNER_TAG in c["metadata"].get("tags", [])]


def test_source_hash_is_the_notebooks_source_only(tmp_path):
    # Prepare
    source = _source_notebook()
    executed = _executed(source, tmp_path)
    edited = json.loads(json.dumps(source))
    edited["cells"][2]["source"] = "print(1 + 2)"
    retagged = json.loads(json.dumps(source))
    retagged["cells"][2]["metadata"]["tags"] = ["hide-input"]
    # Execute / Assert: outputs, metadata, the injected cell and a banner do not count ...
    assert record.source_hash(executed) == record.source_hash(source)
    with_banner = tmp_path / "nb.ipynb"
    with_banner.write_text(json.dumps(executed))
    record.annotate(with_banner, {"profile": "quick"})
    assert record.source_hash(json.loads(with_banner.read_text())) == record.source_hash(source)
    # ... a changed source or tag does
    assert record.source_hash(edited) != record.source_hash(source)
    assert record.source_hash(retagged) != record.source_hash(source)


def test_parameters_are_the_defaults_overridden_by_papermill(tmp_path):
    executed = _executed(_source_notebook(), tmp_path)
    assert record.default_parameters(executed) == {"profile": "smoke", "seeds": [0], "out_dir": "results/a"}
    assert record.parameters(executed)["seeds"] == [0, 1] and record.parameters(executed)["profile"] == "quick"


def test_stage_save_restore_round_trip(build):
    # Prepare
    notebooks, executed, tmp = build
    (tmp / "results" / "a" / "a_summary.csv").write_text("label,x\nFedGrad,1\n")
    record.RESULT_FILES["a_page"] = ["a_summary.csv"]
    try:
        # Execute: stage (make book), save (make record), restore elsewhere (make site)
        manifest = record.stage(executed)
        assert record.save(executed, tmp / "record", notebooks) == 0
        site = tmp / "site"
        assert record.restore(tmp / "record", site, notebooks) == 0
    finally:
        del record.RESULT_FILES["a_page"]
    # Assert: the manifest names what made the page
    entry = manifest["notebooks"]["a_page"]
    assert entry["profile"] == "quick" and entry["seeds"] == [0, 1] and entry["commit"] == "0123456789abcdef"
    assert entry["hardware"] == "Some CPU (2 cores)" and entry["seconds"] == 13.1 and entry["status"] == "ok"
    assert entry["source_sha256"] == record.source_hash(json.loads((notebooks / "a_page.ipynb").read_text()))
    # the record keeps the outputs, not the banner nor the widget state; and the small files
    kept = json.loads((tmp / "record" / "a_page.ipynb").read_text())
    assert _banner(tmp / "record" / "a_page.ipynb") == []
    assert "widgets" not in kept["metadata"]
    assert kept["cells"][3]["outputs"][1]["data"] == {"text/plain": "w"}
    saved = json.loads((tmp / "record" / "manifest.json").read_text())
    assert {"a_page.ipynb", "timings.json", "_execution.md", "results/a_page/a_summary.csv"} <= set(saved["files"])
    assert saved["recorded"].endswith("Z") and saved["profile"] == "quick"
    # the site's copy has the banner under the title, naming profile, seeds, date, hardware, commit
    (text,) = _banner(site / "a_page.ipynb")
    assert json.loads((site / "a_page.ipynb").read_text())["cells"][1]["metadata"]["tags"] == [record.BANNER_TAG]
    for expected in ["**quick**", "seeds 0, 1", "2026-12-06 21:03 UTC", "Some CPU (2 cores)", "`0123456789`",
                     "`fedgrad_core/x.py`", ":class: note"]:
        assert expected in text, f"{expected!r} not in the banner:\n{text}"
    assert "Stale" not in text
    assert (site / "results" / "a_page" / "a_summary.csv").exists()


def test_a_notebook_edited_after_its_run_is_refused_then_marked(build):
    # Prepare: a record of the current source, then the source changes
    notebooks, executed, tmp = build
    record.stage(executed)
    assert record.save(executed, tmp / "record", notebooks) == 0
    source = json.loads((notebooks / "a_page.ipynb").read_text())
    source["cells"][2]["source"] = "print(2 + 2)"
    (notebooks / "a_page.ipynb").write_text(json.dumps(source))
    # Execute / Assert: make record refuses the stale run and leaves the old record alone ...
    assert record.save(executed, tmp / "record2", notebooks) == 1
    assert not (tmp / "record2").exists()
    assert record.stale(json.loads((tmp / "record" / "manifest.json").read_text()), notebooks) == {
        "a_page": "a_page.ipynb changed after the recorded run"}
    # ... and a site built anyway says so on the page
    assert record.restore(tmp / "record", tmp / "site", notebooks) == 0
    (text,) = _banner(tmp / "site" / "a_page.ipynb")
    assert "**Stale:**" in text and ":class: warning" in text


def test_save_needs_a_staged_build(build, capsys):
    notebooks, executed, tmp = build
    assert record.save(executed, tmp / "record", notebooks) == 2
    assert "run make book first" in capsys.readouterr().err
    assert record.restore(tmp / "nothing", tmp / "site", notebooks) == 2


def test_headline_from_the_summary_and_the_papers_cell(tmp_path):
    # Prepare: a Table 2 summary (fractions) and a notebook with the paper's numbers (%)
    folder = tmp_path / "experiments"
    (folder / "results" / "table2_edge_case").mkdir(parents=True)
    (folder / "results" / "table2_edge_case" / "table2_summary.csv").write_text(
        "label,seeds,best_main_acc,best_backdoor_acc,dataset,attack\n"
        "FedAvg (no defense),2,0.801,0.65,cifar10,blackbox\nKrum,2,0.7,0.1,cifar10,blackbox\n"
        "FedGrad,2,0.8,0.051,cifar10,blackbox\nfedavg,2,0.98,0.9,mnist,pgd\nFedGrad,2,0.97,0.2,mnist,pgd\n"
    )
    paper = ('PAPER = {"cifar10": {"blackbox": {"fedavg": (84.32, 71.43), "fedgrad": (84.62, 5.10)}},\n'
             '         "mnist": {"pgd": {"fedavg": (10.00, 100.0), "fedgrad": (98.83, 8.02)}}}\n'
             'PAPER["emnist"] = PAPER["mnist"]\nMETRICS = []')
    (folder / "table2_edge_case.ipynb").write_text(json.dumps({"cells": [_cell("code", paper)]}))
    (folder / "manifest.json").write_text(json.dumps({"notebooks": {"table2_edge_case": {
        "profile": "quick", "seeds": [0, 1], "commit": "abcdef1234567"}}}))
    out = tmp_path / "headline.md"
    # Execute
    assert headline.main(folder, out) == 0
    text = out.read_text()
    # Assert
    assert headline.paper_numbers(json.loads((folder / "table2_edge_case.ipynb").read_text()))["emnist"]["pgd"]
    assert "| 80.1 / 65.0 | 84.3 / 71.4 | 80.0 / 5.1 | 84.6 / 5.1 |" in text
    assert "| 98.0 / 90.0 | 10.0 / 100.0 | 97.0 / 20.0 | 98.8 / 8.0 |" in text
    assert "(paper: EMNIST)" in text and "{doc}`" in text and "experiments/table2_edge_case>`" in text
    assert "**quick** profile" in text and "2 seeds (0, 1)" in text and "`abcdef1234`" in text
    assert len(re.findall(r"^\| \{doc\}", text, flags=re.M)) == 2  # Krum is not in the headline


def test_headline_without_results_says_how_to_get_them(tmp_path):
    out = tmp_path / "headline.md"
    assert headline.main(tmp_path, out) == 0
    assert "make book" in out.read_text()


# --------------------------------------------------------------------------- the committed record


def _committed_manifest() -> dict:
    if not (RECORD / "manifest.json").exists():
        if RECORD.exists() and any(RECORD.iterdir()):
            pytest.fail(f"{RECORD.relative_to(ROOT)} has files but no manifest.json: make record writes both")
        pytest.skip("no record committed yet (book/record/manifest.json): make book, then make record")
    return json.loads((RECORD / "manifest.json").read_text())


def test_recorded_notebooks_match_the_notebooks_now():
    manifest = _committed_manifest()
    stale = record.stale(manifest)
    assert not stale, ("the site shows runs of notebooks that changed since (rerun make book, then make record):\n"
                       + "\n".join(f"  {name}: {why}" for name, why in sorted(stale.items())))


def test_record_is_what_its_manifest_says():
    manifest = _committed_manifest()
    import hashlib

    for name, entry in manifest["notebooks"].items():
        recorded = json.loads((RECORD / f"{name}.ipynb").read_text())
        assert record.source_hash(recorded) == entry["source_sha256"], f"{name}: the recorded copy was edited"
        assert entry["status"] == "ok", f"{name}: its recorded run did not finish"
        assert entry["profile"] in ("quick", "paper"), f"{name}: profile {entry['profile']} is not a real-data run"
        assert entry["commit"] and entry["hardware"] and entry["finished"], f"{name}: provenance missing"
    for path, digest in manifest["files"].items():
        assert hashlib.sha256((RECORD / path).read_bytes()).hexdigest() == digest, f"{path} changed after make record"
    # every experiment page of the book is in the record
    toc = (ROOT / "book" / "_toc.yml").read_text()
    pages = set(re.findall(r"file:\s*experiments/(\w+)", toc))
    missing = sorted(pages - set(manifest["notebooks"]))
    assert not missing, f"pages without a recorded run: {missing}"


def test_record_is_at_most_20_mb():
    _committed_manifest()
    size = sum(p.stat().st_size for p in RECORD.rglob("*") if p.is_file())
    assert size <= 20e6, f"book/record is {size / 1e6:.1f} MB"
