import numpy as np
import pytest
import torch

from fedgrad_core.data import DataUnavailable, load_task
from fedgrad_core.data.edge_cases import load_edge_case, tail_edge_case


def test_digits_needs_no_download_and_is_normalised():
    task = load_task("digits")

    assert task.train.x.shape[1:] == (1, 8, 8)
    assert (len(task.train), len(task.test)) == (1437, 360)
    assert task.num_classes == 10
    assert abs(float(task.train.x.mean())) < 1e-4  # normalised with the training split's statistics
    assert abs(float(task.train.x.std()) - 1) < 1e-3


def test_normalize_puts_raw_pixels_on_the_task_scale():
    task = load_task("digits")

    white = task.normalize(np.full((1, 8, 8), 16, dtype=np.uint8))

    assert torch.allclose(white, task.pixel_value(16.0).view(1, 1, 1, 1).expand(1, 1, 8, 8))


def test_digits_tail_edge_case_is_held_out_of_the_clean_data():
    task = load_task("digits")

    edge, clean = tail_edge_case(task, source_class=7, target_class=1, tail_fraction=0.4, seed=0)

    sevens = int((task.train.y == 7).sum())  # the tail comes from the training split only
    tail = round(0.4 * sevens)
    assert edge.test_size_before == tail // 3 and len(edge.train) == tail - tail // 3
    assert len(clean.train) == len(task.train) - tail
    assert clean.test is task.test  # the clean test split is never changed
    assert edge.target == 1
    # no tail image is left in the clean training data
    pool = clean.train.x.flatten(1)
    for image in torch.cat([edge.train, edge.test]).flatten(1):
        assert not (pool == image).all(dim=1).any()


def test_tail_examples_are_less_typical_than_the_rest_of_their_class():
    task = load_task("digits")
    edge, clean = tail_edge_case(task, source_class=7, target_class=1, seed=0)

    sevens = clean.train.x[clean.train.y == 7].flatten(1)
    centre = sevens.mean(0)
    tail_distance = (torch.cat([edge.train, edge.test]).flatten(1) - centre).norm(dim=1).mean()
    rest_distance = (sevens - centre).norm(dim=1).mean()
    assert tail_distance > rest_distance


def test_missing_data_set_names_the_ways_to_provide_it(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDGRAD_DATA_ROOT", str(tmp_path / "empty"))
    monkeypatch.delenv("FEDGRAD_DATA_SOURCE", raising=False)
    import fedgrad_core.data.datasets as datasets

    def offline():
        raise OSError("no network here")

    monkeypatch.setattr(datasets, "_torchvision", lambda *a, **k: offline)

    with pytest.raises(DataUnavailable) as info:
        load_task("mnist")

    message = str(info.value)
    assert "'mnist'" in message and "FEDGRAD_DATA_SOURCE" in message and "internet" in message


@pytest.mark.needs_data
def test_mnist_from_the_offline_source(data_source, monkeypatch, tmp_path):
    monkeypatch.setenv("FEDGRAD_DATA_ROOT", str(tmp_path))

    task = load_task("mnist")

    assert (len(task.train), len(task.test)) == (60000, 10000)
    assert task.image_shape == (1, 28, 28)
    assert abs(task.mean[0] - 0.1307) < 1e-3  # canonical MNIST statistics
    assert (tmp_path / "mnist.npz").exists()  # prepared once, read from there next time
    assert load_task("mnist").source == task.source


@pytest.mark.needs_data
def test_ardis_edge_case_for_mnist(data_source):
    task = load_task("mnist")

    edge, same = load_edge_case(task)

    assert same is task
    assert edge.train.shape == (330, 1, 28, 28)
    assert edge.test.shape == (100, 1, 28, 28)  # the 100 test "7"s of ARDIS IV
    assert edge.target == 1


@pytest.mark.needs_data
def test_cifar10_and_southwest(data_source):
    task = load_task("cifar10")
    edge, _ = load_edge_case(task)

    assert (len(task.train), len(task.test)) == (50000, 10000)
    assert task.image_shape == (3, 32, 32)
    assert np.bincount(task.train.y.numpy()).tolist() == [5000] * 10
    # 196 test images less the 8 near-duplicates of training images (tests/test_edge_cases.py)
    assert edge.train.shape == (784, 3, 32, 32) and edge.test.shape == (188, 3, 32, 32)
    assert edge.target == 9


@pytest.mark.needs_data
def test_emnist_loader_turns_images_upright(data_source):
    """The EMNIST fragment (raw EMNIST orientation) matches MNIST's class means only once upright."""
    from fedgrad_core.data.datasets import _emnist_upright
    from fedgrad_core.data.sources import load_arrays

    fragment = load_arrays(data_source / "edge-case" / "emnist_digits_fragment.npz")
    mnist = load_task("mnist")
    means = torch.stack([mnist.train.x[mnist.train.y == c].mean(0) for c in range(10)]).flatten(1)

    def template_accuracy(images):  # nearest MNIST class mean
        x = mnist.normalize(images).flatten(1)
        return float((torch.cdist(x, means).argmin(1).numpy() == fragment["y"]).mean())

    upright = _emnist_upright({"x_train": fragment["x"].copy(), "x_test": fragment["x"][:1].copy()})["x_train"]
    assert template_accuracy(upright) > 0.5 > 0.25 > template_accuracy(fragment["x"])


def test_fashion_mnist_from_debians_package(monkeypatch, tmp_path):
    from pathlib import Path

    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        pytest.skip("needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
    monkeypatch.setenv("FEDGRAD_DATA_ROOT", str(tmp_path))
    import fedgrad_core.data.datasets as datasets

    def offline():
        raise OSError("no network here")

    monkeypatch.setattr(datasets, "_torchvision", lambda *a, **k: offline)

    task = load_task("fashion_mnist")
    edge, clean = load_edge_case(task)

    assert (len(task.train), len(task.test)) == (60000, 10000)
    assert task.source == "Debian dataset-fashion-mnist"
    assert edge.target == 5 and len(clean.train) < len(task.train) and clean.test is task.test
