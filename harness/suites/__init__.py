"""Suites: what is measured. ``SUITES.get(name)`` returns the suite class.

Built in: ``clean``, ``cifar10c``. (pgd, autoattack, lipschitz and sparsity arrive in later
issues.)
"""

from harness.suites import cifar10c, clean  # noqa: F401  (registers the suites)
from harness.suites._base import SUITES, ShardInputs, Suite, contiguous_shards

__all__ = ["SUITES", "ShardInputs", "Suite", "contiguous_shards"]
