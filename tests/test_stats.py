"""Bonett's variance interval and the GradientStats containers (framework-free)."""

import math

import numpy as np
import pytest
from scipy.stats import chi2

from ppl_reparam.stats import GradientStats, ParamStats, bonett_variance_ci

THETA = 2.0
TRIALS = 2000
REPS = 100
N = 10


def _coverage(samples: np.ndarray, true_variance: float) -> float:
    """Fraction of columns (trials) whose 95% Bonett interval holds the true variance."""
    low, high = bonett_variance_ci(samples, 0.95)
    return float(np.mean((low <= true_variance) & (true_variance <= high)))


def _binomial_se(p: float) -> float:
    return math.sqrt(p * (1 - p) / TRIALS)


def test_coverage_on_gaussian_gradients():
    # Pathwise toy gradients 2x are Gaussian: the 95% interval should cover 95% of the time.
    # Tolerance: 5 binomial standard errors of the coverage over TRIALS independent trials.
    rng = np.random.default_rng(0)
    g = (2 * (THETA + rng.standard_normal((REPS, TRIALS, N)))).mean(-1)
    coverage = _coverage(g, 4.0 / N)
    assert abs(coverage - 0.95) <= 5 * _binomial_se(0.95)


def test_coverage_on_heavy_tailed_score_function_gradients():
    # Score-function toy gradients x^2 (x - theta) have kurtosis 27 per sample. Bonett's interval
    # measured ~0.92 coverage here (N = 10, 100 repetitions); the normal-theory chi-square interval
    # far less. Bound: 0.88 is more than 5 binomial standard errors (0.006 each) below 0.92.
    rng = np.random.default_rng(1)
    x = THETA + rng.standard_normal((REPS, TRIALS, N))
    g = (x**2 * (x - THETA)).mean(-1)
    true_variance = 87.0 / N
    coverage = _coverage(g, true_variance)
    assert coverage >= 0.88
    s2 = g.var(axis=0, ddof=1)
    normal_low = (REPS - 1) * s2 / chi2.ppf(0.975, REPS - 1)
    normal_high = (REPS - 1) * s2 / chi2.ppf(0.025, REPS - 1)
    normal_coverage = np.mean((normal_low <= true_variance) & (true_variance <= normal_high))
    assert coverage - normal_coverage > 10 * _binomial_se(0.9)


def test_zero_variance_and_bad_input():
    low, high = bonett_variance_ci(np.ones((10, 3)))
    assert np.all(low == 0) and np.all(high == 0)
    with pytest.raises(ValueError, match="at least 5 repetitions"):
        bonett_variance_ci(np.ones((4, 1)))
    with pytest.raises(ValueError, match="confidence"):
        bonett_variance_ci(np.ones((10, 1)), confidence=1.0)
    with pytest.raises(ValueError, match="NaN or inf"):
        ParamStats.from_samples(np.array([1.0, np.nan, 2.0, 3.0, 4.0]), num_particles=1)


def test_gradient_stats_mapping_and_derived_values():
    rng = np.random.default_rng(2)
    samples = {"a": rng.normal(3.0, 2.0, size=(50,)), "b": rng.normal(0.0, 1.0, size=(50, 2, 3))}
    stats = GradientStats.from_samples(samples, num_particles=4, seconds=1.5)
    assert list(stats) == ["a", "b"] and len(stats) == 2 and stats.seconds == 1.5
    a = stats["a"]
    assert a.mean == pytest.approx(samples["a"].mean())
    assert a.variance == pytest.approx(samples["a"].var(ddof=1))
    assert a.per_sample_variance == pytest.approx(4 * a.variance)
    assert a.standard_error == pytest.approx(math.sqrt(a.variance / 50))
    assert a.snr == pytest.approx(abs(a.mean) / math.sqrt(a.variance))
    low, high = a.variance_ci
    assert low < a.variance < high
    assert stats["b"].mean.shape == (2, 3) and stats["b"].variance_ci[0].shape == (2, 3)
    with pytest.raises(ValueError, match="parameter 'c'"):
        GradientStats.from_samples({"c": np.full(10, np.inf)}, 1, 0.0)
