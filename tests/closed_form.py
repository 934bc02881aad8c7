"""Shared check of measured gradient statistics against the exact moments of ppl_reparam.analytic.

The mean of R estimates must lie within 5 standard errors of the exact gradient (two-sided normal
tail 5.7e-7); the measured variance within 6 exact standard deviations of the sample variance,
sqrt(mu_4/R - sigma^4 (R-3)/(R(R-1))) with mu_4 the exact fourth central moment of an N-sample
estimate (R = 2000 makes the normal approximation good; 6 SD leaves room for its skew); and the
closed form must lie inside the measured Bonett interval at confidence 1 - 1e-6.
"""

import math

import pytest

N, REPS, CONFIDENCE = 10, 2000, 1 - 1e-6


def check_against_closed_form(stats, exact, n=N, reps=REPS, scale=1.0):
    """``scale`` multiplies the closed form (chain rule to an unconstrained parameter)."""
    of_mean = exact.of_mean(n)
    mean, variance = exact.mean * scale, of_mean.variance * scale**2
    assert abs(float(stats.mean) - mean) <= 5 * math.sqrt(variance / reps)
    assert abs(float(stats.variance) - variance) <= 6 * of_mean.sample_variance_sd(reps) * scale**2
    low, high = stats.variance_ci
    assert low <= variance <= high
    assert float(stats.per_sample_variance) == pytest.approx(float(stats.variance) * n)
