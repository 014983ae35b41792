"""CITATION.cff parses, cites the FedGrad paper (IJCNN 2023) and carries the package's version."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

import fedgrad_core

ROOT = Path(__file__).resolve().parents[1]


def load() -> dict:
    return yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))


def test_citation_names_the_paper():
    cff = load()
    paper = cff["preferred-citation"]

    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert paper["title"].startswith("FedGrad: Mitigating Backdoor Attacks in Federated Learning")
    assert paper["type"] == "conference-paper" and paper["year"] == 2023
    assert "International Joint Conference on Neural Networks" in paper["collection-title"]
    assert paper["doi"] == "10.1109/IJCNN54540.2023.10191655"
    first = paper["authors"][0]
    assert (first["family-names"], first["given-names"]) == ("Nguyen", "Thuy Dung")
    assert len(paper["authors"]) == 7
    # the preprint the code follows is listed too, with the same authors (a YAML anchor)
    assert any("2305.00328" in str(ref.get("url")) and ref["authors"] == paper["authors"] for ref in cff["references"])


def test_versions_agree():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    version = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE).group(1)

    assert fedgrad_core.__version__ == version == str(load()["version"])
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(rf"^## \[{re.escape(version)}\]", changelog, re.MULTILINE)
