"""reports.stats: fewer than two pairs have no test and no interval; the bootstrap interval is
BCa up to BCA_MAX_N pairs and the percentile interval above (scipy's BCa jackknife is O(n^2)
in memory); the permutation test's p-value floor that ``harness compare --alpha`` is checked
against. Oracles: scipy.stats.bootstrap called directly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from reports.stats import BCA_MAX_N, paired_bootstrap_ci, paired_permutation_p


@pytest.mark.parametrize("a, b", [([0.0], [1.0]), ([0.3], [0.3]), ([], [])])
def test_fewer_than_two_pairs_give_nan(a, b):
    # one nonzero difference made scipy's permutation_test raise ValueError
    assert math.isnan(paired_permutation_p(a, b, n_resamples=200))
    low, high = paired_bootstrap_ci(a, b, n_resamples=200)
    assert math.isnan(low) and math.isnan(high)


def test_two_pairs_are_tested():
    assert paired_permutation_p([0.0, 0.0], [1.0, 2.0], n_resamples=200) == pytest.approx(0.5)
    low, high = paired_bootstrap_ci([0.0, 0.0], [1.0, 2.0], n_resamples=200)
    assert 1.0 <= low <= high <= 2.0


def _scipy_ci(d, method, seed=0, n_resamples=200):
    res = stats.bootstrap((d,), np.mean, confidence_level=0.95, method=method,
                          n_resamples=n_resamples, rng=np.random.default_rng(seed),
                          vectorized=True, axis=-1)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def test_bca_up_to_the_limit_percentile_above():
    """Skewed differences, where BCa and the percentile interval differ: BCa at or below
    BCA_MAX_N pairs, the percentile interval above (n = 10,000 took 1.9 GB with BCa)."""
    assert BCA_MAX_N == 5000
    rng = np.random.default_rng(1)
    small = rng.exponential(size=400)
    got = paired_bootstrap_ci(np.zeros_like(small), small, n_resamples=200)
    assert got == pytest.approx(_scipy_ci(small, "BCa"), rel=1e-12)
    assert got != pytest.approx(_scipy_ci(small, "percentile"), rel=1e-6)
    large = rng.exponential(size=BCA_MAX_N + 1) ** 3
    got = paired_bootstrap_ci(np.zeros_like(large), large, n_resamples=200)
    assert got == pytest.approx(_scipy_ci(large, "percentile"), rel=1e-12)


def test_permutation_p_floor_is_two_over_resamples_plus_one():
    """The floor compare checks --alpha against: every sign flip but the identity lowers the
    mean of all-positive differences, so p = 2 (1 + 0) / (R + 1)."""
    a = np.zeros(60)
    b = np.linspace(1, 2, 60)
    for r in (100, 199, 999):
        assert paired_permutation_p(a, b, n_resamples=r) == pytest.approx(2 / (r + 1))
