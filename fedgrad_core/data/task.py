"""The in-memory form every experiment works on: normalised tensors plus what is needed to make more."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class Split:
    """Inputs ``x`` (float32, N x C x H x W, normalised) and integer labels ``y`` (int64, N)."""

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"Split has {len(self.x)} inputs but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, indices) -> "Split":
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return Split(self.x[idx], self.y[idx])

    @staticmethod
    def concat(*splits: "Split") -> "Split":
        return Split(torch.cat([s.x for s in splits]), torch.cat([s.y for s in splits]))


def normalize_images(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...], pixel_max: float) -> Tensor:
    """Raw images (N x H x W or N x H x W x C, values in [0, pixel_max]) -> normalised N x C x H x W."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4:
        raise ValueError(f"expected N x H x W (x C) images, got shape {arr.shape}")
    if arr.shape[-1] != len(mean):
        raise ValueError(f"images have {arr.shape[-1]} channel(s), the statistics {len(mean)}")
    # Transpose the raw (usually uint8) pixels, then convert once and work in place: the same float32
    # operations, in the same order, as (x / pixel_max - mean) / std, in one copy instead of four.
    x = torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2))).to(torch.float32)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return x.div_(pixel_max).sub_(m).div_(s)


def channel_statistics(images: np.ndarray, pixel_max: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of ``images / pixel_max``.

    ``images`` is N x H x W (one channel) or N x H x W x C.  Integer pixels are counted by value
    (exact, in float64); other dtypes are reduced in float64.  A float32 reduction is not enough:
    over CIFAR-10's 51 million values per channel it returned 0.32768 for all three channel
    means (the true ones are 0.491, 0.482, 0.447).
    """
    arr = np.asarray(images)
    channels = arr.reshape(-1, 1) if arr.ndim == 3 else arr.reshape(-1, arr.shape[-1])
    means, stds = [], []
    for c in range(channels.shape[1]):
        values = channels[:, c]
        if np.issubdtype(values.dtype, np.integer) and values.size and values.min() >= 0:
            counts = _count_values(np.ascontiguousarray(values)).astype(np.float64)
            levels = np.arange(len(counts), dtype=np.float64) / pixel_max
            mean = float(counts @ levels / values.size)
            var = float(counts @ (levels - mean) ** 2 / values.size)
        else:
            scaled = values.astype(np.float64) / pixel_max
            mean, var = float(scaled.mean()), float(scaled.var())
        means.append(mean)
        stds.append(var**0.5)
    return tuple(means), tuple(stds)


@dataclass(frozen=True, eq=False)
class Task:
    """A data set ready for training: normalised splits and the statistics used to normalise.

    ``mean`` and ``std`` are per channel in [0, 1] pixel units; ``normalize`` applies them to raw
    uint8 images, so edge-case sets and triggers are put on exactly the same scale as the data.
    """

    name: str
    train: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    #: The raw value range of a pixel (255 for 8-bit images, 16 for scikit-learn's digits).
    pixel_max: float = 255.0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]

    def normalize(self, images: np.ndarray) -> Tensor:
        """Raw images (N x H x W or N x H x W x C, values in [0, pixel_max]) -> N x C x H x W."""
        return normalize_images(images, self.mean, self.std, self.pixel_max)

    def pixel_value(self, raw: float) -> Tensor:
        """The normalised value, per channel, of a raw pixel value (e.g. white = pixel_max)."""
        mean = torch.tensor(self.mean, dtype=torch.float32)
        std = torch.tensor(self.std, dtype=torch.float32)
        return (raw / self.pixel_max - mean) / std


@dataclass(frozen=True, eq=False)
class EdgeCaseSet:
    """Edge-case examples of Wang et al. (2020): tail inputs the attacker relabels to ``target``.

    ``train`` is what attackers may train on, ``test`` is held out to measure backdoor accuracy
    (the share of ``test`` predicted as ``target``).  Both are normalised like the task.  No test
    image is a near-duplicate of a training image (``removed_from_test`` says which were dropped).
    """

    name: str
    train: Tensor
    test: Tensor
    target: int
    description: str
    #: Positions, in the test set as first built, of the test images dropped because they are
    #: near-duplicates of a training image of the set (``edge_cases.NEAR_DUPLICATE_TOLERANCE``).
    removed_from_test: tuple[int, ...] = ()

    @property
    def test_size_before(self) -> int:
        """Size of the backdoor test set before near-duplicates were removed."""
        return len(self.test) + len(self.removed_from_test)


def _count_values(values: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """``np.bincount(values)`` in chunks: bincount copies its input to int64 first (8 bytes per
    pixel), which for MNIST's 47 million pixels cost more than the counting."""
    counts = np.zeros(int(values.max()) + 1, dtype=np.int64)
    for start in range(0, values.size, chunk):
        counts += np.bincount(values[start : start + chunk], minlength=len(counts))
    return counts
