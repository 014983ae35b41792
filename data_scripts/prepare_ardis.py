"""Build edge-case/ardis.npz from the ARDIS dataset IV CSV files (Kusetogullari et al. 2019).

ARDIS has no stable download address: get dataset IV from its authors' page, unpack it, then

    python data_scripts/prepare_ardis.py --csv-dir DIR [--out DIR/edge-case/ardis.npz]

DIR holds ARDIS_train_2828.csv, ARDIS_train_labels.csv, ARDIS_test_2828.csv and
ARDIS_test_labels.csv (784 pixel values per row; one-hot labels).  The result has the layout of
the project's offline copy: train7_x = the first --num-train training "7"s (330, as the FedGrad
authors used), test_x / test_y = the whole test set.  Point FEDGRAD_DATA_SOURCE at the folder
above edge-case/.  Cite Kusetogullari et al. 2019 (doi 10.1007/s00521-019-04163-3).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def _images(path: Path) -> np.ndarray:
    return np.loadtxt(path, dtype=np.float64).reshape(-1, 28, 28).round().clip(0, 255).astype(np.uint8)


def _labels(path: Path) -> np.ndarray:
    return np.loadtxt(path, dtype=np.float64).argmax(axis=1).astype(np.int64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("ardis-source/edge-case/ardis.npz"))
    parser.add_argument("--num-train", type=int, default=330)
    args = parser.parse_args(argv)
    train_x = _images(args.csv_dir / "ARDIS_train_2828.csv")
    train_y = _labels(args.csv_dir / "ARDIS_train_labels.csv")
    test_x = _images(args.csv_dir / "ARDIS_test_2828.csv")
    test_y = _labels(args.csv_dir / "ARDIS_test_labels.csv")
    sevens = train_x[train_y == 7][: args.num_train]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"train7_x": sevens, "test_x": test_x, "test_y": test_y}
    np.savez(args.out, **arrays)
    print(f"wrote {args.out}: {len(sevens)} training '7's, {len(test_x)} test images")
    # The loader accepts the file only if its arrays are the original ones (sources.KNOWN_DIGESTS).
    from fedgrad_core.data.sources import KNOWN_DIGESTS, array_digest

    digest, expected = array_digest(arrays), KNOWN_DIGESTS["edge-case/ardis.npz"][1]
    if digest != expected:
        print(f"warning: the arrays' digest {digest} differs from the original's {expected}: the loader will refuse it")
    print(f"use it with FEDGRAD_DATA_SOURCE={args.out.parent.parent.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
