"""Baselines for the score function and sticking the landing, on the toy closed forms and exact gradients."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from closed_form import CONFIDENCE, REPS, N, check_against_closed_form

from ppl_reparam.analytic import gradient_moments, rloo_per_sample_variance
from ppl_reparam.models.toy_gaussian import ToyGaussian
from ppl_reparam.pyro import PathwiseELBO, ScoreFunctionELBO, gradient_variance
from ppl_reparam.pyro.baselines import (
    ConstantBaseline,
    LearnedBaseline,
    LeaveOneOutBaseline,
    MovingAverageBaseline,
    make_baseline,
)

THETA = 2.0


def measure(elbo, toy, seed=0, reps=REPS):
    return gradient_variance(elbo, toy.model, toy.guide, num_reps=reps, seed=seed, confidence=CONFIDENCE)


@pytest.mark.parametrize("analytic_kl", [True, False])
def test_optimal_constant_baseline_closed_form(analytic_kl):
    # b = theta^2 + 3 = 7: per-sample variance 8 theta^2 + 6 = 38 with the closed-form entropy
    # (against 87 without); with the Monte Carlo entropy the closed form comes from analytic too.
    toy = ToyGaussian(THETA)
    b = THETA**2 + 3
    elbo = ScoreFunctionELBO(num_particles=N, vectorize_particles=True, analytic_kl=analytic_kl, baseline=b)
    exact = gradient_moments("score", THETA, analytic_kl=analytic_kl, baseline=b)
    if analytic_kl:
        assert exact.variance == pytest.approx(38.0)
    check_against_closed_form(measure(elbo, toy)["theta"], exact)


def test_learned_constant_baseline_converges_and_stays_unbiased():
    # A learned constant fit by squared error converges to E[cost] = E[x^2] = theta^2 + 1 = 5; the
    # measured gradient then matches the closed form with that baseline.
    toy = ToyGaussian(THETA)
    baseline = LearnedBaseline(lr=0.05)
    elbo = ScoreFunctionELBO(num_particles=64, vectorize_particles=True, analytic_kl=True, baseline=baseline)
    pyro.set_rng_seed(0)
    for _ in range(600):
        elbo.loss_and_grads(toy.model, toy.guide)  # trains the baseline; theta is never stepped
    b = baseline.nets["x"].b.item()
    assert b == pytest.approx(THETA**2 + 1, abs=0.3)
    measured = ScoreFunctionELBO(num_particles=N, vectorize_particles=True, analytic_kl=True, baseline=baseline)
    before = baseline.nets["x"].b.item()
    check_against_closed_form(measure(measured, toy)["theta"], gradient_moments("score", THETA, baseline=b))
    assert baseline.nets["x"].b.item() == before  # a measurement does not train the baseline


def test_moving_average_baseline_is_unbiased_and_tracks_the_cost():
    toy = ToyGaussian(THETA)
    baseline = MovingAverageBaseline(beta=0.9)
    elbo = ScoreFunctionELBO(num_particles=N, vectorize_particles=True, analytic_kl=True, baseline=baseline)
    pyro.set_rng_seed(0)
    for _ in range(100):
        elbo.loss_and_grads(toy.model, toy.guide)
    b = baseline.averages["x"].item()
    assert b == pytest.approx(5.0, abs=1.0)  # EMA of 10-particle means of x^2: sd about 0.3
    check_against_closed_form(measure(elbo, toy)["theta"], gradient_moments("score", THETA, baseline=b))
    assert baseline.averages["x"].item() == b


@pytest.mark.parametrize("analytic_kl, particles, reps", [(True, 10, 1000), (False, 4, 3000)])
def test_leave_one_out_closed_form(analytic_kl, particles, reps):
    # RLOO's exact per-sample variance (analytic.rloo_per_sample_variance: 4.578 x 10 at K = 10 with
    # the closed-form entropy, 45.33 at K = 4 with the Monte Carlo one): the mean within 5 standard
    # errors of 2 theta and the closed form inside the measured interval at confidence 1 - 1e-6.
    # Repetitions must not share particles: gradient_variance measures RLOO one repetition a pass (had
    # they shared them, the K = 4 row would measure about 32 instead of 45.33, outside the interval).
    toy = ToyGaussian(THETA)
    elbo = ScoreFunctionELBO(num_particles=particles, vectorize_particles=True, analytic_kl=analytic_kl,
                             baseline="rloo")
    s = measure(elbo, toy, reps=reps)["theta"]
    exact = rloo_per_sample_variance(THETA, particles, analytic_kl=analytic_kl)
    assert abs(s.mean - 2 * THETA) <= 5 * math.sqrt(exact / particles / reps)
    low, high = s.per_sample_variance_ci
    assert low <= exact <= high
    assert exact < gradient_moments("score", THETA, analytic_kl=analytic_kl).variance


def test_baseline_errors():
    with pytest.raises(ValueError, match="num_particles >= 2 and vectorize_particles=True"):
        ScoreFunctionELBO(num_particles=1, vectorize_particles=True, baseline="rloo")
    with pytest.raises(ValueError, match="num_particles >= 2 and vectorize_particles=True"):
        ScoreFunctionELBO(num_particles=8, baseline=LeaveOneOutBaseline())
    with pytest.raises(ValueError, match="unknown baseline 'average'"):
        ScoreFunctionELBO(baseline="average")
    with pytest.raises(ValueError, match="beta must lie in"):
        MovingAverageBaseline(beta=1.0)
    assert isinstance(make_baseline(3), ConstantBaseline) and make_baseline(None) is None


def test_baselines_learn_the_unscaled_cost_under_subsampling():
    # Local latents z_i ~ N(0, 1), x_i ~ N(z_i, 1) over 10 points, subsampled. With beta = 0 the
    # moving average is the last minibatch's mean *unscaled* per-point cost, whose expectation is
    # the exact per-point loss averaged over points, whatever the subsample size (pyro #555).
    # 400 independent steps: tolerance 5 standard errors of their mean.
    data = torch.linspace(-2, 2, 10)
    m, s = torch.linspace(-1, 1, 10), torch.full((10,), 0.7)
    c = 0.5 * math.log(2 * math.pi)
    per_point = 0.5 * ((data - m) ** 2 + s**2) + 0.5 * (m**2 + s**2) + 2 * c - (torch.log(s) + c + 0.5)

    def model(size):
        with pyro.plate("data", 10, subsample_size=size) as idx:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=data[idx])

    def guide(size):
        with pyro.plate("data", 10, subsample_size=size) as idx:
            pyro.sample("z", dist.Normal(pyro.param("m", m)[idx], s[idx]))

    pyro.set_rng_seed(0)
    for size in (2, 5):
        baseline = MovingAverageBaseline(beta=0.0)
        elbo = ScoreFunctionELBO(baseline=baseline)
        values = []
        for _ in range(400):
            elbo.loss_and_grads(model, guide, size)
            values.append(baseline.averages["z"].item())
        values = torch.tensor(values)
        assert abs(values.mean() - per_point.mean()) <= 5 * values.std() / math.sqrt(len(values))


@pytest.mark.parametrize("learn_scale", [False, True])
def test_sticking_the_landing_closed_form(learn_scale):
    # Roeder, Wu and Duvenaud 2017: per-sample gradient 2 theta + eps, variance 1 (against 4); for the
    # scale, f'(x) eps - eps^2 / sigma (times sigma for the unconstrained log sigma).
    sigma = 1.5 if learn_scale else 1.0
    toy = ToyGaussian(THETA, sigma, learn_scale=learn_scale)
    elbo = PathwiseELBO(num_particles=N, vectorize_particles=True, stl=True)
    stats = measure(elbo, toy)
    exact = gradient_moments("pathwise", THETA, sigma, stl=True)
    if not learn_scale:
        assert exact.variance == 1.0
    check_against_closed_form(stats["theta"], exact)
    if learn_scale:
        check_against_closed_form(stats["sigma"], gradient_moments("pathwise", THETA, sigma, wrt="scale", stl=True),
                                  scale=sigma)


def test_sticking_the_landing_needs_monte_carlo_entropy():
    with pytest.raises(ValueError, match="stl=True .* analytic_kl=True"):
        PathwiseELBO(stl=True, analytic_kl=True)
