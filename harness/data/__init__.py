"""Datasets: CIFAR-10 (official pickles or the bundled sample) and CIFAR-10-C (released files or
generated)."""

from harness.data._cifar10 import (
    CLASSES,
    ImageSet,
    fingerprint,
    load_cifar10,
    load_cifar10_arrays,
    load_sample,
    resolve_data_dir,
)
from harness.data._cifar10c import CorruptionData, ReleasedC, load_cifar10c

__all__ = [
    "CLASSES", "CorruptionData", "ImageSet", "ReleasedC", "fingerprint", "load_cifar10",
    "load_cifar10_arrays", "load_cifar10c", "load_sample", "resolve_data_dir",
]
