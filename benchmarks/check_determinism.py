"""Is a run deterministic on this device?  The same configuration twice, final models compared.

Runs a short MNIST experiment (CNN, 100 clients, K = 10, black-box attack, FedGrad with its hard
filter from round 2) twice with the same seed and compares the two final global models bit for
bit, and the two histories (accuracies, flagged clients).  On the CPU the project promises
bit-identical runs; on CUDA some kernels (cuDNN's convolution algorithms, atomic adds in the
backward pass) may sum in a different order from run to run: this script says which holds.

    FEDGRAD_DATA_SOURCE=/work/shared/data python benchmarks/check_determinism.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from fedgrad_core.checkpoint import load_checkpoint
from fedgrad_core.config import ExperimentConfig
from fedgrad_core.simulation import run_experiment


def final_state(config: ExperimentConfig, folder: Path, tag: str) -> tuple[dict, list]:
    ckpt = folder / f"{tag}.ckpt"
    result = run_experiment(config, checkpoint_every=config.rounds, checkpoint_path=ckpt, progress=False)
    return load_checkpoint(ckpt).global_state, result.history


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--client-batching", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--dataset", default="mnist", help="digits for a check in seconds")
    parser.add_argument("--deterministic-kernels", action="store_true",
                        help="torch.use_deterministic_algorithms(True) and cuDNN's deterministic mode first")
    args = parser.parse_args(argv)
    if args.deterministic_kernels:
        # cuBLAS needs a fixed workspace for reproducible sums (CUDA's documented setting)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    config = ExperimentConfig(
        dataset=args.dataset, model="auto" if args.dataset == "digits" else "cnn_mnist",
        num_clients=100, clients_per_round=10, rounds=args.rounds,
        attack="blackbox", defense="fedgrad", defense_params={"switch_round": 2}, pretrain_epochs=0,
        eval_every=1, device=args.device, client_batching=args.client_batching, seed=0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        a, history_a = final_state(config, Path(tmp), "a")
        b, history_b = final_state(config, Path(tmp), "b")
    differing = [n for n in a if not torch.equal(a[n], b[n])]
    largest = max((float((a[n].double() - b[n].double()).abs().max()) for n in differing), default=0.0)
    keys = ("main_acc", "backdoor_acc", "flagged")
    same_history = [{k: r.get(k) for k in keys} for r in history_a] == [{k: r.get(k) for k in keys} for r in history_b]
    print(json.dumps({
        "device": args.device,
        "hardware": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "client_batching": args.client_batching, "rounds": args.rounds,
        "deterministic_kernels": args.deterministic_kernels,
        "bit_identical": not differing, "tensors_differing": len(differing), "of_tensors": len(a),
        "largest_abs_difference": largest, "same_accuracies_and_flags": same_history,
        "main_acc": [r.get("main_acc") for r in history_a],
    }), flush=True)


if __name__ == "__main__":
    main()
