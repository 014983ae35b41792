"""Edge-case sets (Wang et al., NeurIPS 2020, "Attack of the Tails") for every data set.

* ``cifar10``: Southwest Airlines planes labelled "truck" (9): 784 training images (196 x 4
  rotations) and 196 test images, exactly the files of Wang et al.'s code.
* ``mnist`` / ``emnist``: ARDIS dataset IV "7"s labelled "1": 330 training images, and the 100
  "7"s of the ARDIS test set to measure backdoor accuracy.
* ``digits`` / ``fashion_mnist`` (no curated set): the tail of one class, see ``tail_edge_case``.

``load_edge_case(task)`` returns an ``EdgeCaseSet`` normalised like the task, together with the
task to train on (for a tail set the tail examples are removed from the clean splits, so that no
benign client holds them with their true label and the held-out part is never seen).
"""

from __future__ import annotations

import pickle

import numpy as np
import torch

from fedgrad_core.data.sources import DataUnavailable, download, from_source, load_arrays, obtain
from fedgrad_core.data.task import EdgeCaseSet, Split, Task

_SOUTHWEST_URL = "https://github.com/ksreenivasan/OOD_Federated_Learning/raw/master/saved_datasets/{}"
_SOUTHWEST_SHA256 = {
    "southwest_images_new_train.pkl": "4dfb293d5bfc073cb26f9019d37b7660bb4cfbe4b8d0cf9843523e884539b26a",
    "southwest_images_new_test.pkl": "cad0410ce01bd53af349fd2094799a8c58c508ae39ec1c01d038868cb1e5d64d",
}

#: Curated edge-case sets: data set -> (edge-case set, target class, description).
CURATED = {
    "cifar10": ("southwest", 9, "Southwest Airlines planes labelled 'truck' (Wang et al. 2020)"),
    "mnist": ("ardis", 1, "ARDIS IV handwritten '7's labelled '1' (Kusetogullari et al. 2019)"),
    "emnist": ("ardis", 1, "ARDIS IV handwritten '7's labelled '1' (Kusetogullari et al. 2019)"),
}

#: Tail sets for data sets without a curated edge-case set: (source class, target class).
TAIL_CLASSES = {"digits": (7, 1), "fashion_mnist": (7, 5)}  # 7 -> 1; sneaker -> sandal


def load_edge_case(task: Task, *, seed: int = 0) -> tuple[EdgeCaseSet, Task]:
    """The edge-case set for ``task`` and the task to train on (see the module docstring)."""
    if task.name in CURATED:
        name, target, description = CURATED[task.name]
        arrays = edge_case_arrays(name)
        return EdgeCaseSet(name, task.normalize(arrays["train"]), task.normalize(arrays["test"]), target, description), task
    if task.name in TAIL_CLASSES:
        source, target = TAIL_CLASSES[task.name]
        return tail_edge_case(task, source_class=source, target_class=target, seed=seed)
    raise ValueError(f"no edge-case set is defined for data set {task.name!r}")


def edge_case_arrays(name: str) -> dict[str, np.ndarray]:
    """Raw uint8 ``train`` / ``test`` images of a curated edge-case set (``southwest``, ``ardis``)."""
    loaders = {"southwest": _southwest_arrays, "ardis": _ardis_arrays}
    if name not in loaders:
        raise ValueError(f"unknown edge-case set {name!r}; choose one of {sorted(loaders)}")
    return loaders[name]()


# --------------------------------------------------------------------------- Southwest


def _southwest_arrays() -> dict[str, np.ndarray]:
    def from_files(get_path) -> dict[str, np.ndarray]:
        out = {}
        for key, fname in (("train", "southwest_images_new_train.pkl"), ("test", "southwest_images_new_test.pkl")):
            with open(get_path(fname), "rb") as fh:
                out[key] = np.asarray(pickle.load(fh), dtype=np.uint8)
        return out

    from fedgrad_core.data.sources import data_root

    return obtain(
        "southwest",
        [
            ("$FEDGRAD_DATA_SOURCE/edge-case", lambda: from_files(lambda f: from_source("edge-case", f))),
            (
                "download from Wang et al.'s repository",
                lambda: from_files(
                    lambda f: download(_SOUTHWEST_URL.format(f), data_root() / "raw" / f, _SOUTHWEST_SHA256[f])
                ),
            ),
        ],
        "  - set FEDGRAD_DATA_SOURCE to a folder holding edge-case/southwest_images_new_{train,test}.pkl\n"
        "  - or run with internet access (downloaded from github.com/ksreenivasan/OOD_Federated_Learning)",
    )[0]


# --------------------------------------------------------------------------- ARDIS


def _ardis_arrays() -> dict[str, np.ndarray]:
    def from_npz() -> dict[str, np.ndarray]:
        arrays = load_arrays(from_source("edge-case", "ardis.npz"))
        return {"train": arrays["train7_x"], "test": arrays["test_x"][arrays["test_y"] == 7]}

    return obtain(
        "ardis",
        [("$FEDGRAD_DATA_SOURCE/edge-case/ardis.npz", from_npz)],
        "  - set FEDGRAD_DATA_SOURCE to a folder holding edge-case/ardis.npz\n"
        "  - or build it from the ARDIS dataset IV CSV files with\n"
        "    python data_scripts/prepare_ardis.py --csv-dir DIR  (ARDIS has no stable download address)",
    )[0]


# --------------------------------------------------------------------------- tail builder


def tail_scores(images: torch.Tensor, *, components: int = 10, seed: int = 0) -> np.ndarray:
    """Log-density of each image under a Gaussian KDE in the class's own PCA space.

    Why this density model: an edge case is an input the clean distribution rarely produces
    (Wang et al.'s definition: low probability under the data distribution).  Within one class the
    leading principal components capture the common ways of writing it; a kernel density there is
    non-parametric (no shape assumed for the styles), deterministic, and needs no pretrained model,
    so the set is the same on every machine.  Bandwidth: Scott's rule.
    """
    from sklearn.decomposition import PCA
    from sklearn.neighbors import KernelDensity

    flat = images.reshape(len(images), -1).numpy().astype(np.float64)
    k = min(components, flat.shape[0] - 1, flat.shape[1])
    z = PCA(n_components=k, whiten=True, random_state=seed).fit_transform(flat)
    bandwidth = len(z) ** (-1.0 / (k + 4))
    return KernelDensity(bandwidth=bandwidth).fit(z).score_samples(z)


def tail_edge_case(
    task: Task,
    *,
    source_class: int,
    target_class: int,
    tail_fraction: float = 0.4,
    test_fraction: float = 1 / 3,
    seed: int = 0,
) -> tuple[EdgeCaseSet, Task]:
    """The least typical ``tail_fraction`` of ``source_class`` (train and test pooled), relabelled.

    Returns the edge-case set (a ``test_fraction`` share held out for backdoor accuracy, taken
    every third example in density order so both parts span the tail alike) and the task with the
    tail removed from its clean splits.
    """
    if not 0 < tail_fraction < 1:
        raise ValueError(f"tail_fraction must be in (0, 1), got {tail_fraction}")
    if source_class == target_class:
        raise ValueError("source_class and target_class must differ")
    pool = Split.concat(task.train, task.test)
    in_class = torch.nonzero(pool.y == source_class).flatten()
    scores = tail_scores(pool.x[in_class], seed=seed)
    count = max(3, int(round(tail_fraction * len(in_class))))
    tail = in_class[np.argsort(scores, kind="stable")[:count]]  # lowest density first
    step = max(2, int(round(1 / test_fraction)))
    is_test = np.zeros(count, dtype=bool)
    is_test[step - 1 :: step] = True
    edge = EdgeCaseSet(
        name=f"{task.name}_tail_{source_class}_to_{target_class}",
        train=pool.x[tail[~is_test]],
        test=pool.x[tail[is_test]],
        target=target_class,
        description=(
            f"the {tail_fraction:.0%} least typical '{source_class}'s of {task.name} "
            f"(lowest KDE density in PCA space) labelled '{target_class}'"
        ),
    )
    removed = set(tail.tolist())
    n_train = len(task.train)
    keep_train = [i for i in range(n_train) if i not in removed]
    keep_test = [i for i in range(len(task.test)) if i + n_train not in removed]
    clean = Task(
        name=task.name,
        train=task.train.subset(keep_train),
        test=task.test.subset(keep_test),
        num_classes=task.num_classes,
        mean=task.mean,
        std=task.std,
        source=task.source,
        pixel_max=task.pixel_max,
    )
    return edge, clean


__all__ = ["CURATED", "DataUnavailable", "TAIL_CLASSES", "edge_case_arrays", "load_edge_case", "tail_edge_case", "tail_scores"]
