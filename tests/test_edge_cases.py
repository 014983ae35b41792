"""Edge-case backdoor test sets: no near-duplicates of the attackers' training images, and one clean
test split per data set whatever the attack (issue 8)."""

import numpy as np
import pytest
import torch

from fedgrad_core.attacks import make_attack
from fedgrad_core.data import Split, Task, load_task
from fedgrad_core.data.edge_cases import (
    NEAR_DUPLICATE_TOLERANCE,
    TAIL_CLASSES,
    edge_case_arrays,
    load_edge_case,
    near_duplicates,
    tail_edge_case,
)


def _all_symmetries(images: np.ndarray) -> np.ndarray:
    """N x H x W (x C) -> N x 8 x H x W (x C): every rotation and flip (an independent rewrite)."""
    out = []
    for k in range(4):
        rotated = np.rot90(images, k, axes=(1, 2))
        out += [rotated, np.flip(rotated, axis=2)]
    return np.stack(out, axis=1)


def _closest(test: np.ndarray, pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: for each test image the smallest mean and max absolute difference to any
    rotated/flipped pool image (no pruning)."""
    views = _all_symmetries(pool).reshape(len(pool) * 8, -1).astype(np.float64)
    means, maxes = [], []
    for image in test.reshape(len(test), -1).astype(np.float64):
        diff = np.abs(views - image)
        means.append(diff.mean(axis=1).min())
        maxes.append(diff.max(axis=1).min())
    return np.array(means), np.array(maxes)


def _assert_no_near_duplicates(test: np.ndarray, pool: np.ndarray) -> None:
    mean_diff, max_diff = _closest(test, pool)
    assert (max_diff > 0).all(), "an exact duplicate of a training image is in the test set"
    assert (mean_diff > NEAR_DUPLICATE_TOLERANCE).all(), f"near-duplicates at {np.flatnonzero(mean_diff <= NEAR_DUPLICATE_TOLERANCE)}"


def _unit(task: Task, x: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(task.mean).view(1, -1, 1, 1)
    std = torch.tensor(task.std).view(1, -1, 1, 1)
    return (x * std + mean).permute(0, 2, 3, 1).numpy()


# --------------------------------------------------------------------------- the criterion


def test_near_duplicates_finds_rotations_flips_and_small_differences_only():
    # Prepare: one 4x4 pool image with distinct pixels, and test images derived from it.
    pool_image = np.arange(16, dtype=np.float32).reshape(4, 4) / 255
    pool = np.stack([pool_image, np.full((4, 4), 0.9, dtype=np.float32)])
    shifted = pool_image.copy()
    shifted[0, :3] += 16 / 255  # mean |difference| 48/255 / 16 = 3/255: within 4/255
    far = pool_image.copy()
    far[0, :] += 20 / 255  # mean |difference| 80/255 / 16 = 5/255: beyond 4/255
    test = np.stack([np.rot90(pool_image), np.fliplr(pool_image), shifted, far, np.zeros((4, 4), np.float32)])

    # Execute
    found = near_duplicates(test, pool)

    # Assert: which test images match which pool image, at what distance
    assert sorted(found) == [0, 1, 2]
    assert found[0] == (0, 0.0) and found[1] == (0, 0.0)
    assert found[2][0] == 0 and found[2][1] == pytest.approx(3 / 255)


def test_near_duplicate_tolerance_is_inclusive_and_adjustable():
    pool = np.zeros((1, 2, 2), dtype=np.float32)
    test = np.full((1, 2, 2), 0.25, dtype=np.float32)  # mean |difference| exactly 0.25

    assert near_duplicates(test, pool, tolerance=0.25) == {0: (0, 0.25)}
    assert near_duplicates(test, pool, tolerance=0.24) == {}


def test_near_duplicates_of_rectangular_images_use_half_turns_and_flips():
    pool = np.arange(6, dtype=np.float32).reshape(1, 2, 3) / 10
    test = np.stack([pool[0, ::-1, ::-1], pool[0, ::-1, :], pool[0] + 0.3])

    assert sorted(near_duplicates(test, pool, tolerance=0.01)) == [0, 1]


def test_pruning_by_mean_misses_no_near_duplicate():
    # Prepare: random colour images, some test images are noisy rotated copies of pool images.
    rng = np.random.default_rng(3)
    pool = rng.random((40, 6, 6, 3), dtype=np.float32)
    test = rng.random((30, 6, 6, 3), dtype=np.float32)
    for i, j in [(0, 5), (7, 11), (12, 39)]:
        test[i] = np.rot90(pool[j], i % 4) + rng.uniform(-0.01, 0.01, size=(6, 6, 3)).astype(np.float32)

    # Execute
    found = near_duplicates(test, pool, tolerance=0.01)

    # Assert: the same answer as brute force without pruning
    mean_diff, _ = _closest(test, pool)
    assert sorted(found) == sorted(np.flatnonzero(mean_diff <= 0.01).tolist()) == [0, 7, 12]
    assert {i: j for i, (j, _) in found.items()} == {0: 5, 7: 11, 12: 39}


# --------------------------------------------------------------------------- built tail sets


def _toy_task() -> Task:
    """Class 0: 12 distinct random 4x4 images, except that image 2 is image 0 turned a quarter;
    class 1: 6 others."""
    rng = np.random.default_rng(0)
    x = rng.random((18, 1, 4, 4)).astype(np.float32)
    x[2, 0] = np.rot90(x[0, 0])
    y = torch.tensor([0] * 12 + [1] * 6)
    test = Split(torch.from_numpy(rng.random((5, 1, 4, 4)).astype(np.float32)), torch.tensor([0, 1, 0, 1, 0]))
    return Task("toy", Split(torch.from_numpy(x), y), test, num_classes=2, mean=(0.5,), std=(2.0,), source="test", pixel_max=1.0)


def test_tail_builder_drops_test_images_that_duplicate_its_training_images(monkeypatch):
    # Prepare: densities in index order, so the tail is images 0-5 and every third (2, 5) is held out
    import fedgrad_core.data.edge_cases as edge_cases

    monkeypatch.setattr(edge_cases, "tail_scores", lambda images, seed=0: np.arange(len(images), dtype=float))
    task = _toy_task()

    # Execute
    edge, clean = tail_edge_case(task, source_class=0, target_class=1, tail_fraction=0.5, seed=0)

    # Assert: image 2 (a rotation of training image 0) is dropped, image 5 is kept
    assert edge.removed_from_test == (0,) and edge.test_size_before == 2
    assert torch.equal(edge.test, task.train.x[[5]])
    assert torch.equal(edge.train, task.train.x[[0, 1, 3, 4]])
    assert "1 of 2 test images removed as near-duplicates" in edge.description
    _assert_no_near_duplicates(_unit(task, edge.test), _unit(task, edge.train))
    # the whole tail left the clean training split; the test split is untouched
    assert torch.equal(clean.train.x, task.train.x[6:])
    assert clean.test is task.test


def test_digits_tail_set_has_no_exact_or_near_duplicate_of_its_poison_pool():
    task = load_task("digits")

    edge, _ = load_edge_case(task)

    assert len(edge.test) > 0
    _assert_no_near_duplicates(_unit(task, edge.test), _unit(task, edge.train))


# --------------------------------------------------------------------------- one clean test split


@pytest.mark.parametrize("attack", ["blackbox", "pixel_trigger", "dba", "none"])
def test_digits_clean_test_split_is_the_same_for_every_attack(attack):
    task = load_task("digits")

    trained_on = make_attack(attack).setup(task, seed=1)

    # main accuracy is measured on the whole standard test split, 360 images, under every attack
    assert len(trained_on.test) == 360
    assert torch.equal(trained_on.test.x, task.test.x) and torch.equal(trained_on.test.y, task.test.y)


def test_tail_set_comes_from_the_training_split_only():
    task = load_task("digits")

    edge, clean = load_edge_case(task)

    train_sevens = int((task.train.y == 7).sum())
    assert TAIL_CLASSES["digits"] == (7, 1, 0.5) and train_sevens == 143
    assert (len(edge.train), edge.test_size_before) == (48, 24)  # the least typical 72 = round(0.5 x 143)
    assert len(clean.train) == len(task.train) - 72
    test_pool = task.test.x.flatten(1)
    for image in edge.test.flatten(1):  # no backdoor test image is a clean test image
        assert not (test_pool == image).all(dim=1).any()


# --------------------------------------------------------------------------- curated sets (data)


@pytest.mark.needs_data
def test_southwest_test_set_loses_its_eight_near_duplicates(data_source):
    arrays = edge_case_arrays("southwest")

    assert arrays["test_removed"].tolist() == [44, 45, 46, 47, 140, 141, 142, 143]
    assert arrays["test"].shape == (188, 32, 32, 3) and arrays["train"].shape == (784, 32, 32, 3)
    _assert_no_near_duplicates(arrays["test"] / 255.0, arrays["train"] / 255.0)


@pytest.mark.needs_data
def test_southwest_edge_case_set_records_what_was_removed(data_source):
    task = load_task("cifar10")

    edge, same = load_edge_case(task)

    assert same is task
    assert edge.test.shape == (188, 3, 32, 32) and edge.test_size_before == 196
    assert edge.removed_from_test == (44, 45, 46, 47, 140, 141, 142, 143)
    assert "8 of 196 test images removed" in edge.description


@pytest.mark.needs_data
def test_ardis_test_set_has_no_near_duplicate_of_its_poison_pool(data_source):
    arrays = edge_case_arrays("ardis")

    assert arrays["test"].shape == (100, 28, 28) and arrays["test_removed"].size == 0
    _assert_no_near_duplicates(arrays["test"] / 255.0, arrays["train"] / 255.0)
