"""Reading a data file never runs code, and every source file is checked against its digest (issue 12)."""

import gzip
import hashlib
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from fedgrad_core.data import load_task
from fedgrad_core.data.edge_cases import edge_case_arrays
from fedgrad_core.data.sources import (
    KNOWN_DIGESTS,
    ChecksumMismatch,
    array_digest,
    load_arrays,
    read_idx,
    restricted_loads,
    save_arrays,
)

PACKAGE = Path(__file__).resolve().parents[1] / "fedgrad_core"


class _WritesMarker:
    """Unpickling this calls ``pathlib.Path.touch`` on a marker path: code run by a pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _crafted_pickle(marker: Path) -> bytes:
    data = pickle.dumps(_WritesMarker(marker))
    assert b"touch" in data  # the payload really names a callable
    return data


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """An empty data root and an empty source folder (the caller fills it)."""
    source = tmp_path / "source"
    (source / "edge-case").mkdir(parents=True)
    monkeypatch.setenv("FEDGRAD_DATA_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("FEDGRAD_DATA_SOURCE", str(source))
    return source


def test_crafted_southwest_pickle_is_refused_and_runs_nothing(isolated, tmp_path):
    # Prepare: a pickle that would create a marker file, placed as a Southwest file
    marker = tmp_path / "marker"
    crafted = _crafted_pickle(marker)
    for name in ("southwest_images_new_train.pkl", "southwest_images_new_test.pkl"):
        (isolated / "edge-case" / name).write_bytes(crafted)

    # Execute
    with pytest.raises(ChecksumMismatch) as info:
        edge_case_arrays("southwest")

    # Assert: one clear error naming the file, both digests and the fix; nothing ran
    message = str(info.value)
    assert "southwest_images_new_train.pkl" in message
    assert hashlib.sha256(crafted).hexdigest() in message
    assert KNOWN_DIGESTS["edge-case/southwest_images_new_train.pkl"][1] in message
    assert "To fix:" in message
    assert not marker.exists()


def test_restricted_unpickler_refuses_code_even_without_a_checksum(tmp_path):
    marker = tmp_path / "marker"

    with pytest.raises(pickle.UnpicklingError, match="refused to load global pathlib"):
        restricted_loads(_crafted_pickle(marker))

    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        b"cos\nsystem\n(S'true'\ntR.",  # protocol 0: os.system('true')
        b"cbuiltins\neval\n(S'1'\ntR.",
        pickle.dumps(np.array([object()], dtype=object)[:0]),  # an object array
    ],
)
def test_restricted_unpickler_refuses_other_globals_and_object_arrays(payload):
    with pytest.raises(pickle.UnpicklingError):
        restricted_loads(payload)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_restricted_unpickler_reads_numpy_arrays_and_cifar_like_batches(protocol):
    # Prepare: what the Southwest files (a uint8 array) and CIFAR-10 batches (a dict) hold
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    batch = {"batch_label": "training batch 1 of 5", "labels": [3, 9], "data": images.reshape(2, -1), "filenames": [b"a.png", b"b.png"]}

    # Execute
    array = restricted_loads(pickle.dumps(images, protocol=protocol))
    loaded = restricted_loads(pickle.dumps(batch, protocol=protocol), encoding="latin1")

    # Assert
    assert array.dtype == np.uint8 and np.array_equal(array, images)
    assert loaded["labels"] == [3, 9] and np.array_equal(loaded["data"], images.reshape(2, -1))


def test_crafted_cifar_batch_is_refused_and_runs_nothing(isolated, tmp_path, monkeypatch):
    import fedgrad_core.data.datasets as datasets

    marker = tmp_path / "marker"
    folder = isolated / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(_crafted_pickle(marker))

    with pytest.raises(ChecksumMismatch, match=r"data_batch_1 is not the original file: its md5 is [0-9a-f]{32}"):
        datasets._cifar_from_batches()

    assert not marker.exists()


def test_tampered_prepared_file_names_both_digests(monkeypatch, tmp_path):
    # Prepare: a prepared file written by us, then one value changed behind our back
    path = tmp_path / "toy.npz"
    arrays = {"x": np.arange(12, dtype=np.uint8).reshape(3, 4), "y": np.array([0, 1, 2])}
    save_arrays(path, arrays)
    assert np.array_equal(load_arrays(path)["x"], arrays["x"])
    tampered = {**arrays, "x": arrays["x"].copy()}
    tampered["x"][1, 2] += 1
    np.savez(path, **tampered)

    # Execute
    with pytest.raises(ChecksumMismatch) as info:
        load_arrays(path)

    # Assert
    message = str(info.value)
    assert str(path) in message and array_digest(tampered) in message and array_digest(arrays) in message
    assert "delete" in message


def test_idx_reader_refuses_a_truncated_file(tmp_path):
    path = tmp_path / "labels-idx1-ubyte.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2, 3]))  # announces 5 labels, holds 3

    with pytest.raises(OSError, match="announces shape"):
        read_idx(path)


def test_no_unchecked_unpickling_in_the_package():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bpickle\.loads?\(|allow_pickle\s*=\s*True", line):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert offenders == []


# --------------------------------------------------------------------------- the real files (data)


@pytest.mark.needs_data
def test_known_digests_are_those_of_the_offline_originals(data_source):
    checked = 0
    for key, (algorithm, expected) in KNOWN_DIGESTS.items():
        path = data_source / key
        gz = path.with_name(path.name + ".gz")
        if gz.exists():  # IDX files: the digest of the decompressed bytes
            actual = hashlib.new(algorithm, gzip.decompress(gz.read_bytes())).hexdigest()
        elif path.exists() and algorithm == "array-sha256":
            actual = array_digest(load_arrays(path))
        elif path.exists():
            actual = hashlib.new(algorithm, path.read_bytes()).hexdigest()
        else:
            continue
        assert actual == expected, key
        checked += 1
    assert checked >= 8  # MNIST x4, Southwest x2, ARDIS, the CIFAR-10 JPEG tar


@pytest.mark.needs_data
def test_tampered_southwest_file_names_both_digests(data_source, isolated, tmp_path):
    # Prepare: the original files with one byte of the test set changed (a pixel)
    for name in ("southwest_images_new_train.pkl", "southwest_images_new_test.pkl"):
        shutil.copy(data_source / "edge-case" / name, isolated / "edge-case" / name)
    target = isolated / "edge-case" / "southwest_images_new_test.pkl"
    data = bytearray(target.read_bytes())
    data[-100] ^= 0x01
    target.write_bytes(bytes(data))

    # Execute
    with pytest.raises(ChecksumMismatch) as info:
        edge_case_arrays("southwest")

    # Assert
    message = str(info.value)
    assert str(target) in message
    assert hashlib.sha256(bytes(data)).hexdigest() in message
    assert KNOWN_DIGESTS["edge-case/southwest_images_new_test.pkl"][1] in message


@pytest.mark.needs_data
def test_tampered_mnist_file_stops_instead_of_falling_back(data_source, isolated):
    # Prepare: MNIST with one label changed in the decompressed training labels
    (isolated / "mnist").mkdir()
    for path in (data_source / "mnist").glob("*.gz"):
        shutil.copy(path, isolated / "mnist" / path.name)
    labels = isolated / "mnist" / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[8] = (raw[8] + 1) % 10
    labels.write_bytes(gzip.compress(bytes(raw)))

    # Execute / Assert: a ChecksumMismatch (not a download attempt or DataUnavailable)
    with pytest.raises(ChecksumMismatch, match="train-labels-idx1-ubyte.gz is not the original file"):
        load_task("mnist")
