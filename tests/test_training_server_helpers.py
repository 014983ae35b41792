"""The server's shared flattening and Gram helpers (defenses.base), as sped up for issue 15."""

import torch

from fedgrad_core.defenses.base import gram64, squared_distances


def test_gram64_float32_blocks_match_a_float64_reference_and_are_symmetric():
    # Prepare: 7 models near a non-zero global model, d not a multiple of the block width
    gen = torch.Generator().manual_seed(0)
    center = torch.randn(10_001, generator=gen)
    rows = center + 1e-3 * torch.randn(7, 10_001, generator=gen)
    centred = rows.double() - center.double()

    # Execute: blocks of 1,000 columns (11 blocks, the last one 1 column wide)
    gram = gram64(rows, center=center, chunk=1000)

    # Assert
    reference = centred @ centred.T
    assert gram.dtype == torch.float64 and torch.equal(gram, gram.T)
    assert torch.allclose(gram, reference, rtol=1e-5, atol=0)
    dist, ref_dist = squared_distances(gram), squared_distances(reference)
    off = ~torch.eye(7, dtype=torch.bool)
    assert ((dist - ref_dist).abs()[off] / ref_dist[off]).max() < 1e-5


def test_gram64_keeps_float64_rows_in_float64():
    rows = torch.tensor([[1.0, 2.0, 3.0], [1.0 + 1e-12, 2.0, 3.0]], dtype=torch.float64)

    gram = gram64(rows, center=torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))

    diff = (1.0 + 1e-12) - 1.0  # about 1e-12 in float64, exactly 0 after a float32 round trip
    assert gram[1, 1].item() == diff**2 > 0
    assert gram[0, 0].item() == 0.0


def test_workspace_reuses_memory_only_when_no_one_holds_the_previous_matrix():
    from fedgrad_core.defenses.base import release_workspace, workspace

    release_workspace()
    first = workspace(3, 4)
    first.fill_(7.0)
    kept_ptr = first.data_ptr()
    row = first[1]  # a caller keeps a view of the previous round's matrix
    del first

    second = workspace(3, 4)  # must not overwrite the view still held
    second.fill_(1.0)
    assert second.data_ptr() != kept_ptr and torch.equal(row, torch.full((4,), 7.0))

    ptr = second.data_ptr()
    del second, row
    third = workspace(2, 4)  # nothing holds the last one: its memory is reused
    assert third.data_ptr() == ptr and third.shape == (2, 4)
    release_workspace()
