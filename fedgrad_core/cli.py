"""``fedgrad run ...``: every ExperimentConfig field is a flag; bad input exits 2 with one line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from typing import Any, Optional, Sequence

from fedgrad_core.config import ConfigError, ExperimentConfig, validate


def _parse_params(text: str) -> dict[str, Any]:
    """JSON ('{"eps": 2}') or comma-separated key=value pairs ('eps=2,project_every=10')."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError("parameters must be a JSON object")
        return value
    out: dict[str, Any] = {}
    for item in text.split(","):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"expected key=value, got {item!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw  # a bare string
    return out


def _optional_float(text: str) -> Optional[float]:
    return None if text.lower() == "none" else float(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedgrad", description="FedGrad companion: federated backdoor experiments")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one experiment and save its result as JSON")
    hints = typing.get_type_hints(ExperimentConfig)
    for f in dataclasses.fields(ExperimentConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kind = hints[f.name]
        if f.name.endswith("_params"):
            conv = _parse_params
        elif kind is int:
            conv = int
        elif kind is float:
            conv = float
        elif f.name == "poisoned_data_rate":
            conv = _optional_float
        else:
            conv = str
        run.add_argument(flag, dest=f.name, type=conv, default=default, help=f"(default: {default})")
    run.add_argument("--out", default=None, help="where to write the result JSON")
    run.add_argument("--checkpoint-every", type=int, default=None, help="checkpoint every N rounds (needs --out)")
    run.add_argument("--resume", action="store_true", help="continue from the checkpoint next to --out")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument(
        "--summary-window",
        type=int,
        default=5,
        help="the summary's robust metric averages the last N evaluated rounds (default: 5)",
    )
    sub.add_parser("list", help="list data sets, models, defenses and attacks")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "list":
        return _list()
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(ExperimentConfig)}
    try:
        config = ExperimentConfig(**fields)
        validate(config)
        if (args.checkpoint_every or args.resume) and not args.out:
            raise ConfigError("--checkpoint-every and --resume need --out")
        if args.checkpoint_every is not None and args.checkpoint_every < 1:
            raise ConfigError(f"--checkpoint-every must be >= 1, got {args.checkpoint_every}")
        if args.summary_window < 1:
            raise ConfigError(f"--summary-window must be >= 1, got {args.summary_window}")
    except ConfigError as exc:
        print(f"fedgrad: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from fedgrad_core.data import DataUnavailable
    from fedgrad_core.simulation import run_experiment

    try:
        result = run_experiment(
            config, out=args.out, checkpoint_every=args.checkpoint_every, resume=args.resume, progress=not args.quiet
        )
    except DataUnavailable as exc:
        print(f"fedgrad: error: {exc}", file=sys.stderr)
        return 2
    header = f"{config.defense}/{config.attack} on {config.dataset}:"
    print(format_summary(result.summary(args.summary_window), header, out=args.out))
    return 0


def format_summary(summary: dict[str, Any], header: str, *, out: Optional[str] = None) -> str:
    """``RunResult.summary`` for a terminal: each number labelled with its definition (best over
    the evaluated rounds, the paper's Table 2 metric; mean of the last N evaluated rounds; final)."""
    n = summary["window"]

    def pct(value: Optional[float]) -> str:
        return "n/a" if value is None else f"{100 * value:.2f}%"

    def frac(value: Optional[float], digits: int = 2) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    lines = [f"{header} {summary['rounds']} rounds" + (f" -> {out}" if out else "")]
    for name, key in (("main accuracy", "main"), ("backdoor accuracy", "backdoor")):
        lines.append(
            f"  {name + ':':<19} best {pct(summary[f'best_{key}_acc'])} (paper's metric), "
            f"mean of last {n} evaluated rounds {pct(summary[f'mean_{key}_acc_last'])}, "
            f"final {pct(summary[f'final_{key}_acc'])}"
        )
    lines.append(
        f"  {'detection:':<19} mean TPR {frac(summary['mean_tpr'])}, mean FPR {frac(summary['mean_fpr'])} "
        "(over the rounds where defined)"
    )
    lines.append(f"  {'aggregation:':<19} {frac(summary['mean_aggregation_seconds'], 4)} s per round (mean)")
    return "\n".join(lines)


def _list() -> int:
    from fedgrad_core.attacks import available_attacks
    from fedgrad_core.data import available_datasets
    from fedgrad_core.defenses import available_defenses
    from fedgrad_core.models import available_models

    for title, names in (
        ("datasets", available_datasets()),
        ("models", available_models()),
        ("defenses", available_defenses()),
        ("attacks", available_attacks()),
    ):
        print(f"{title}: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
