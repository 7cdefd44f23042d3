"""Suites: what is measured. ``SUITES.get(name)`` returns the suite class.

Built in: ``clean``, ``cifar10c``, ``pgd``, ``autoattack``, ``lipschitz``, ``sparsity``,
``coding``; the
protocol a suite follows (options, per-example fields, metric records, summary, headline,
tables) is in :mod:`harness.suites._base`.
"""

from harness.suites import (  # noqa: F401  (registers the suites)
    adversarial,
    cifar10c,
    clean,
    coding,
    lipschitz,
    sparsity,
)
from harness.suites._base import (
    SUITES,
    EvalContext,
    Field,
    Metric,
    Option,
    SampleSuite,
    ShardInputs,
    Suite,
    Table,
    at_least_one,
    contiguous_shards,
    count,
    non_negative,
    positive,
    raised_flags,
)

__all__ = ["SUITES", "EvalContext", "Field", "Metric", "Option", "SampleSuite", "ShardInputs",
           "Suite", "Table",
           "at_least_one", "contiguous_shards", "count", "non_negative", "positive", "raised_flags"]
