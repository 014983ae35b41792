"""The committed record of executed notebooks, from which ``make site`` renders the book.

    python book/record.py stage                 # make book: manifest + banners in book/experiments/
    python book/record.py save [--to DIR]       # make record: book/experiments/ -> book/record/
    python book/record.py restore [--from DIR]  # make site: book/record/ -> book/experiments/

``make book`` executes the notebooks (book/run_notebooks.py, which also notes the commit, the
uncommitted changes and the hardware of the run in timings.json), then ``stage`` copies the small
result files a page of the book reads (``RESULT_FILES``) next to the executed notebooks, writes
``manifest.json`` and puts a banner under each page's title naming the profile, seeds, commit,
hardware and date of the run shown.

``save`` copies what the site needs into the record folder (default book/record/, committed): the
executed notebooks (banner and widget state removed), timings.json, _execution.md, the result files
and the manifest.  It refuses a notebook whose source in notebooks/ differs from the source it was
executed from: the record never starts stale.  ``restore`` copies a record back into
book/experiments/ and puts the banners in again, so the site is built from it without data and
without running anything.

Honesty: the manifest holds, per notebook, a hash of its source as executed (cell types, sources
and tags of the code and markdown cells; outputs, the cell papermill injects and the banner left
out).  tests/test_book_record.py recomputes it from notebooks/ and fails when a notebook changed
after its recorded run; ``restore`` checks the same and the banner then says the page is stale.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
EXECUTED = ROOT / "book" / "experiments"
RECORD = ROOT / "book" / "record"
MANIFEST = "manifest.json"
#: Small result files a book page reads, per notebook, relative to its ``out_dir`` parameter.
RESULT_FILES = {"table2_edge_case": ["table2_summary.csv"]}
#: Files of book/experiments/ besides the notebooks that the site needs.
EXTRA_FILES = ["timings.json", "_execution.md"]
BANNER_TAG = "record-provenance"
INJECTED_TAG = "injected-parameters"
#: Output MIME types dropped from a record (interactive widgets do not render offline).
DROPPED_MIME = ("application/vnd.jupyter.widget-view+json", "application/vnd.jupyter.widget-state+json")


# --------------------------------------------------------------------------- notebooks


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell.get("source"), list) else cell.get("source", "")


def _tags(cell: dict) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def source_hash(notebook: dict) -> str:
    """SHA-256 of what a reader of notebooks/ would call the notebook's source.

    Per cell: its type, tags and source.  Left out: outputs, execution counts and other metadata,
    the cell papermill injects (``injected-parameters``) and the banner (``record-provenance``),
    so an executed copy hashes like its source.
    """
    digest = hashlib.sha256()
    for cell in notebook["cells"]:
        tags = _tags(cell)
        if INJECTED_TAG in tags or BANNER_TAG in tags or cell["cell_type"] not in ("code", "markdown"):
            continue
        part = {"type": cell["cell_type"], "tags": sorted(tags), "source": _source(cell)}
        digest.update(json.dumps(part, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _write(path: Path, notebook: dict) -> None:
    path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")


def default_parameters(notebook: dict) -> dict[str, Any]:
    """The literal values of the notebook's ``parameters`` cell (names it cannot read are left out)."""
    for cell in notebook["cells"]:
        if "parameters" in _tags(cell):
            values = {}
            for node in ast.parse(_source(cell)).body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    try:
                        values[node.targets[0].id] = ast.literal_eval(node.value)
                    except ValueError:
                        pass
            return values
    return {}


def parameters(notebook: dict) -> dict[str, Any]:
    """The parameters the notebook ran with: its defaults, overridden by papermill's."""
    injected = notebook.get("metadata", {}).get("papermill", {}).get("parameters", {})
    return {**default_parameters(notebook), **injected}


def strip(notebook: dict) -> dict:
    """The notebook without banner cells and widget state (what a record keeps)."""
    notebook = json.loads(json.dumps(notebook))
    notebook["cells"] = [c for c in notebook["cells"] if BANNER_TAG not in _tags(c)]
    notebook.get("metadata", {}).pop("widgets", None)
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            data = output.get("data")
            if isinstance(data, dict):
                for mime in DROPPED_MIME:
                    data.pop(mime, None)
    return notebook


# --------------------------------------------------------------------------- manifest


def _seeds(params: dict[str, Any]) -> list | None:
    if "seeds" in params:
        return list(params["seeds"])
    if "seed" in params:
        return [params["seed"]]
    return None


def notebook_entry(path: Path, run: dict[str, Any]) -> dict[str, Any]:
    """The manifest's entry for one executed notebook; ``run`` is book/run_notebooks.py's note of
    the commit, changes and hardware (empty when it has none: then those are unknown)."""
    notebook = _read(path)
    params = parameters(notebook)
    papermill = notebook.get("metadata", {}).get("papermill", {})
    return {
        "profile": params.get("profile"),
        "seeds": _seeds(params),
        "out_dir": params.get("out_dir"),
        "commit": run.get("commit"),
        "dirty": run.get("dirty"),
        "code_fingerprint": run.get("code_fingerprint"),
        "hardware": run.get("hardware"),
        "finished": papermill.get("end_time"),
        "seconds": run.get("seconds", papermill.get("duration")),
        "status": "failed" if papermill.get("exception") else ("ok" if papermill.get("end_time") else "incomplete"),
        "source_sha256": source_hash(notebook),
    }


def build_manifest(folder: Path) -> dict[str, Any]:
    """Manifest of the executed notebooks in ``folder`` (with its timings.json, when there)."""
    timings = _read(folder / "timings.json") if (folder / "timings.json").exists() else {}
    runs = timings.get("runs", {})
    seconds = timings.get("seconds", {})
    entries = {}
    for path in sorted(folder.glob("*.ipynb")):
        run = dict(runs.get(path.stem, {}))
        if path.stem in seconds:
            run["seconds"] = seconds[path.stem]
        entries[path.stem] = notebook_entry(path, run)
    profiles = sorted({e["profile"] for e in entries.values() if e["profile"]})
    return {"profile": profiles[0] if len(profiles) == 1 else profiles, "notebooks": entries}


def stale(manifest: dict[str, Any], notebooks: Path = NOTEBOOKS) -> dict[str, str]:
    """Notebooks whose source in ``notebooks`` differs from the recorded one (name -> why)."""
    out = {}
    for name, entry in manifest["notebooks"].items():
        source = notebooks / f"{name}.ipynb"
        if not source.exists():
            out[name] = f"{source.name} is no longer in {notebooks.name}/"
        elif source_hash(_read(source)) != entry["source_sha256"]:
            out[name] = f"{source.name} changed after the recorded run"
    return out


# --------------------------------------------------------------------------- banners


def _commit_text(entry: dict[str, Any]) -> str:
    commit = entry.get("commit")
    if not commit:
        return "commit unknown"
    dirty = entry.get("dirty")
    if dirty is None:
        state = ""
    elif not dirty:
        state = " (no uncommitted changes to the package or the notebooks)"
    else:
        shown = ", ".join(f"`{p}`" for p in dirty[:3]) + (f" and {len(dirty) - 3} more" if len(dirty) > 3 else "")
        state = f" plus uncommitted changes to {shown}"
    return f"commit `{commit[:10]}`{state}"


def banner_text(entry: dict[str, Any], *, stale_reason: str | None = None) -> str:
    seeds = entry.get("seeds")
    seeds_text = "seed " + str(seeds[0]) if seeds and len(seeds) == 1 else (
        "seeds " + ", ".join(map(str, seeds)) if seeds else "no seed parameter")
    finished = (entry.get("finished") or "?")[:16].replace("T", " ")
    seconds = entry.get("seconds")
    took = f" in {seconds / 60:.1f} min" if isinstance(seconds, (int, float)) and seconds >= 60 else (
        f" in {seconds:.0f} s" if isinstance(seconds, (int, float)) else "")
    lines = [
        "```{admonition} The run shown on this page",
        ":class: " + ("warning" if stale_reason else "note"),
        f"Profile **{entry.get('profile') or '?'}** ({seeds_text}), executed {finished} UTC{took} on "
        f"{entry.get('hardware') or 'unknown hardware'}, from {_commit_text(entry)}.  "
        "See {doc}`the reproducibility page </reproducibility>` for the profiles and the command behind it.",
    ]
    if stale_reason:
        lines += ["", f"**Stale:** {stale_reason}; the outputs below come from the earlier source."]
    lines.append("```")
    return "\n".join(lines)


def annotate(path: Path, entry: dict[str, Any], *, stale_reason: str | None = None) -> None:
    """Put (or replace) the banner cell after the notebook's first cell (its title)."""
    notebook = _read(path)
    cells = [c for c in notebook["cells"] if BANNER_TAG not in _tags(c)]
    banner = {"cell_type": "markdown", "id": BANNER_TAG, "metadata": {"tags": [BANNER_TAG]},
              "source": banner_text(entry, stale_reason=stale_reason)}
    at = 1 if cells and cells[0]["cell_type"] == "markdown" else 0
    notebook["cells"] = cells[:at] + [banner] + cells[at:]
    _write(path, notebook)


# --------------------------------------------------------------------------- commands


def _result_files(folder: Path, name: str, entry: dict[str, Any]) -> list[tuple[Path, Path]]:
    """(source, target) of the result files of ``name`` that a page reads."""
    out_dir = entry.get("out_dir")
    pairs = []
    for file in RESULT_FILES.get(name, []):
        if out_dir:
            pairs.append((ROOT / out_dir / file, folder / "results" / name / file))
    return pairs


def stage(folder: Path = EXECUTED) -> dict[str, Any]:
    """After book/run_notebooks.py: result files, manifest and banners in ``folder``."""
    manifest = build_manifest(folder)
    for name, entry in manifest["notebooks"].items():
        for source, target in _result_files(folder, name, entry):
            if source.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
            else:
                print(f"note: {_show(source)} not found (the book's headline leaves it out)")
        annotate(folder / f"{name}.ipynb", entry)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"staged {len(manifest['notebooks'])} notebooks in {_show(folder)} (profile {manifest['profile']})")
    return manifest


def _show(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def save(source: Path = EXECUTED, target: Path = RECORD, notebooks: Path = NOTEBOOKS, limit_mb: float = 20.0) -> int:
    """Copy the staged build in ``source`` into the record folder ``target`` (replacing it)."""
    if not (source / MANIFEST).exists():
        print(f"no {MANIFEST} in {_show(source)}: run make book first", file=sys.stderr)
        return 2
    manifest = build_manifest(source)  # from the notebooks themselves, not trusting the staged copy
    problems = {n: "did not finish" for n, e in manifest["notebooks"].items() if e["status"] != "ok"}
    problems.update(stale(manifest, notebooks))
    if problems:
        print("not recorded, these notebooks need rerunning (make book):", file=sys.stderr)
        for name, why in sorted(problems.items()):
            print(f"  {name}: {why}", file=sys.stderr)
        return 1
    staged = _read(source / MANIFEST)["notebooks"]
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in manifest["notebooks"]:
        _write(target / f"{name}.ipynb", strip(_read(source / f"{name}.ipynb")))
    for file in EXTRA_FILES:
        if (source / file).exists():
            shutil.copyfile(source / file, target / file)
    for name in staged:
        for file in RESULT_FILES.get(name, []):
            path = source / "results" / name / file
            if path.exists():
                (target / "results" / name).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target / "results" / name / file)
    manifest["recorded"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    manifest["files"] = {
        str(p.relative_to(target)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(target.rglob("*")) if p.is_file()
    }
    (target / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    size = _size(target)
    print(f"recorded {len(manifest['notebooks'])} notebooks (profile {manifest['profile']}) in {_show(target)}: "
          f"{size / 1e6:.1f} MB")
    if size > limit_mb * 1e6:
        print(f"the record is larger than {limit_mb:.0f} MB", file=sys.stderr)
        return 1
    return 0


def restore(source: Path = RECORD, target: Path = EXECUTED, notebooks: Path = NOTEBOOKS) -> int:
    """Replace ``target`` by the record in ``source`` and put the banners in (``make site``)."""
    if not (source / MANIFEST).exists():
        print(f"no record in {_show(source)}: run make book, then make record", file=sys.stderr)
        return 2
    manifest = _read(source / MANIFEST)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    outdated = stale(manifest, notebooks)
    for name, entry in manifest["notebooks"].items():
        annotate(target / f"{name}.ipynb", entry, stale_reason=outdated.get(name))
    for name, why in sorted(outdated.items()):
        print(f"warning: {name}: {why}; its page says so (make book, then make record)", file=sys.stderr)
    print(f"restored {len(manifest['notebooks'])} notebooks (profile {manifest['profile']}, recorded "
          f"{manifest.get('recorded', '?')}) from {_show(source)} into {_show(target)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("stage", help="manifest, result files and banners in book/experiments/ (make book)")
    p = sub.add_parser("save", help="book/experiments/ -> the record folder (make record)")
    p.add_argument("--to", type=Path, default=RECORD)
    p = sub.add_parser("restore", help="the record folder -> book/experiments/ (make site)")
    p.add_argument("--from", dest="source", type=Path, default=RECORD)
    args = parser.parse_args(argv)
    if args.command == "stage":
        stage()
        return 0
    if args.command == "save":
        return save(target=args.to.resolve())
    return restore(source=args.source.resolve())


if __name__ == "__main__":
    raise SystemExit(main())
