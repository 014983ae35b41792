"""``fedgrad run ...``: every ExperimentConfig field is a flag; bad input exits 2 with one line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from pathlib import Path
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


def _optional_int(text: str) -> Optional[int]:
    return None if text.lower() == "none" else int(text)


#: What each ExperimentConfig field means, for ``fedgrad run --help``: the paper's words and
#: symbols where it has some, then the unit or range.  ``{...}`` fields are filled in with the
#: registered names (plug-ins included) when the parser is built.
FIELD_HELP: dict[str, str] = {
    "dataset": "the clean data set the clients share out (the paper: MNIST, EMNIST, CIFAR-10); one of: {datasets}",
    "model": "the global model's network; 'auto' picks the paper's network for the data set ({auto}); one of: "
    "auto, {models}",
    "num_clients": "N, the total number of clients; an integer >= 1",
    "clients_per_round": "K, the clients the server samples each round (uniformly, without replacement); "
    "an integer, 1 <= K <= N",
    "rounds": "T, the number of communication rounds; an integer >= 1",
    "local_epochs": "E, the epochs of local training each selected client runs per round; an integer >= 1",
    "batch_size": "B, the local mini-batch size, in samples; an integer >= 1",
    "lr": "eta, the benign clients' local learning rate in round 1; a number > 0 (round t uses lr * lr_decay^(t-1))",
    "lr_decay": "the learning rate's decay per round (the paper's schedule: 0.998); a number in (0, 1]",
    "momentum": "SGD momentum of local training; a number in [0, 1)",
    "weight_decay": "L2 weight decay of local training; a number >= 0",
    "attack": "the backdoor attack run by the attackers (the compromised clients); one of: {attacks}",
    "attack_params": "the attack's parameters: a JSON object ('{{\"eps\": 2}}') or key=value pairs "
    "('eps=2,project_every=10'); the keys are the attack's own (a wrong key names the valid ones)",
    "defense": "the server's aggregation rule, FedGrad or a baseline; one of: {defenses}",
    "defense_params": "the defense's parameters, written as for --attack-params (FedGrad: e.g. "
    "'switch_round=10,zeta=0.5'); the keys are the defense's own (a wrong key names the valid ones)",
    "attacker_fraction": "epsilon = |C| / N, the share of all N clients that are attackers (a fixed pool drawn "
    "once from the seed); a fraction in [0, 1], rounded to whole clients",
    "poisoned_data_rate": "PDR, the share of poisoned samples in an attacker's local training data; a fraction "
    "in [0, 1), or 'none' for the attack's default for the data set (the paper's Table 1)",
    "train_samples": "the clients' shards are cut from a stratified subsample of this many training images "
    "(pretraining still uses the whole split); an integer >= N, or 'none' for the whole split",
    "eval_samples": "main accuracy is measured on a fixed stratified subsample of this many test images (the "
    "same for a larger backdoor test set, such as a trigger stamped on the test split); an integer >= 1, or "
    "'none' for the whole test split",
    "partition": "how the training set is split among the clients: iid, dirichlet (per-class Dirichlet(alpha)) "
    "or phi (the paper's non-IID scheme: a share phi of each class goes to its own group of clients)",
    "noniid": "the degree of non-IID: alpha of the dirichlet partition (smaller = more skewed) or phi of the phi "
    "partition (0 = IID, 1 = each class only in its group); a number >= 0, ignored by iid",
    "eval_every": "evaluate main and backdoor accuracy every this many rounds (and always in the last); "
    "an integer >= 1",
    "pretrain_epochs": "centralised epochs on the clean training set before round 1 (the paper starts from a "
    "pretrained model; cached); an integer >= 0",
    "pretrain_lr": "the learning rate of that pretraining; a number > 0",
    "pretrain_seed": "seed of the pretrained starting model: one value for every --seed gives all seeds the same "
    "starting model, as the authors' runs load one; an integer >= 0, or 'none' for --seed",
    "seed": "seed of every random choice (partition, attacker pool, client sampling, training): the same seed "
    "gives the same history on a CPU; an integer",
    "device": "where to train: 'auto' (CUDA when present), 'cpu' or 'cuda[:N]'",
    "client_batching": "train the honest clients together ('on': one vmapped step for all of them), one by one "
    "('off'), or whichever is faster for the model and device ('auto'); equal in distribution, not bitwise",
}


def _choices() -> dict[str, str]:
    """The registered names (built-ins and plug-ins) that ``FIELD_HELP`` lists."""
    from fedgrad_core.attacks import available_attacks
    from fedgrad_core.config import DEFAULT_MODELS
    from fedgrad_core.data import available_datasets
    from fedgrad_core.defenses import available_defenses
    from fedgrad_core.models import available_models

    return {
        "datasets": ", ".join(available_datasets()),
        "models": ", ".join(available_models()),
        "defenses": ", ".join(available_defenses()),
        "attacks": ", ".join(available_attacks()),
        "auto": ", ".join(f"{d}: {m}" for d, m in DEFAULT_MODELS.items()),
    }


def _percent_escaped(text: str) -> str:
    return text.replace("%", "%%")  # argparse formats help strings with %


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line (no usage block) and exit 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fedgrad",
        description="FedGrad companion: federated backdoor experiments (fedgrad run --help: every setting)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run one experiment and save its result as JSON",
        description="Run one federated experiment: N clients, K of them sampled per round, a fixed share of "
        "them attackers, the server aggregating with the chosen defense.  Every setting of ExperimentConfig "
        "is a flag below; `fedgrad list` describes the data sets, models, defenses and attacks.  Bad input "
        "exits with code 2 and one line naming the problem.",
    )
    hints = typing.get_type_hints(ExperimentConfig)
    choices = _choices()
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
        elif kind == Optional[float]:
            conv = _optional_float
        elif kind == Optional[int]:
            conv = _optional_int
        else:
            conv = str
        shown = "none" if default is None else (json.dumps(default) if isinstance(default, dict) else default)
        text = FIELD_HELP.get(f.name, f"ExperimentConfig.{f.name}").format(**choices)
        run.add_argument(
            flag, dest=f.name, type=conv, default=default, help=_percent_escaped(f"{text} (default: {shown})")
        )
    run.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="where to write the result JSON (config, per-round history, provenance; written atomically); "
        "without it the result is only printed",
    )
    run.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        metavar="N",
        help="write a checkpoint to FILE.ckpt (next to --out, which it needs) every N rounds and after the last; "
        "an integer >= 1",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint FILE.ckpt next to --out when it exists (same configuration only; "
        "loaded safely: tensors and plain data, nothing that runs code)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument(
        "--summary-window",
        type=int,
        default=5,
        metavar="N",
        help="the summary's robust metric averages the last N evaluated rounds; an integer >= 1 (default: 5)",
    )
    sub.add_parser("list", help="list the data sets, models, defenses and attacks, one line each")
    return parser


def checkpoint_path(out: str) -> Path:
    """Where ``run_experiment`` keeps the checkpoint of a run saved to ``out`` (its default)."""
    return Path(str(out) + ".ckpt")


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
    if args.resume and checkpoint_path(args.out).exists():
        problem = _checkpoint_problem(checkpoint_path(args.out), config)
        if problem:
            print(f"fedgrad: error: --resume: {problem}", file=sys.stderr)
            return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from fedgrad_core.checkpoint import CheckpointError
    from fedgrad_core.data import DataUnavailable
    from fedgrad_core.simulation import run_experiment

    try:
        result = run_experiment(
            config, out=args.out, checkpoint_every=args.checkpoint_every, resume=args.resume, progress=not args.quiet
        )
    except (DataUnavailable, CheckpointError) as exc:
        print(f"fedgrad: error: {exc}", file=sys.stderr)
        return 2
    header = f"{config.defense}/{config.attack} on {config.dataset}:"
    print(format_summary(result.summary(args.summary_window), header, out=args.out))
    print(where_saved(args.out, args.checkpoint_every))
    return 0


def _checkpoint_problem(path: Path, config: ExperimentConfig) -> Optional[str]:
    """Why the checkpoint at ``path`` cannot continue ``config`` (one line), or None when it can;
    checked before any data is loaded."""
    from fedgrad_core.checkpoint import CheckpointError, config_differences, load_checkpoint

    try:
        saved = load_checkpoint(path)
    except CheckpointError as exc:
        return " ".join(str(exc).split())
    except OSError as exc:
        return f"cannot read checkpoint {path}: {exc.strerror or exc}"
    differences = config_differences(saved.config, config.to_dict())
    if differences:
        return (
            f"checkpoint {path} was written for a different configuration ({'; '.join(differences)}); "
            "resume with the same configuration or start afresh without --resume"
        )
    return None


def where_saved(out: Optional[str], checkpoint_every: Optional[int]) -> str:
    """The lines that say where the result and the checkpoint went."""
    if not out:
        return "result: not saved (--out FILE saves it)"
    lines = [f"result: {out}"]
    if checkpoint_every:
        lines.append(
            f"checkpoint: {checkpoint_path(out)} (every {checkpoint_every} rounds and after the last; "
            "--resume continues from it)"
        )
    return "\n".join(lines)


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
    """Each registered name (built-ins and plug-ins) with one line saying what it is."""
    from fedgrad_core.attacks.base import REGISTRY as ATTACKS
    from fedgrad_core.data.datasets import DATASETS
    from fedgrad_core.defenses.base import REGISTRY as DEFENSES
    from fedgrad_core.models import MODELS

    blocks = []
    for title, registry in (("datasets", DATASETS), ("models", MODELS), ("defenses", DEFENSES), ("attacks", ATTACKS)):
        names = registry.names()
        width = max(map(len, names), default=0)
        lines = [f"{title}:"] + [f"  {name:<{width}}  {registry.describe(name)}" for name in names]
        blocks.append("\n".join(lines))
    print("\n\n".join(blocks))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
