"""Suites: what is measured. ``SUITES.get(name)`` returns the suite class.

Built in: ``clean``. (cifar10c, pgd, autoattack, lipschitz and sparsity arrive in later issues.)
"""

from harness.suites import clean  # noqa: F401  (registers the suite)
from harness.suites._base import SUITES, Suite, contiguous_shards

__all__ = ["SUITES", "Suite", "contiguous_shards"]
