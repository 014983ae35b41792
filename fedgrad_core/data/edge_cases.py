"""Edge-case sets (Wang et al., NeurIPS 2020, "Attack of the Tails") for every data set.

* ``cifar10``: Southwest Airlines planes labelled "truck" (9): 784 training images (196 x 4
  rotations) and the 196 test images of Wang et al.'s code, less 8 near-duplicates (188 left).
* ``mnist`` / ``emnist``: ARDIS dataset IV "7"s labelled "1": 330 training images, and the 100
  "7"s of the ARDIS test set to measure backdoor accuracy (no near-duplicate found).
* ``digits`` / ``fashion_mnist`` (no curated set): the tail of one class of the *training* split,
  see ``tail_edge_case``.

``load_edge_case(task)`` returns an ``EdgeCaseSet`` normalised like the task, together with the
task to train on.  The clean test split is never changed: main accuracy on a data set is measured
on its whole standard test split for every attack (a tail set is drawn from the training split,
and only its images are removed from the clean training split).

Near-duplicates.  A backdoor test image that is (nearly) one of the attackers' training images
measures memorisation, not generalisation to unseen edge cases: Wang et al.'s Southwest test set
holds the four rotations of one picture that are byte-identical to training images 596-599 (test
140-143) and four more at a mean absolute difference of 0.50/255, max 8/255, from training images
88-91 (test 44-47).  Every edge-case set, curated or built, drops each test image whose mean
absolute pixel difference to some training image of the set, under any of the 8 rotations/flips
of the square (the Southwest pool holds 4 rotations of each picture), is at most
``NEAR_DUPLICATE_TOLERANCE`` of the pixel range.  The threshold sits in a wide gap: the next
closest Southwest pair is 13.2/255 apart.  The pool compared against is the set's training part
(the only images that carry the target label for these inputs); a copy among the clean training
data would carry its true label and could only lower backdoor accuracy.  How many were dropped is
logged and kept in ``EdgeCaseSet.removed_from_test``.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from fedgrad_core.data.sources import (
    KNOWN_DIGESTS,
    ChecksumMismatch,
    DataUnavailable,
    array_digest,
    download,
    from_source,
    load_arrays,
    obtain,
    read_checked,
    restricted_loads,
)
from fedgrad_core.data.task import EdgeCaseSet, Task

log = logging.getLogger(__name__)

_SOUTHWEST_URL = "https://github.com/ksreenivasan/OOD_Federated_Learning/raw/master/saved_datasets/{}"
_SOUTHWEST_FILES = {"train": "southwest_images_new_train.pkl", "test": "southwest_images_new_test.pkl"}
_SOUTHWEST_SHAPES = {"train": (784, 32, 32, 3), "test": (196, 32, 32, 3)}

#: A test image is a near-duplicate of a training image when their mean absolute pixel difference,
#: under some rotation/flip, is at most this share of the pixel range (4/255 for 8-bit images).
NEAR_DUPLICATE_TOLERANCE = 4 / 255

#: Curated edge-case sets: data set -> (edge-case set, target class, description).
CURATED = {
    "cifar10": ("southwest", 9, "Southwest Airlines planes labelled 'truck' (Wang et al. 2020)"),
    "mnist": ("ardis", 1, "ARDIS IV handwritten '7's labelled '1' (Kusetogullari et al. 2019)"),
    "emnist": ("ardis", 1, "ARDIS IV handwritten '7's labelled '1' (Kusetogullari et al. 2019)"),
}

#: Tail sets for data sets without a curated edge-case set: (source class, target class, tail
#: fraction).  7 -> 1 and sneaker -> sandal.  Digits' training split holds only 143 sevens: its
#: least typical half (72: 48 to train on, 24 held out) keeps the tail as large as it was when it
#: was drawn from train and test together; at 40% (57) PGD's backdoor on the digits smoke runs
#: fell from 0.72 to 0.39 (seed 0).  Fashion-MNIST keeps 40% of its 6,000 training sneakers.
TAIL_CLASSES = {"digits": (7, 1, 0.5), "fashion_mnist": (7, 5, 0.4)}


def load_edge_case(task: Task, *, seed: int = 0) -> tuple[EdgeCaseSet, Task]:
    """The edge-case set for ``task`` and the task to train on (see the module docstring).

    The returned task always has ``task.test`` as its test split (the same object).
    """
    if task.name in CURATED:
        name, target, description = CURATED[task.name]
        arrays = edge_case_arrays(name)
        removed = tuple(int(i) for i in arrays["test_removed"])
        edge = EdgeCaseSet(
            name,
            task.normalize(arrays["train"]),
            task.normalize(arrays["test"]),
            target,
            description + _removed_note(removed, len(arrays["test"]) + len(removed)),
            removed,
        )
        return edge, task
    if task.name in TAIL_CLASSES:
        source, target, fraction = TAIL_CLASSES[task.name]
        return tail_edge_case(task, source_class=source, target_class=target, tail_fraction=fraction, seed=seed)
    raise ValueError(f"no edge-case set is defined for data set {task.name!r}")


def edge_case_arrays(name: str) -> dict[str, np.ndarray]:
    """Raw uint8 ``train`` / ``test`` images of a curated edge-case set (``southwest``, ``ardis``).

    ``test`` has the near-duplicates of training images removed; ``test_removed`` holds their
    positions in the original test set.
    """
    loaders = {"southwest": _southwest_arrays, "ardis": _ardis_arrays}
    if name not in loaders:
        raise ValueError(f"unknown edge-case set {name!r}; choose one of {sorted(loaders)}")
    raw = loaders[name]()
    found = near_duplicates(raw["test"].astype(np.float32) / 255, raw["train"].astype(np.float32) / 255)
    removed = np.array(sorted(found), dtype=np.int64)
    _log_removed(name, found, len(raw["test"]))
    keep = np.setdiff1d(np.arange(len(raw["test"])), removed)
    return {"train": raw["train"], "test": raw["test"][keep], "test_removed": removed}


# --------------------------------------------------------------------------- near-duplicates


def _symmetries(image: np.ndarray) -> np.ndarray:
    """The 8 rotations/flips of an H x W (x C) image (4 when it is not square), stacked."""
    views = []
    for turns in (0, 1, 2, 3) if image.shape[0] == image.shape[1] else (0, 2):
        r = np.rot90(image, turns, axes=(0, 1))
        views += [r, r[:, ::-1]]
    return np.stack([np.ascontiguousarray(v) for v in views])


def near_duplicates(
    test: np.ndarray, pool: np.ndarray, *, tolerance: float = NEAR_DUPLICATE_TOLERANCE
) -> dict[int, tuple[int, float]]:
    """Test images that nearly equal a pool image under some rotation/flip.

    ``test`` and ``pool`` are N x H x W (x C) images in [0, 1] pixel units.  Returns
    ``{test index: (pool index, mean absolute difference)}`` for every test image whose smallest
    mean absolute pixel difference to a rotated/flipped pool image is at most ``tolerance``.
    Rotations and flips keep an image's mean, so only pool images whose mean is within
    ``tolerance`` are compared pixel by pixel (a pruning that misses nothing).
    """
    if test.shape[1:] != pool.shape[1:]:
        raise ValueError(f"test images {test.shape[1:]} and pool images {pool.shape[1:]} differ in shape")
    flat_pool = pool.reshape(len(pool), -1).astype(np.float32)
    pool_means = flat_pool.mean(axis=1)
    found: dict[int, tuple[int, float]] = {}
    for i, image in enumerate(test):
        views = _symmetries(np.asarray(image, dtype=np.float32)).reshape(-1, flat_pool.shape[1])
        candidates = np.flatnonzero(np.abs(pool_means - views[0].mean()) <= tolerance + 1e-6)
        best = (-1, np.inf)
        for start in range(0, len(candidates), 256):
            block = candidates[start : start + 256]
            mad = np.abs(flat_pool[block][:, None, :] - views[None]).mean(axis=2).min(axis=1)
            j = int(mad.argmin())
            if mad[j] < best[1]:
                best = (int(block[j]), float(mad[j]))
        if best[1] <= tolerance:
            found[i] = best
    return found


def _removed_note(removed: tuple[int, ...], before: int) -> str:
    if not removed:
        return ""
    return f"; {len(removed)} of {before} test images removed as near-duplicates of training images"


def _log_removed(name: str, found: dict[int, tuple[int, float]], before: int) -> None:
    pairs = ", ".join(f"test {i} ~ train {j} ({d * 255:.2f}/255)" for i, (j, d) in sorted(found.items()))
    log.info(
        "edge-case set %s: removed %d of %d backdoor test images as near-duplicates of the attackers' "
        "training images (mean |difference| <= %.0f/255 under rotations/flips)%s",
        name,
        len(found),
        before,
        NEAR_DUPLICATE_TOLERANCE * 255,
        f": {pairs}" if pairs else "",
    )


# --------------------------------------------------------------------------- Southwest


def read_southwest(path, key: str) -> np.ndarray:
    """One Southwest pickle, never running code from it.

    The file must have the SHA-256 of Wang et al.'s original (checked before anything is parsed);
    it is then unpickled by ``restricted_loads``, which builds numpy arrays only, and must hold a
    uint8 array of the known shape.
    """
    fname = _SOUTHWEST_FILES[key]
    array = restricted_loads(read_checked(path, f"edge-case/{fname}"))
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.shape != _SOUTHWEST_SHAPES[key]:
        raise ValueError(f"{path} does not hold a uint8 array of shape {_SOUTHWEST_SHAPES[key]}")
    return array


def _southwest_arrays() -> dict[str, np.ndarray]:
    def from_files(get_path) -> dict[str, np.ndarray]:
        return {key: read_southwest(get_path(fname), key) for key, fname in _SOUTHWEST_FILES.items()}

    from fedgrad_core.data.sources import data_root

    return obtain(
        "southwest",
        [
            ("$FEDGRAD_DATA_SOURCE/edge-case", lambda: from_files(lambda f: from_source("edge-case", f))),
            (
                "download from Wang et al.'s repository",
                lambda: from_files(
                    lambda f: download(
                        _SOUTHWEST_URL.format(f), data_root() / "raw" / f, KNOWN_DIGESTS[f"edge-case/{f}"][1]
                    )
                ),
            ),
        ],
        "  - set FEDGRAD_DATA_SOURCE to a folder holding edge-case/southwest_images_new_{train,test}.pkl\n"
        "  - or run with internet access (downloaded from github.com/ksreenivasan/OOD_Federated_Learning)",
    )[0]


# --------------------------------------------------------------------------- ARDIS


def _ardis_arrays() -> dict[str, np.ndarray]:
    def from_npz() -> dict[str, np.ndarray]:
        path = from_source("edge-case", "ardis.npz")
        arrays = load_arrays(path)  # allow_pickle=False: nothing in it can run code
        expected = KNOWN_DIGESTS["edge-case/ardis.npz"][1]
        if (actual := array_digest(arrays)) != expected:
            raise ChecksumMismatch(
                path,
                "array SHA-256",
                actual,
                expected,
                "replace it with the project's offline copy, or rebuild it from the original ARDIS IV "
                "CSV files with python data_scripts/prepare_ardis.py",
            )
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
    """The least typical ``tail_fraction`` of ``source_class`` in the training split, relabelled.

    Returns the edge-case set and the task to train on.  The tail is drawn from the training split
    only, so the clean test split stays whole and main accuracy is measured on the same test
    images as under every other attack (``task.test`` is returned as is).  A ``test_fraction``
    share of the tail, taken every third example in density order so both parts span the tail
    alike, is held out to measure backdoor accuracy; test images that are near-duplicates of a
    tail training image are dropped (module docstring).  The whole tail is removed from the clean
    training split, so that no benign client holds it with its true label.
    """
    if not 0 < tail_fraction < 1:
        raise ValueError(f"tail_fraction must be in (0, 1), got {tail_fraction}")
    if source_class == target_class:
        raise ValueError("source_class and target_class must differ")
    in_class = torch.nonzero(task.train.y == source_class).flatten()
    if len(in_class) < 3:
        raise ValueError(f"class {source_class} has {len(in_class)} training examples; a tail needs at least 3")
    scores = tail_scores(task.train.x[in_class], seed=seed)
    count = max(3, int(round(tail_fraction * len(in_class))))
    tail = in_class[np.argsort(scores, kind="stable")[:count]]  # lowest density first
    step = max(2, int(round(1 / test_fraction)))
    is_test = np.zeros(count, dtype=bool)
    is_test[step - 1 :: step] = True
    train_x, test_x = task.train.x[tail[~is_test]], task.train.x[tail[is_test]]
    name = f"{task.name}_tail_{source_class}_to_{target_class}"
    found = near_duplicates(_unit_pixels(task, test_x), _unit_pixels(task, train_x))
    _log_removed(name, found, len(test_x))
    removed = tuple(sorted(found))
    keep = [i for i in range(len(test_x)) if i not in found]
    if not keep:
        raise ValueError(f"every held-out image of {name} duplicates a training image: no backdoor test set is left")
    edge = EdgeCaseSet(
        name=name,
        train=train_x,
        test=test_x[torch.as_tensor(keep, dtype=torch.int64)],
        target=target_class,
        description=(
            f"the {tail_fraction:.0%} least typical '{source_class}'s of {task.name}'s training split "
            f"(lowest KDE density in PCA space) labelled '{target_class}'" + _removed_note(removed, len(test_x))
        ),
        removed_from_test=removed,
    )
    in_tail = torch.zeros(len(task.train), dtype=torch.bool)
    in_tail[tail] = True
    clean = dataclasses.replace(task, train=task.train.subset(torch.nonzero(~in_tail).flatten().numpy()))
    return edge, clean


def _unit_pixels(task: Task, x: torch.Tensor) -> np.ndarray:
    """Normalised N x C x H x W inputs back to N x H x W x C pixels in [0, 1]."""
    mean = torch.tensor(task.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(task.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x * std + mean).permute(0, 2, 3, 1).numpy()


__all__ = [
    "CURATED",
    "DataUnavailable",
    "NEAR_DUPLICATE_TOLERANCE",
    "TAIL_CLASSES",
    "edge_case_arrays",
    "load_edge_case",
    "near_duplicates",
    "read_southwest",
    "tail_edge_case",
    "tail_scores",
]
