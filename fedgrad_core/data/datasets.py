"""The clean data sets: digits, MNIST, Fashion-MNIST, EMNIST (digits) and CIFAR-10.

``load_task(name)`` returns a normalised ``Task``; ``prepare(name)`` only makes sure the raw
arrays are prepared under the data root (what ``data_scripts/`` call).  Images are kept as uint8
N x H x W (x C) in MNIST orientation; the normalisation statistics are computed from the
training split, so every data source of one data set is treated alike.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fedgrad_core.data.sources import (
    DataUnavailable,
    from_source,
    obtain,
    read_checked,
    read_idx,
    restricted_loads,
)
from fedgrad_core.data.task import Split, Task, channel_statistics, normalize_images
from fedgrad_core.registry import Registry

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

#: name -> loader returning (raw arrays, description of the source used)
DATASETS: Registry[tuple[dict, str]] = Registry("data set", builtin="fedgrad_core.data.datasets")
_PIXEL_MAX = {"digits": 16.0}


def available_datasets() -> list[str]:
    return DATASETS.names()


def prepare(name: str) -> tuple[dict[str, np.ndarray], str]:
    """The raw arrays of data set ``name`` (x_train, y_train, x_test, y_test) and their source."""
    return DATASETS.factory(name)()


def load_task(name: str) -> Task:
    """Data set ``name`` as normalised tensors (N x C x H x W float32, int64 labels)."""
    arrays, source = prepare(name)
    pixel_max = _PIXEL_MAX.get(name, 255.0)
    mean, std = channel_statistics(arrays["x_train"], pixel_max)
    num_classes = int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        return Split(normalize_images(x, mean, std, pixel_max), torch.from_numpy(y.astype(np.int64)))

    return Task(
        name=name,
        train=split(arrays["x_train"], arrays["y_train"]),
        test=split(arrays["x_test"], arrays["y_test"]),
        num_classes=num_classes,
        mean=mean,
        std=std,
        source=source,
        pixel_max=pixel_max,
    )


# --------------------------------------------------------------------------- digits


@DATASETS.register("digits")
def _digits() -> tuple[dict, str]:
    """scikit-learn's 8x8 digits (1,797 images, values 0..16): a fixed, stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(images, labels, test_size=0.2, random_state=0, stratify=labels)
    return {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}, "scikit-learn load_digits"


# --------------------------------------------------------------------------- MNIST family


def _idx_quad(folder: Path, prefix: str = "", digests: str | None = None) -> dict[str, np.ndarray]:
    """The four IDX files of an MNIST-like data set; with ``digests`` (a folder name in
    ``sources.KNOWN_DIGESTS``, e.g. ``"mnist"``) each is checked against its known digest."""
    names = {
        "x_train": "train-images-idx3-ubyte",
        "y_train": "train-labels-idx1-ubyte",
        "x_test": "t10k-images-idx3-ubyte",
        "y_test": "t10k-labels-idx1-ubyte",
    }
    out = {}
    for key, stem in names.items():
        candidates = [folder / f"{prefix}{stem}.gz", folder / f"{prefix}{stem}"]
        path = next((p for p in candidates if p.exists()), None)
        if path is None:
            raise FileNotFoundError(f"{candidates[0]} does not exist")
        out[key] = read_idx(path, f"{digests}/{stem}" if digests else None)
    out["y_train"] = out["y_train"].astype(np.int64)
    out["y_test"] = out["y_test"].astype(np.int64)
    return out


def _torchvision(cls_name: str, **kwargs) -> Callable[[], dict[str, np.ndarray]]:
    """Download with torchvision (it checks MD5 sums) into a temporary folder."""

    def load() -> dict[str, np.ndarray]:
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                train = cls(tmp, train=True, download=True, **kwargs)
                test = cls(tmp, train=False, download=True, **kwargs)
            except Exception as exc:  # network errors come in many types
                raise OSError(f"torchvision {cls_name} download failed: {exc}") from exc
            x_tr, x_te = np.asarray(train.data), np.asarray(test.data)
            y_tr, y_te = np.asarray(train.targets), np.asarray(test.targets)
        return {"x_train": x_tr, "y_train": y_tr.astype(np.int64), "x_test": x_te, "y_test": y_te.astype(np.int64)}

    return load


@DATASETS.register("mnist")
def _mnist() -> tuple[dict, str]:
    return obtain(
        "mnist",
        [
            ("$FEDGRAD_DATA_SOURCE/mnist", lambda: _idx_quad(from_source("mnist"), digests="mnist")),
            ("torchvision download", _torchvision("MNIST")),
        ],
        "  - set FEDGRAD_DATA_SOURCE to a folder holding mnist/{train,t10k}-*-ubyte.gz\n"
        "  - or run with internet access (torchvision downloads MNIST)",
    )


@DATASETS.register("fashion_mnist")
def _fashion_mnist() -> tuple[dict, str]:
    return obtain(
        "fashion_mnist",
        [
            (
                "$FEDGRAD_DATA_SOURCE/fashion-mnist",
                lambda: _idx_quad(from_source("fashion-mnist"), digests="fashion-mnist"),
            ),
            ("torchvision download", _torchvision("FashionMNIST")),
            (
                "Debian dataset-fashion-mnist",
                lambda: _idx_quad(Path("/usr/share/datasets/fashion-mnist"), digests="fashion-mnist"),
            ),
        ],
        "  - apt-get install dataset-fashion-mnist (files in /usr/share/datasets/fashion-mnist)\n"
        "  - set FEDGRAD_DATA_SOURCE to a folder holding fashion-mnist/*-ubyte.gz\n"
        "  - or run with internet access (torchvision downloads Fashion-MNIST)",
    )


def _emnist_from_source() -> dict[str, np.ndarray]:
    # No per-file digest of EMNIST is known (torchvision checks one MD5 for the whole zip); the IDX
    # files are parsed as raw bytes with a size check, which cannot run code.
    arrays = _idx_quad(from_source("emnist"), prefix="emnist-digits-")
    return _emnist_upright(arrays)


def _emnist_upright(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # EMNIST's files store every image transposed relative to MNIST; turn them upright once here.
    for key in ("x_train", "x_test"):
        arrays[key] = np.ascontiguousarray(arrays[key].transpose(0, 2, 1))
    return arrays


@DATASETS.register("emnist")
def _emnist() -> tuple[dict, str]:
    return obtain(
        "emnist",
        [
            ("$FEDGRAD_DATA_SOURCE/emnist", _emnist_from_source),
            ("torchvision download", lambda: _emnist_upright(_torchvision("EMNIST", split="digits")())),
        ],
        "  - set FEDGRAD_DATA_SOURCE to a folder holding emnist/emnist-digits-{train,test}-*-ubyte.gz\n"
        "    (note: the train/test files are named emnist-digits-train-images-idx3-ubyte.gz and so on)\n"
        "  - or run with internet access (torchvision downloads EMNIST)\n"
        "  - without either, use --dataset mnist as the stand-in (the project's offline copies have no full EMNIST)",
    )


# --------------------------------------------------------------------------- CIFAR-10


def _cifar_from_jpeg_tar() -> dict[str, np.ndarray]:
    """The offline copy: a tar of train/<class>/*.jpg and test/<class>/*.jpg (lossy JPEG).

    The archive is checked against its SHA-256 before it is opened and read in memory only
    (members are never extracted to disk)."""
    from PIL import Image

    path = from_source("cifar10-jpeg.tar.gz")
    data = read_checked(path, "cifar10-jpeg.tar.gz")
    parts: dict[str, list] = {"train": [], "test": []}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".jpg"):
                continue
            split, cls, fname = Path(member.name).parts[-3:]
            raw = tar.extractfile(member).read()  # type: ignore[union-attr]
            image = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"), dtype=np.uint8)
            parts[split].append((cls, fname, image))
    out = {}
    for split, items in parts.items():
        items.sort(key=lambda t: (CIFAR10_CLASSES.index(t[0]), t[1]))  # tar order is arbitrary
        out[f"x_{split}"] = np.stack([t[2] for t in items])
        out[f"y_{split}"] = np.array([CIFAR10_CLASSES.index(t[0]) for t in items], dtype=np.int64)
    return out


def _cifar_from_batches() -> dict[str, np.ndarray]:
    """The original python batches (cifar-10-batches-py/) in the source folder.

    Each batch is checked against torchvision's MD5 for it, then unpickled with
    ``restricted_loads`` (numpy arrays and plain values only)."""
    folder = from_source("cifar-10-batches-py")

    def read(names):
        xs, ys = [], []
        for n in names:
            path = folder / n
            if not path.exists():
                raise FileNotFoundError(f"{path} does not exist")
            d = restricted_loads(read_checked(path, f"cifar-10-batches-py/{n}"), encoding="latin1")
            if not isinstance(d, dict) or "data" not in d or "labels" not in d:
                raise ValueError(f"{path} is not a CIFAR-10 python batch (no 'data' / 'labels')")
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(np.asarray(d["labels"], dtype=np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    x_tr, y_tr = read([f"data_batch_{i}" for i in range(1, 6)])
    x_te, y_te = read(["test_batch"])
    return {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}


@DATASETS.register("cifar10")
def _cifar10() -> tuple[dict, str]:
    return obtain(
        "cifar10",
        [
            ("$FEDGRAD_DATA_SOURCE/cifar-10-batches-py (original)", _cifar_from_batches),
            ("torchvision download (original)", _torchvision("CIFAR10")),
            ("$FEDGRAD_DATA_SOURCE/cifar10-jpeg.tar.gz (LOSSY JPEG copy, ~30 dB PSNR)", _cifar_from_jpeg_tar),
        ],
        "  - set FEDGRAD_DATA_SOURCE to a folder holding cifar-10-batches-py/ or cifar10-jpeg.tar.gz\n"
        "  - or run with internet access (torchvision downloads CIFAR-10)",
    )


__all__ = ["DataUnavailable", "available_datasets", "load_task", "prepare", "CIFAR10_CLASSES"]
