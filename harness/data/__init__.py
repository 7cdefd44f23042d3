"""Datasets: CIFAR-10 (official pickles or the bundled sample). CIFAR-10-C comes later."""

from harness.data._cifar10 import (
    CLASSES,
    ImageSet,
    fingerprint,
    load_cifar10,
    load_cifar10_arrays,
    load_sample,
    resolve_data_dir,
)

__all__ = [
    "CLASSES", "ImageSet", "fingerprint", "load_cifar10", "load_cifar10_arrays", "load_sample",
    "resolve_data_dir",
]
