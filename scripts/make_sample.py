#!/usr/bin/env python3
"""Build the bundled CIFAR-10 test sample, ``harness/data/cifar10_test_sample.npz``.

The sample is the first 100 images of each class, in test-split order, of a
``cifar-10-batches-py`` directory: 1,000 images, class-balanced, with their positions in the
test split (``indices``) so per-example results map back to the full split.

Provenance of the committed file: built on 2026-11-28 from the copy produced by
``../shared/tools/make_cifar10.py`` (the 60,000 CIFAR-10 images decoded from JPEG at quality
about 75, test order a fixed permutation), so its pixels differ slightly from the official
release and its indices refer to that copy's test order. Rebuild it from the official files
with this script to get the official pixels.

Usage: python scripts/make_sample.py DATA_DIR [OUT.npz]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.data._cifar10 import SAMPLE_PATH, load_cifar10_arrays  # noqa: E402

PER_CLASS = 100


def main(data_dir: str, out: str = str(SAMPLE_PATH)) -> None:
    ds = load_cifar10_arrays("test", data_dir=data_dir)
    keep = np.sort(np.concatenate([np.flatnonzero(ds.labels == c)[:PER_CLASS] for c in range(10)]))
    np.savez_compressed(
        out,
        images=ds.images[keep],
        labels=ds.labels[keep].astype(np.uint8),
        indices=keep.astype(np.int32),
    )
    print(f"wrote {out}: {len(keep)} images, {Path(out).stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    main(*sys.argv[1:])
