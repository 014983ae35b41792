import numpy as np
import pytest
import torch

from fedgrad_core.data import DataUnavailable, load_task
from fedgrad_core.data.edge_cases import load_edge_case, tail_edge_case
from fedgrad_core.data.task import channel_statistics, normalize_images


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


def test_channel_statistics_by_hand():
    # Prepare: 2 images of 1 x 2 pixels, 2 channels: channel 0 holds 0, 255, 255, 0; channel 1 all 51
    images = np.array([[[[0, 51], [255, 51]]], [[[255, 51], [0, 51]]]], dtype=np.uint8)
    # Execute
    mean, std = channel_statistics(images, 255.0)
    # Assert: channel 0 is half 0, half 1; channel 1 is constant 0.2
    assert mean == pytest.approx((0.5, 0.2), abs=1e-15) and std == pytest.approx((0.5, 0.0), abs=1e-15)
    grey_mean, grey_std = channel_statistics(np.array([[[0, 4], [8, 16]]], dtype=np.uint8), 16.0)
    assert grey_mean == pytest.approx((0.4375,)) and grey_std == pytest.approx((np.std([0, 0.25, 0.5, 1.0]),))
    float_mean, _ = channel_statistics(np.array([[[0.0, 8.0]]], dtype=np.float32), 16.0)
    assert float_mean == pytest.approx((0.25,))


def test_channel_statistics_exact_over_many_pixels():
    # 2**25 values per channel: a float32 reduction drifts far from the mean here (it returned
    # 0.32768 for every CIFAR-10 channel); counting by value is exact.
    images = np.empty((2**25, 1, 1, 2), dtype=np.uint8)
    images[..., 0], images[..., 1] = 200, 100
    images[0, 0, 0, 0] = 0

    mean, _ = channel_statistics(images, 255.0)

    assert mean[0] == pytest.approx((200 * (2**25 - 1)) / 255 / 2**25, rel=1e-12)
    assert mean[1] == pytest.approx(100 / 255, rel=1e-12)


def test_normalize_is_x_over_pixel_max_minus_mean_over_std():
    images = np.array([[[[0, 10], [200, 255]]]], dtype=np.uint8).reshape(1, 2, 2, 1)

    out = normalize_images(images, (0.25,), (0.5,), 255.0)

    expected = (torch.tensor([[0.0, 10.0], [200.0, 255.0]]) / 255.0 - 0.25) / 0.5
    assert out.shape == (1, 1, 2, 2) and out.dtype == torch.float32
    assert torch.equal(out[0, 0], expected)


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
    # the training split's own channel statistics (the offline JPEG copy's; the original batches
    # give 0.4914, 0.4822, 0.4465)
    assert task.mean == pytest.approx((0.4914, 0.4822, 0.4465), abs=2e-3)
    assert task.std == pytest.approx((0.2470, 0.2435, 0.2616), abs=4e-3)
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
