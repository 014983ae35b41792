"""Cost of one quick-profile run, in CPU seconds, to plan the book's hour on 2 cores.

    python book/calibrate_quick.py mnist cnn_mnist 600
    python book/calibrate_quick.py cifar10 vgg9_slim 500 blackbox 100

Arguments: data set, model, clients N, attack (default blackbox), edge-case examples (default: the
attack's).  One torch thread, as each of run_many's two workers has on 2 cores; CPU time
(process time) instead of wall time, so that a machine shared with other jobs still gives the
idle-core figure.  Prints seconds per training round (K = 10, 2 local epochs, FedAvg), per
evaluation of the test set and the fixed cost of a run (loading and partitioning the data,
building the model).  A run then costs about fixed + rounds x train + evaluations x eval.
"""

import sys
import time

import torch

from fedgrad_core import ExperimentConfig
from fedgrad_core.data import load_task
from fedgrad_core.models import make_model
from fedgrad_core.simulation import accuracy, run_experiment


def cpu(work):
    started = time.process_time()
    work()
    return time.process_time() - started


def main(argv):
    torch.set_num_threads(1)
    dataset, model, clients = argv[0], argv[1], int(argv[2])
    attack = argv[3] if len(argv) > 3 else "blackbox"
    base = ExperimentConfig(
        dataset=dataset, model=model, num_clients=clients, clients_per_round=10, rounds=1, local_epochs=2,
        pretrain_epochs=0, eval_every=100, partition="phi", noniid=0.5, attack=attack, defense="fedavg",
        attack_params={"num_edge": int(argv[4])} if len(argv) > 4 else {},
    )
    one = cpu(lambda: run_experiment(base, progress=False))
    six = cpu(lambda: run_experiment(base.replace(rounds=6), progress=False))  # one evaluation each (the last round)
    task = load_task(dataset)
    net = make_model(model, in_channels=task.image_shape[0], num_classes=task.num_classes, seed=0)
    evaluation = cpu(lambda: accuracy(net, task.test, "cpu"))
    train = (six - one) / 5
    print(f"{dataset} {model} N={clients} {attack}: {train:.2f} s per training round, {evaluation:.2f} s per "
          f"evaluation, {one - train - evaluation:.1f} s fixed per run (CPU seconds, one thread)")


if __name__ == "__main__":
    main(sys.argv[1:])
