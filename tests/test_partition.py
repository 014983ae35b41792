import numpy as np
import pytest

from fedgrad_core.data.partition import partition

LABELS = np.repeat(np.arange(10), 100)  # 1,000 samples, 100 per class


@pytest.mark.parametrize("scheme,noniid", [("iid", 0), ("dirichlet", 0.5), ("dirichlet", 100.0), ("phi", 0.0), ("phi", 0.5), ("phi", 1.0)])
def test_every_sample_is_assigned_exactly_once(scheme, noniid):
    parts = partition(LABELS, 20, scheme=scheme, noniid=noniid, seed=3)

    everything = np.concatenate(parts)
    assert len(parts) == 20
    assert sorted(everything.tolist()) == list(range(len(LABELS)))


@pytest.mark.parametrize("scheme,noniid", [("iid", 0), ("dirichlet", 0.5), ("phi", 0.5)])
def test_same_seed_same_split_other_seed_other_split(scheme, noniid):
    a = partition(LABELS, 10, scheme=scheme, noniid=noniid, seed=1)
    b = partition(LABELS, 10, scheme=scheme, noniid=noniid, seed=1)
    c = partition(LABELS, 10, scheme=scheme, noniid=noniid, seed=2)

    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def _class_shares(parts):
    return np.stack([np.bincount(LABELS[p], minlength=10) / len(p) for p in parts])


def test_phi_zero_is_close_to_iid():
    shares = _class_shares(partition(LABELS, 10, scheme="phi", noniid=0.0, seed=0))

    # every client holds about 10% of each class (100 samples each: a few points of sampling noise)
    assert np.abs(shares - 0.1).max() < 0.06


def test_phi_one_gives_each_class_to_its_group():
    parts = partition(LABELS, 20, scheme="phi", noniid=1.0, seed=0)

    classes_per_client = [len(np.unique(LABELS[p])) for p in parts if len(p)]
    owners_per_class = [sum(1 for p in parts if (LABELS[p] == c).any()) for c in range(10)]
    assert max(classes_per_client) == 1
    assert owners_per_class == [2] * 10  # 20 clients in 10 groups of two


def test_smaller_dirichlet_alpha_is_more_skewed():
    skewed = _class_shares(partition(LABELS, 10, scheme="dirichlet", noniid=0.1, seed=0)).max(axis=1).mean()
    even = _class_shares(partition(LABELS, 10, scheme="dirichlet", noniid=100.0, seed=0)).max(axis=1).mean()

    assert skewed > 0.5 > 0.2 > even


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"scheme": "zipf", "noniid": 1.0}, "unknown partition"),
        ({"scheme": "dirichlet", "noniid": 0.0}, "alpha must be > 0"),
        ({"scheme": "phi", "noniid": 1.5}, "phi must be in"),
    ],
)
def test_bad_partitions_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        partition(LABELS, 10, seed=0, **kwargs)
