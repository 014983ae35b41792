"""Fetch, verify and prepare data sets under the data root ($FEDGRAD_DATA_ROOT).

    python data_scripts/prepare.py mnist cifar10 southwest ardis   # or: all
    python data_scripts/prepare.py all --source ../shared/data      # offline copies as the source

Each data set is taken from the first source that works: an already prepared file, the folder
given by --source (or $FEDGRAD_DATA_SOURCE), the original download (checksums verified), and for
Fashion-MNIST Debian's dataset-fashion-mnist package.  Every file read from a source folder is
checked against the digest of its original first (a mismatch stops with the file, both digests
and the fix), and pickles are read without running code.  See fedgrad_core/data/sources.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

NAMES = ("digits", "mnist", "fashion_mnist", "emnist", "cifar10", "southwest", "ardis")


def prepare_one(name: str) -> str:
    from fedgrad_core.data.datasets import prepare
    from fedgrad_core.data.edge_cases import edge_case_arrays

    if name in ("southwest", "ardis"):
        arrays = edge_case_arrays(name)
        removed = len(arrays["test_removed"])
        return (
            f"{name}: {len(arrays['train'])} train / {len(arrays['test'])} test edge-case images "
            f"({len(arrays['test']) + removed} test images less {removed} near-duplicates of training images)"
        )
    arrays, source = prepare(name)
    return f"{name}: {len(arrays['y_train'])} train / {len(arrays['y_test'])} test, from {source}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", choices=(*NAMES, "all"))
    parser.add_argument("--source", type=Path, help="offline folder laid out like ../shared/data")
    parser.add_argument("--root", type=Path, help="where prepared files go (default $FEDGRAD_DATA_ROOT)")
    args = parser.parse_args(argv)
    if args.source:
        os.environ["FEDGRAD_DATA_SOURCE"] = str(args.source.resolve())
    if args.root:
        os.environ["FEDGRAD_DATA_ROOT"] = str(args.root.resolve())
    from fedgrad_core.data import DataUnavailable, data_root

    names = NAMES if "all" in args.names else args.names
    failed = 0
    for name in names:
        try:
            print(prepare_one(name))
        except DataUnavailable as exc:
            failed += 1
            print(f"{name}: NOT AVAILABLE\n{exc}", file=sys.stderr)
    print(f"prepared files are in {data_root()}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
