"""Write book/experiments/_execution.md: the environment and an execution table of the notebooks.

    python book/execution_table.py

Reads the papermill metadata of every executed notebook in book/experiments/ (profile and
parameters, end and duration), the runner's timings.json, and the versions of the installed packages; the hardware is
that of the machine running this script, which ``make book`` runs right after
book/run_notebooks.py executed the notebooks on it.  The reproducibility page includes the file.
"""

from __future__ import annotations

import json
import platform
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXECUTED = ROOT / "book" / "experiments"
OUT = EXECUTED / "_execution.md"
PACKAGES = [
    "fedgrad-core", "torch", "torchvision", "numpy", "scipy", "scikit-learn", "pandas", "matplotlib",
    "seaborn", "papermill", "jupyter-book", "sphinx", "selenium",
]


def hardware() -> str:
    """CPU model and cores, plus the GPU when torch sees one."""
    from fedgrad_core.results import provenance

    text = provenance("cpu")["hardware"]
    try:
        import torch

        if torch.cuda.is_available():
            text += f"; GPU {torch.cuda.get_device_name(0)}"
    except ImportError:  # torch is a dependency; kept for a bare environment
        pass
    return text


def versions() -> list[tuple[str, str]]:
    rows = [("Python", platform.python_version()), ("OS", platform.platform(terse=True))]
    for name in PACKAGES:
        try:
            rows.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            rows.append((name, "not installed"))
    return rows


def executions(folder: Path) -> list[dict]:
    """One entry per executed notebook, from its papermill metadata (sorted by name).

    The wall time is book/run_notebooks.py's (``timings.json``) where it timed this notebook on
    the same profile, else papermill's own ``duration``; the two differ by the runner's
    bookkeeping only.
    """
    timings = {}
    if (folder / "timings.json").exists():
        timings = json.loads((folder / "timings.json").read_text())
    rows = []
    for path in sorted(folder.glob("*.ipynb")):
        meta = json.loads(path.read_text()).get("metadata", {}).get("papermill", {})
        params = meta.get("parameters", {})
        seconds = meta.get("duration")
        if timings.get("profile") == params.get("profile") and path.stem in timings.get("seconds", {}):
            seconds = timings["seconds"][path.stem]
        rows.append({
            "notebook": path.stem,
            "profile": params.get("profile", "?"),
            "parameters": {k: v for k, v in params.items() if k != "profile"},
            "seconds": seconds,
            "finished": (meta.get("end_time") or "?")[:19].replace("T", " "),
            "status": "failed" if meta.get("exception") else ("ok" if meta.get("end_time") else "incomplete"),
        })
    return rows


def render(rows: list[dict], env: list[tuple[str, str]], machine: str) -> str:
    lines = ["## Environment", "", "| package | version |", "|---|---|"]
    lines += [f"| {name} | {version} |" for name, version in env]
    lines += ["", "## Execution table", ""]
    if not rows:
        lines += ["No executed notebooks were found in `book/experiments/`: run `make book`."]
        return "\n".join(lines) + "\n"
    lines += [
        f"Hardware: {machine}.", "",
        "| notebook | profile | wall time | finished (UTC) | status |", "|---|---|---|---|---|",
    ]
    for r in rows:
        wall = "?" if r["seconds"] is None else f"{r['seconds']:.0f} s"
        lines.append(f"| `{r['notebook']}` | {r['profile']} | {wall} | {r['finished']} | {r['status']} |")
    lines += ["", "## The command behind every result", ""]
    for r in rows:
        lines += [
            f"`{r['notebook']}`, parameters set by the profile: "
            + (", ".join(f"`{k}={json.dumps(v)}`" for k, v in r["parameters"].items()) or "none (the notebook's defaults)"),
            "", "```bash", f"python book/run_notebooks.py --profile {r['profile']} --only {r['notebook']}", "```", "",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    EXECUTED.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render(executions(EXECUTED), versions(), hardware()))
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
