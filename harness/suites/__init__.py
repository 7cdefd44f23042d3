"""Suites: what is measured. ``SUITES.get(name)`` returns the suite class.

Built in: ``clean``, ``cifar10c``, ``pgd``, ``autoattack``; the protocol a suite follows
(options, per-example fields, metric records, summary, headline, tables) is in
:mod:`harness.suites._base`.
"""

from harness.suites import adversarial, cifar10c, clean  # noqa: F401  (registers the suites)
from harness.suites._base import (
    SUITES,
    EvalContext,
    Field,
    Metric,
    Option,
    ShardInputs,
    Suite,
    Table,
    contiguous_shards,
    non_negative,
    positive,
    raised_flags,
)

__all__ = ["SUITES", "EvalContext", "Field", "Metric", "Option", "ShardInputs", "Suite", "Table",
           "contiguous_shards", "non_negative", "positive", "raised_flags"]
