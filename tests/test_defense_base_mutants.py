"""Shared geometry and flattening of fedgrad_core.defenses.base: details that mutmut showed the
rest of the suite does not check (tests/MUTATION.md lists the run and the equivalent survivors)."""

from __future__ import annotations

import pytest
import torch

from fedgrad_core.defenses.base import (
    Layout,
    cosine_similarities,
    squared_distances,
    sum_of_nearest,
    weighted_average,
)


def test_unflatten_keeps_the_templates_dtypes_and_device():
    # Prepare: a float16 and a float64 tensor, and a template on the meta device
    state = {"h": torch.tensor([1.5, 2.5], dtype=torch.float16), "d": torch.tensor([0.1], dtype=torch.float64)}
    layout = Layout.of(state)
    vector = layout.flatten(state)
    meta = {"h": torch.empty(2, dtype=torch.float16, device="meta"), "d": torch.empty(1, dtype=torch.float64,
                                                                                  device="meta")}
    # Execute
    back = layout.unflatten(vector, state)
    on_meta = layout.unflatten(vector, meta)
    # Assert: dtypes from the template (the vector is float32), device from the template
    assert vector.dtype == torch.float32
    assert (back["h"].dtype, back["d"].dtype) == (torch.float16, torch.float64)
    assert back["h"].tolist() == [1.5, 2.5]
    assert on_meta["h"].device.type == "meta" and on_meta["d"].device.type == "meta"


def test_squared_distances_by_hand_with_a_zero_diagonal():
    # Prepare: a = (1, 0), b = (0, 2), c = (3, 0): Gram matrix by hand
    gram = torch.tensor([[1.0, 0.0, 3.0], [0.0, 4.0, 0.0], [3.0, 0.0, 9.0]], dtype=torch.float64)
    # Execute
    dist = squared_distances(gram)
    # Assert: |a-b|^2 = 5, |a-c|^2 = 4, |b-c|^2 = 13, 0 on the diagonal
    assert dist.tolist() == [[0.0, 5.0, 4.0], [5.0, 0.0, 13.0], [4.0, 13.0, 0.0]]


def test_cosine_similarities_are_clamped_to_minus_one_one():
    # Prepare: Gram matrices of two parallel / anti-parallel vectors of squared norm 3, where
    # 3 / (sqrt(3) * sqrt(3)) rounds to 1.0000000000000002 in float64
    parallel = torch.tensor([[3.0, 3.0], [3.0, 3.0]], dtype=torch.float64)
    opposite = torch.tensor([[3.0, -3.0], [-3.0, 3.0]], dtype=torch.float64)
    assert 3.0 / (3.0**0.5 * 3.0**0.5) > 1.0  # the rounding the clamp is there for
    # Execute / Assert
    assert cosine_similarities(parallel)[0, 1].item() == 1.0
    assert cosine_similarities(opposite)[0, 1].item() == -1.0


def test_sum_of_nearest_accepts_every_other_client_and_names_the_range():
    # Prepare: 4 clients on a line at 0, 1, 3, 7 (squared distances)
    pos = torch.tensor([0.0, 1.0, 3.0, 7.0], dtype=torch.float64)
    sq = (pos[:, None] - pos[None, :]) ** 2
    # Execute: k - 1 = 3 neighbours is the largest count allowed
    scores = sum_of_nearest(sq, 3)
    # Assert: 0: 1 + 9 + 49; 1: 1 + 4 + 36; 3: 4 + 9 + 16; 7: 16 + 36 + 49
    assert scores.tolist() == [59.0, 41.0, 29.0, 101.0]
    assert sum_of_nearest(sq, 1).tolist() == [1.0, 1.0, 4.0, 16.0]
    with pytest.raises(ValueError, match=r"^num_neighbors must lie in \[1, 3\] for 4 clients, got 4$"):
        sum_of_nearest(sq, 4)
    with pytest.raises(ValueError, match=r"^num_neighbors must lie in \[1, 3\] for 4 clients, got 0$"):
        sum_of_nearest(sq, 0)


def test_weighted_average_normalises_float32_weights_in_float64():
    # Prepare: float64 rows, float32 weights 1, 1, 1 (1/3 in float32 is 0.3333333433)
    rows = torch.tensor([[0.0], [0.0], [3.0]], dtype=torch.float64)
    weights = torch.ones(3, dtype=torch.float32)
    # Execute
    out = weighted_average(rows, weights)
    # Assert: 3 x float64(1/3) = 1 (a float32 normalisation gives 1.00000003)
    assert out.dtype == torch.float64
    assert out.item() == 1.0
