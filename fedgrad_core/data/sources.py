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

Checked reads (no file from a source folder or the data root can run code when read):

* every file taken from ``$FEDGRAD_DATA_SOURCE``, Debian's package or a download is checked against
  the digest its original download has (``KNOWN_DIGESTS``) *before* it is parsed; a mismatch is a
  ``ChecksumMismatch`` naming the file, both digests and how to fix it (it is not an ``OSError``, so
  a tampered file stops the run instead of falling through to the next source);
* IDX files (MNIST, Fashion-MNIST) are hashed after decompression: the offline copies and Debian's
  package re-gzip the canonical files (other gzip headers), while the IDX bytes are the canonical
  ones (their MD5s equal the published uncompressed MD5s of LeCun's and Zalando's releases);
* pickles (the Southwest arrays, CIFAR-10's python batches) are checked first and then read with
  ``restricted_loads``, which builds numpy arrays and plain Python values only: any other global
  (``os.system``, ``builtins.eval``...) is refused before it is looked up;
* ``.npz`` files are read with ``allow_pickle=False``; the ones we write under the data root get a
  ``.sha256`` sidecar that is verified when they are read back.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import logging
import os
import pickle
import tempfile
import urllib.request
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

#: The digest of every file the package reads from a source folder, keyed by its path under
#: ``$FEDGRAD_DATA_SOURCE`` (algorithm, hex digest).  IDX entries are the digest of the
#: *decompressed* file.  Where they come from:
#:
#: * MNIST: SHA-256 of the offline copies' IDX bytes, whose MD5s are the canonical uncompressed MD5s
#:   (6bbc9ace..., a25bea73..., 2646ac64..., 27ae3e4e...);
#: * Fashion-MNIST: SHA-256 of the IDX bytes in Debian's dataset-fashion-mnist, whose MD5s are
#:   Zalando's uncompressed MD5s (f4a8712d..., 9018921c..., 8181f547..., 15d48437...);
#: * Southwest: the SHA-256 the download path checks (Wang et al.'s files; the offline copies match);
#: * CIFAR-10 python batches: torchvision's per-file MD5s (the only digest its download path
#:   knows; no original batch is available offline to compute a SHA-256 from);
#: * the offline CIFAR-10 JPEG tar and ARDIS npz exist only as the project's offline copies: their
#:   SHA-256 (for ``ardis.npz`` a digest of its arrays, see ``array_digest``, so that
#:   ``data_scripts/prepare_ardis.py`` run on the original CSV files reproduces it).
#:
#: EMNIST's per-file digests are unknown here (torchvision checks one MD5 for the whole zip): its
#: IDX files are parsed as raw bytes with a strict size check, which cannot run code.
KNOWN_DIGESTS: dict[str, tuple[str, str]] = {
    "mnist/train-images-idx3-ubyte": ("sha256", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "mnist/train-labels-idx1-ubyte": ("sha256", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "mnist/t10k-images-idx3-ubyte": ("sha256", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "mnist/t10k-labels-idx1-ubyte": ("sha256", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    "fashion-mnist/train-images-idx3-ubyte": (
        "sha256",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ),
    "fashion-mnist/train-labels-idx1-ubyte": (
        "sha256",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    "fashion-mnist/t10k-images-idx3-ubyte": (
        "sha256",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ),
    "fashion-mnist/t10k-labels-idx1-ubyte": (
        "sha256",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
    "edge-case/southwest_images_new_train.pkl": (
        "sha256",
        "4dfb293d5bfc073cb26f9019d37b7660bb4cfbe4b8d0cf9843523e884539b26a",
    ),
    "edge-case/southwest_images_new_test.pkl": (
        "sha256",
        "cad0410ce01bd53af349fd2094799a8c58c508ae39ec1c01d038868cb1e5d64d",
    ),
    "edge-case/ardis.npz": ("array-sha256", "9b297837a9aec1b85f590e1d69fc217895b6f09f85513676e995af2291d9961a"),
    "cifar10-jpeg.tar.gz": ("sha256", "eb52d4068905a202b0e13e2dbdda0be0a9e02d6f078c94e2f1ffcb8567b0454d"),
    "cifar-10-batches-py/data_batch_1": ("md5", "c99cafc152244af753f735de768cd75f"),
    "cifar-10-batches-py/data_batch_2": ("md5", "d4bba439e000b95fd0a9bffe97cbabec"),
    "cifar-10-batches-py/data_batch_3": ("md5", "54ebc095f3ab1f0389bbae665268c751"),
    "cifar-10-batches-py/data_batch_4": ("md5", "634d18415352ddfa80567beed471001a"),
    "cifar-10-batches-py/data_batch_5": ("md5", "482c414d41f54cd18b22e5b47cb7c3cb"),
    "cifar-10-batches-py/test_batch": ("md5", "40351d587109b95175f43aff81a1287e"),
}


class DataUnavailable(FileNotFoundError):
    """No source could provide a data set; the message lists the ways to provide it."""


class ChecksumMismatch(ValueError):
    """A data file is not the original: its digest differs from the known one.

    Deliberately not an ``OSError``: a damaged or replaced file must stop the run, not be skipped
    silently in favour of the next source.
    """

    def __init__(self, path: Path | str, algorithm: str, actual: str, expected: str, fix: str):
        self.path, self.algorithm, self.actual, self.expected = str(path), algorithm, actual, expected
        super().__init__(
            f"{path} is not the original file: its {algorithm} is {actual}, the original's is "
            f"{expected}. It was not used. To fix: {fix}"
        )


def digest_bytes(data: bytes, algorithm: str) -> str:
    return hashlib.new(algorithm, data).hexdigest()


def check_digest(path: Path | str, actual: str, key: str, *, fix: str | None = None, of: str = "") -> None:
    """Raise ``ChecksumMismatch`` unless ``actual`` is the known digest of ``key`` (KNOWN_DIGESTS);
    ``of`` says what was hashed when it is not the file itself."""
    algorithm, expected = KNOWN_DIGESTS[key]
    if actual != expected:
        raise ChecksumMismatch(
            path,
            f"{algorithm}{' of ' + of if of else ''}",
            actual,
            expected,
            fix
            or f"replace it with the original {key} (for example from the project's offline copy or "
            "the original download), or unset FEDGRAD_DATA_SOURCE to download it",
        )


def read_checked(path: Path, key: str) -> bytes:
    """The bytes of ``path`` after checking them against the known digest of ``key``."""
    data = Path(path).read_bytes()
    check_digest(path, digest_bytes(data, KNOWN_DIGESTS[key][0]), key)
    return data


def array_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over the arrays' names, dtypes, shapes and bytes (sorted by name).

    Used for ``.npz`` files we did not write byte for byte: a zip member carries a time stamp, so
    two writes of the same arrays differ as files but not in this digest.
    """
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- restricted unpickling


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Python 3 pickles of bytes under protocol 2 call _codecs.encode(text, "latin1"); allow only that
    # (other codecs decompress, e.g. zlib_codec, and have no business in an array pickle).
    if encoding not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


def _numpy_private(name: str):
    """numpy's array-rebuilding helper ``name`` (its module moved from numpy.core to numpy._core)."""
    import importlib

    module = "multiarray" if name == "_reconstruct" else "numeric"
    try:
        return getattr(importlib.import_module(f"numpy._core.{module}"), name)  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        return getattr(importlib.import_module(f"numpy.core.{module}"), name)


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that can build numpy arrays and plain values, and nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),  # protocol 5 pickles of arrays
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refused to load global {module}.{name}: only numpy array reconstruction is allowed"
            )
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if name in ("_reconstruct", "_frombuffer"):
            return _numpy_private(name)
        return getattr(np, name)


def restricted_loads(data: bytes, *, encoding: str = "ASCII"):
    """Unpickle ``data`` allowing only numpy arrays (no object dtype) and plain Python values.

    A pickle that names any other global (the way every code-running pickle works: ``os.system``,
    ``builtins.eval``, ``subprocess.Popen``...) raises ``pickle.UnpicklingError`` before that global
    is imported or called.
    """
    value = _ArrayUnpickler(io.BytesIO(data), encoding=encoding).load()
    _refuse_object_arrays(value)
    return value


def _refuse_object_arrays(value) -> None:
    if isinstance(value, np.ndarray) and value.dtype.hasobject:
        raise pickle.UnpicklingError("refused an object array in a data pickle")
    if isinstance(value, dict):
        for v in value.values():
            _refuse_object_arrays(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _refuse_object_arrays(v)


def data_root() -> Path:
    return Path(os.environ.get("FEDGRAD_DATA_ROOT", Path.home() / ".cache" / "fedgrad" / "data"))


def source_dir() -> Path | None:
    value = os.environ.get("FEDGRAD_DATA_SOURCE")
    return Path(value) if value else None


def prepared_path(name: str) -> Path:
    return data_root() / f"{name}.npz"


def save_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write an .npz atomically (a temporary file in the same folder, then a rename) and the
    ``array_digest`` of its arrays into ``<path>.sha256``, which ``load_arrays`` verifies.

    The sidecar holds a digest of the arrays rather than of the file so that two processes
    preparing the same data set at once write the same sidecar (zip members carry time stamps).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        _sidecar(path).write_text(f"{array_digest(arrays)}  {path.name} (array_digest)\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def load_arrays(path: Path, *, verify: bool = True) -> dict[str, np.ndarray]:
    """The arrays of an .npz, never unpickling (``allow_pickle=False``).

    When ``verify`` and a ``<path>.sha256`` sidecar exists (every file ``save_arrays`` wrote), the
    arrays must match its digest; a file without a sidecar (prepared by an older version) is read
    as is, which is safe because nothing in an npz read this way can run code.
    """
    path = Path(path)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    sidecar = _sidecar(path)
    if verify and sidecar.exists():
        text = sidecar.read_text().split()
        expected = text[0] if text else "(empty sidecar)"
        actual = array_digest(arrays)
        if actual != expected:
            raise ChecksumMismatch(
                path,
                "array SHA-256",
                actual,
                expected,
                f"delete {path} and {sidecar}; the next run prepares it again from its source",
            )
    return arrays


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


def read_idx(path: Path, key: str | None = None) -> np.ndarray:
    """An unsigned-byte IDX file (MNIST's format), gzipped or not.

    With ``key`` (an entry of ``KNOWN_DIGESTS``) the decompressed bytes must have the known digest.
    The header's shape must account for every byte of the file.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if key is not None:
        check_digest(path, digest_bytes(data, KNOWN_DIGESTS[key][0]), key, of="the decompressed IDX bytes")
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise OSError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    offset = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != offset + int(np.prod(shape, dtype=np.int64)):
        raise OSError(f"{path}: the IDX header announces shape {shape}, the file holds {len(data) - offset} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape).copy()


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
