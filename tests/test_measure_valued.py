"""Measure-valued gradients: every family's mean against its exact gradient, coupled and not; the toy's
per-sample variances against their closed forms; reproducibility and clear errors.

Means are checked within Z standard errors of the exact gradient and variances within Z standard errors
of the sample variance (sd of the squared deviations / sqrt(n)); Z = 5.5 gives a two-sided false-failure
rate of 4e-8 per comparison, under 1e-6 per test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ppl_reparam.analytic import measure_valued_variance
from ppl_reparam.measure_valued import EVALUATIONS_PER_ELEMENT, measure_valued_jacobians

Z = 5.5
N = 200_000

LN_MEAN = math.exp(0.0 + 0.5**2 / 2)
CASES = {
    # family, params, f, exact gradient in each parameter that has a weak derivative
    "Normal": ((2.0, 1.5), lambda x: x**2, [4.0, 3.0]),
    "LogNormal": ((0.0, 0.5), lambda x: x, [LN_MEAN, 0.5 * LN_MEAN]),
    "Exponential": ((2.0,), lambda x: x, [-0.25]),
    "Gamma": ((0.5, 2.0), lambda x: x, [-0.125]),
    "Poisson": ((3.0,), lambda x: x**2, [7.0]),
    "Bernoulli": ((0.3,), lambda x: (x - 0.45) ** 2, [0.1]),
}


@pytest.mark.parametrize("coupling", [True, False], ids=["coupled", "independent"])
@pytest.mark.parametrize("family", list(CASES))
def test_mean_is_the_exact_gradient(family, coupling):
    params, f, exact = CASES[family]
    g = measure_valued_jacobians(f, family, params, N, seed=1, coupling=coupling)
    assert g.shape == (N, len(exact))
    mean, se = g.mean(0), g.std(0, ddof=1) / math.sqrt(N)
    if family == "Bernoulli":  # both sides are points: the estimate is exact
        np.testing.assert_allclose(g, exact[0], rtol=1e-12)
        return
    assert np.all(np.abs(mean - exact) < Z * se), (mean, exact, se)


@pytest.mark.parametrize("coupling", [True, False], ids=["coupled", "independent"])
@pytest.mark.parametrize(("theta", "sigma"), [(0.5, 1.0), (2.0, 1.0), (2.0, 1.5)])
def test_toy_per_sample_variance_is_the_closed_form(theta, sigma, coupling):
    g = measure_valued_jacobians(lambda x: x**2, "Normal", (theta, sigma), N, seed=2, coupling=coupling, wrt=["loc"])
    g = g[:, 0]
    deviations = (g - g.mean()) ** 2
    variance, se = deviations.sum() / (N - 1), deviations.std(ddof=1) / math.sqrt(N)
    assert abs(variance - measure_valued_variance(theta, sigma, coupling=coupling)) < Z * se
    assert abs(g.mean() - 2 * theta) < Z * math.sqrt(variance / N)


def test_the_toy_closed_forms():
    # README: coupled 4.372 and independent 3.459 at theta = 2; a scale other than 1 changes only the latter
    assert measure_valued_variance(2.0) == pytest.approx(8 * 4 * (2 - math.pi / 2) / math.pi)
    assert measure_valued_variance(2.0) == pytest.approx(4.3718, abs=1e-4)
    assert measure_valued_variance(2.0, coupling=False) == pytest.approx(3.4592, abs=1e-4)
    assert measure_valued_variance(2.0, 3.0) == measure_valued_variance(2.0)


def test_coupling_cancels_an_even_function_about_the_loc():
    # f even about mu: f(mu + W) = f(mu - W), so the coupled loc gradient is exactly the true one, 0
    g = measure_valued_jacobians(lambda x: (x - 2.0) ** 2, "Normal", (2.0, 1.0), 1000, seed=0, wrt=["loc"])
    np.testing.assert_allclose(g, 0.0, atol=1e-12)


def test_cost_is_two_evaluations_per_parameter():
    calls = []

    def f(x):
        calls.append(len(x))
        return x

    measure_valued_jacobians(f, "Normal", (0.0, 1.0), 7, seed=0)
    assert calls == [7] * (EVALUATIONS_PER_ELEMENT * 2)


def test_same_seed_same_numbers_and_no_global_state():
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    a = measure_valued_jacobians(lambda x: x, "Exponential", (2.0,), 100, seed=5)
    b = measure_valued_jacobians(lambda x: x, "Exponential", (2.0,), 100, seed=5)
    c = measure_valued_jacobians(lambda x: x, "Exponential", (2.0,), 100, seed=6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(np.random.get_state()[1], state)


def test_clear_errors():
    with pytest.raises(ValueError, match="no measure-valued gradient for 'Beta'; it is implemented for"):
        measure_valued_jacobians(lambda x: x, "Beta", (1.0, 1.0), 10, seed=0)
    with pytest.raises(ValueError, match="Gamma's concentration has no measure-valued gradient here.*pathwise"):
        measure_valued_jacobians(lambda x: x, "Gamma", (1.0, 1.0), 10, seed=0, wrt=["concentration"])
    with pytest.raises(ValueError, match=r"Normal takes the parameters \('loc', 'scale'\), got 1 values"):
        measure_valued_jacobians(lambda x: x, "Normal", (1.0,), 10, seed=0)
    with pytest.raises(ValueError, match="Normal has no parameter 'rate'"):
        measure_valued_jacobians(lambda x: x, "Normal", (1.0, 1.0), 10, seed=0, wrt=["rate"])
    with pytest.raises(ValueError, match=r"one value per sample, shape \(10,\); got \(\)"):
        measure_valued_jacobians(lambda x: x.sum(), "Normal", (1.0, 1.0), 10, seed=0)
    with pytest.raises(ValueError, match="num_samples must be positive"):
        measure_valued_jacobians(lambda x: x, "Normal", (1.0, 1.0), 0, seed=0)
