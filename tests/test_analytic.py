"""The closed forms of ppl_reparam.analytic against the table in ../shared/design.md and direct algebra."""

import math

import numpy as np
import pytest
from numpy.polynomial import Polynomial

from ppl_reparam import analytic
from ppl_reparam.analytic import HALF_LOG_2PI, Moments, gradient_moments, per_sample_gradient


@pytest.mark.parametrize(
    "options, variance",
    [
        (dict(estimator="score"), 87.0),
        (dict(estimator="score", analytic_kl=False), 54.49),
        (dict(estimator="score", baseline=2.0**2 + 3), 38.0),
        (dict(estimator="pathwise"), 4.0),
        (dict(estimator="pathwise", analytic_kl=False), 4.0),
        (dict(estimator="pathwise", stl=True), 1.0),
    ],
)
def test_design_table_at_theta_2(options, variance):
    m = gradient_moments(theta=2.0, **options)
    assert m.mean == pytest.approx(4.0, abs=1e-12)
    assert m.variance == pytest.approx(variance, abs=5e-3)


@pytest.mark.parametrize("theta", [-1.5, 0.0, 0.7, 3.0])
def test_general_theta_formulas(theta):
    c = HALF_LOG_2PI
    a = theta**2 - c
    assert gradient_moments("score", theta).variance == pytest.approx(theta**4 + 14 * theta**2 + 15)
    assert gradient_moments("score", theta, analytic_kl=False).variance == pytest.approx(
        a**2 + 3 * a + 8 * theta**2 + 3.75
    )
    assert gradient_moments("score", theta, baseline=theta**2 + 3).variance == pytest.approx(8 * theta**2 + 6)
    assert gradient_moments("pathwise", theta).variance == pytest.approx(4.0)


def test_mohamed_et_al_scale_gradients():
    # f = (x - k)^2, a = mu - k (Mohamed, Rosca, Figurnov, Mnih 2020, section 3).
    mu, k, sigma = 1.3, 0.4, 0.8
    a = mu - k
    f = Polynomial([k**2, -2 * k, 1.0])
    assert gradient_moments("pathwise", mu, sigma, f=f).variance == pytest.approx(4 * sigma**2)
    assert gradient_moments("pathwise", mu, sigma, f=f, wrt="scale").variance == pytest.approx(4 * a**2 + 8 * sigma**2)
    score_variance = a**4 / sigma**2 + 14 * a**2 + 15 * sigma**2
    assert gradient_moments("score", mu, sigma, f=f).variance == pytest.approx(score_variance)


def test_every_estimator_has_the_true_mean():
    theta, sigma = 0.9, 1.7
    for wrt, exact in [("loc", 2 * theta), ("scale", 2 * sigma - 1 / sigma)]:
        assert analytic.true_gradient(theta, sigma, wrt=wrt) == pytest.approx(exact)
        for options in [dict(estimator="score"), dict(estimator="score", analytic_kl=False),
                        dict(estimator="score", baseline=5.0), dict(estimator="pathwise"),
                        dict(estimator="pathwise", stl=True)]:
            assert gradient_moments(theta=theta, sigma=sigma, wrt=wrt, **options).mean == pytest.approx(exact)


def test_moments_of_a_mean_and_of_the_sample_variance():
    # epsilon^2 is chi-square(1): variance 2, fourth central moment 60.
    m = Moments.of(Polynomial([0.0, 0.0, 1.0]))
    assert (m.mean, m.variance, m.fourth_central) == (1.0, 2.0, 60.0)
    mean_of_4 = m.of_mean(4)  # a chi-square(4) / 4: variance 8/16, fourth central (12*16 + 48*4) / 4^4
    assert mean_of_4.variance == pytest.approx(0.5)
    assert mean_of_4.fourth_central == pytest.approx((60 + 3 * 3 * 4) / 64)
    # Var(s^2) of R normal samples is 2 sigma^4 / (R - 1).
    normal = Moments(0.0, 3.0, 3 * 9.0)
    assert normal.sample_variance_sd(11) == pytest.approx(math.sqrt(2 * 9.0 / 10))


def test_normal_moments():
    assert [analytic.normal_moment(k) for k in range(9)] == [1, 0, 1, 0, 3, 0, 15, 0, 105]


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown estimator"):
        per_sample_gradient("reinforce", 1.0)
    with pytest.raises(ValueError, match="unknown parameter"):
        per_sample_gradient("score", 1.0, wrt="rate")
    with pytest.raises(ValueError, match="sigma must be positive"):
        per_sample_gradient("score", 1.0, 0.0)
    with pytest.raises(ValueError, match="score-function estimator only"):
        per_sample_gradient("pathwise", 1.0, baseline=1.0)
    with pytest.raises(ValueError, match="pathwise estimator only"):
        per_sample_gradient("score", 1.0, stl=True)


def test_polynomial_gradient_matches_monte_carlo_draws():
    # A structural check of the polynomial algebra: evaluate the score-function gradient at fixed eps.
    theta = 2.0
    eps = np.array([-1.0, 0.5, 2.0])
    x = theta + eps
    np.testing.assert_allclose(per_sample_gradient("score", theta)(eps), x**2 * (x - theta))
    np.testing.assert_allclose(per_sample_gradient("pathwise", theta)(eps), 2 * x)


def test_leave_one_out_limits():
    # Many particles: the baseline tends to the constant E[c], E[x^2] = theta^2 + 1 with the closed-form
    # entropy; RLOO's variance tends to that constant baseline's. Two particles: a value above it.
    from ppl_reparam.analytic import rloo_per_sample_variance

    theta = 2.0
    limit = gradient_moments("score", theta, baseline=theta**2 + 1).variance
    assert rloo_per_sample_variance(theta, 10**7) == pytest.approx(limit, rel=1e-5)
    assert rloo_per_sample_variance(theta, 2) > limit
    with pytest.raises(ValueError, match="at least 2 particles"):
        rloo_per_sample_variance(theta, 1)


def test_horner_evaluates_the_polynomial_and_toy_problem_checks_sigma():
    p = Polynomial([1.0, -2.0, 0.5, 3.0])
    x = np.array([-1.5, 0.0, 2.0])
    np.testing.assert_allclose(analytic.horner(p)(x), p(x))
    np.testing.assert_allclose(analytic.horner(Polynomial([4.0]))(x), [4.0, 4.0, 4.0])
    with pytest.raises(ValueError, match="sigma must be positive"):
        analytic.ToyProblem(sigma=0.0)
