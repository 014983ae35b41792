"""Splitting a training set among clients: IID, Dirichlet(alpha) per class, and the paper's phi scheme.

Every partitioner assigns every sample to exactly one client and is a pure function of the labels
and the seed.
"""

from __future__ import annotations

import numpy as np

PARTITIONS = ("iid", "dirichlet", "phi")


def partition(labels: np.ndarray, num_clients: int, *, scheme: str, noniid: float, seed: int) -> list[np.ndarray]:
    """Sample indices of each client (sorted), by ``scheme`` with non-IID level ``noniid``.

    ``noniid`` is alpha for ``dirichlet`` (small = more skewed) and phi for ``phi`` (0 = IID,
    1 = each class only in its group); ``iid`` ignores it.
    """
    labels = np.asarray(labels)
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if num_clients > len(labels):
        raise ValueError(f"cannot split {len(labels)} samples among {num_clients} clients")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = np.array_split(rng.permutation(len(labels)), num_clients)
    elif scheme == "dirichlet":
        parts = dirichlet_partition(labels, num_clients, alpha=noniid, rng=rng)
    elif scheme == "phi":
        parts = phi_partition(labels, num_clients, phi=noniid, rng=rng)
    else:
        raise ValueError(f"unknown partition {scheme!r}; choose one of {list(PARTITIONS)}")
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def dirichlet_partition(
    labels: np.ndarray,
    num_clients: int,
    *,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 2,
    max_tries: int = 1000,
) -> list[np.ndarray]:
    """Per class, proportions over clients drawn from Dirichlet(alpha) (the authors' scheme).

    Redrawn until every client holds at least ``min_size`` samples (a client with nothing to
    train on cannot take part), as in Wang et al.'s code.
    """
    if alpha <= 0:
        raise ValueError(f"Dirichlet alpha must be > 0, got {alpha}")
    min_size = min(min_size, len(labels) // num_clients)
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares) * len(idx)).astype(int)[:-1]
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.asarray(p) for p in parts]
    raise ValueError(
        f"Dirichlet(alpha={alpha}) could not give each of {num_clients} clients {min_size} samples "
        f"in {max_tries} draws; use fewer clients or a larger alpha"
    )


def phi_partition(labels: np.ndarray, num_clients: int, *, phi: float, rng: np.random.Generator) -> list[np.ndarray]:
    """The paper's section 5.5 scheme.

    Clients are split at random into one group per class.  A fraction ``phi`` of each class's
    samples goes to the clients of that class's group, spread uniformly among them; the rest is
    spread uniformly among all clients.  phi = 0 is IID; phi = 1 gives each class only to its group.
    """
    if not 0 <= phi <= 1:
        raise ValueError(f"phi must be in [0, 1], got {phi}")
    classes = np.unique(labels)
    if num_clients < len(classes):
        raise ValueError(f"the phi partition needs at least one client per class ({len(classes)})")
    groups = np.array_split(rng.permutation(num_clients), len(classes))
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for c, group in zip(classes, groups):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_group = int(round(phi * len(idx)))
        for members, chunk in ((group, idx[:n_group]), (np.arange(num_clients), idx[n_group:])):
            owners = rng.permutation(np.resize(rng.permutation(members), len(chunk)))
            for client, sample in zip(owners, chunk):
                parts[client].append(int(sample))
    return [np.asarray(p) for p in parts]
