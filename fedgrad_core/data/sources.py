"""Where raw data comes from, in order, and the prepared form it is kept in.

Sources, tried in this order for every data set:

1. already prepared: ``<data root>/<name>.npz`` (the data root is ``$FEDGRAD_DATA_ROOT``, default
   ``~/.cache/fedgrad/data``);
2. a local folder named by ``$FEDGRAD_DATA_SOURCE`` laid out like the project's offline copies
   (``mnist/*-ubyte.gz``, ``cifar10-jpeg.tar.gz``, ``edge-case/...``);
3. the original download (torchvision's, which verifies its own checksums, or the original address
   with the SHA-256 written here);
4. for Fashion-MNIST, Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets``).

When none works, ``DataUnavailable`` names the data set and every way to provide it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np


class DataUnavailable(FileNotFoundError):
    """No source could provide a data set; the message lists the ways to provide it."""


def data_root() -> Path:
    return Path(os.environ.get("FEDGRAD_DATA_ROOT", Path.home() / ".cache" / "fedgrad" / "data"))


def source_dir() -> Path | None:
    value = os.environ.get("FEDGRAD_DATA_SOURCE")
    return Path(value) if value else None


def prepared_path(name: str) -> Path:
    return data_root() / f"{name}.npz"


def save_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write an .npz atomically: a temporary file in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


Loader = Callable[[], dict[str, np.ndarray]]


def obtain(name: str, attempts: Sequence[tuple[str, Loader]], how_to: str) -> tuple[dict[str, np.ndarray], str]:
    """The prepared arrays of ``name``, preparing them from the first source that works.

    ``attempts`` are (description, loader) pairs tried in order after the prepared file; a loader
    signals "not available here" by raising ``OSError`` (``FileNotFoundError``, a failed
    download...).  Returns the arrays and a description of the source used.
    """
    path = prepared_path(name)
    if path.exists():
        arrays = load_arrays(path)
        return arrays, str(arrays.pop("_source", np.array("prepared")).item())
    failures = []
    for description, loader in attempts:
        try:
            arrays = loader()
        except OSError as exc:  # unavailable here: try the next source
            failures.append(f"  - {description}: {exc}")
            continue
        save_arrays(path, {**arrays, "_source": np.array(description)})
        return arrays, description
    raise DataUnavailable(
        f"data set {name!r} is not available. Tried:\n  - prepared file {path}: not found\n"
        + "\n".join(failures)
        + f"\nProvide it in one of these ways:\n{how_to}"
        + f"\n  - or put a prepared {name}.npz into {data_root()} (set FEDGRAD_DATA_ROOT to move it)"
    )


def from_source(*parts: str) -> Path:
    """A file under $FEDGRAD_DATA_SOURCE, or FileNotFoundError saying why not."""
    root = source_dir()
    if root is None:
        raise FileNotFoundError("FEDGRAD_DATA_SOURCE is not set")
    path = root.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    return path


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise OSError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()


def download(url: str, dest: Path, sha256: str) -> Path:
    """Fetch ``url`` to ``dest`` unless a file with the right checksum is already there."""
    if dest.exists() and _sha256(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as fh:
            while chunk := response.read(1 << 20):
                fh.write(chunk)
    except Exception as exc:  # urllib raises several types; all mean "not available"
        tmp.unlink(missing_ok=True)
        raise OSError(f"download of {url} failed: {exc}") from exc
    digest = _sha256(tmp)
    if digest != sha256:
        tmp.unlink(missing_ok=True)
        raise OSError(f"checksum mismatch for {url}: got {digest}, expected {sha256}")
    os.replace(tmp, dest)
    return dest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
