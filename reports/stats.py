"""Paired statistics for two models evaluated on the same examples (scipy, not hand-written).

Units are examples. For one condition (one corruption at one severity, one attack threat) the
per-example outcome is correct/wrong and the exact McNemar test applies: under H0 the
discordant pairs split 50/50, which is ``scipy.stats.binomtest``. For a metric that pools
several conditions per example (the CIFAR-10-C mean), the per-example values are means over
conditions, the pairs are no longer 0/1, and the test is a paired permutation (sign-flip)
test on the per-example differences (``scipy.stats.permutation_test``). Confidence intervals
of the mean difference are paired bootstrap intervals over examples (``scipy.stats.bootstrap``),
so an example's conditions are resampled together: BCa up to :data:`BCA_MAX_N` paired examples,
the percentile interval above (see :func:`paired_bootstrap_ci`).

Fewer than two paired examples support no test and no interval: the p-values and intervals are
NaN (a single difference has no spread to resample or permute).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

# BCa's acceleration is a jackknife, which scipy evaluates as one (n, n - 1) array: O(n^2)
# memory and time (measured: n = 10,000 took 1.9 GB and 4.8 s per interval). Above this many
# paired examples the percentile interval is used instead (O(resamples x n)); with thousands of
# examples the bootstrap distribution of a mean is close to symmetric, and BCa's bias and skew
# corrections change the interval little.
BCA_MAX_N = 5000


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test on paired correctness (a = baseline, b = candidate)."""

    n: int
    both: int          # correct under both
    a_only: int        # correct under a, wrong under b (what b lost)
    b_only: int        # wrong under a, correct under b (what b gained)
    neither: int
    p_value: float

    def to_dict(self) -> dict:
        return asdict(self)


def mcnemar_exact(a_correct, b_correct) -> McNemar:
    """Exact (binomial) McNemar test, two-sided, of paired boolean outcomes."""
    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired outcomes need equal 1-D shapes, got {a.shape} and {b.shape}")
    a_only = int(np.sum(a & ~b))
    b_only = int(np.sum(~a & b))
    k = a_only + b_only
    p = 1.0 if k == 0 else float(stats.binomtest(b_only, k, 0.5).pvalue)
    return McNemar(n=int(a.size), both=int(np.sum(a & b)), a_only=a_only, b_only=b_only,
                   neither=int(np.sum(~a & ~b)), p_value=p)


def paired_bootstrap_ci(a, b, *, confidence: float = 0.95, n_resamples: int = 2000,
                        seed: int = 0) -> tuple[float, float]:
    """Bootstrap confidence interval of ``mean(b) - mean(a)`` over paired units: BCa for up to
    :data:`BCA_MAX_N` units (its jackknife is O(n^2) in memory and time), the percentile
    interval above that, and where BCa is undefined (e.g. nearly constant differences).
    NaN for fewer than two units."""
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    if d.size < 2:
        return (float("nan"), float("nan"))
    if np.all(d == d[0]):  # no variation: every resample has the same mean
        return (float(d[0]), float(d[0]))
    methods = ("BCa", "percentile") if d.size <= BCA_MAX_N else ("percentile",)
    for method in methods:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BCa's degenerate-distribution warning: fall back
            res = stats.bootstrap((d,), np.mean, confidence_level=confidence, method=method,
                                  n_resamples=n_resamples, rng=np.random.default_rng(seed),
                                  vectorized=True, axis=-1)
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if np.isfinite(low) and np.isfinite(high):
            return (low, high)
    return (float("nan"), float("nan"))


def paired_permutation_p(a, b, *, n_resamples: int = 9999, seed: int = 0) -> float:
    """Two-sided p-value of a paired permutation (sign-flip) test of ``mean(b - a) == 0``; NaN
    for fewer than two pairs. When the ``2 ** n`` sign patterns are at most ``n_resamples`` the
    test enumerates them (exact); otherwise it is randomized and its smallest p-value is about
    ``2 / (n_resamples + 1)``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    d = b - a
    if d.size < 2:
        return float("nan")
    if np.all(d == 0):
        return 1.0
    res = stats.permutation_test((a, b), lambda x, y, axis=-1: np.mean(y - x, axis=axis),
                                 permutation_type="samples", vectorized=True,
                                 n_resamples=n_resamples, rng=np.random.default_rng(seed))
    return float(res.pvalue)
