"""Pyro specifics of the toy measurement: a learnable scale, the loop method, state left alone, seeds.
(The closed-form rows of both backends: test_toy_backends.py.)"""

import pyro
import pytest
from closed_form import CONFIDENCE, REPS, N, check_against_closed_form

from ppl_reparam.analytic import gradient_moments
from ppl_reparam.models.toy_gaussian import ToyGaussian
from ppl_reparam.pyro import PathwiseELBO, ScoreFunctionELBO, gradient_variance

ELBOS = {"score": ScoreFunctionELBO, "pathwise": PathwiseELBO}


@pytest.mark.parametrize("estimator", ["score", "pathwise"])
@pytest.mark.parametrize("analytic_kl", [True, False])
def test_learnable_scale(estimator, analytic_kl):
    # sigma is stored unconstrained as u = log sigma, so d/du = sigma d/dsigma.
    theta, sigma = 2.0, 1.5
    toy = ToyGaussian(theta, sigma, learn_scale=True)
    elbo = ELBOS[estimator](num_particles=N, vectorize_particles=True, analytic_kl=analytic_kl)
    stats = gradient_variance(elbo, toy.model, toy.guide, num_reps=REPS, seed=2, confidence=CONFIDENCE)
    for name, wrt, scale in [("theta", "loc", 1.0), ("sigma", "scale", sigma)]:
        exact = gradient_moments(estimator, theta, sigma, wrt=wrt, analytic_kl=analytic_kl)
        check_against_closed_form(stats[name], exact, scale=scale)


@pytest.mark.parametrize("vectorize", [True, False])
def test_loop_method_matches_closed_form(vectorize):
    # The one-gradient-per-repetition path, with and without vectorized particles.
    toy = ToyGaussian(2.0)
    elbo = ScoreFunctionELBO(num_particles=N, vectorize_particles=vectorize, analytic_kl=True)
    reps = 300
    stats = gradient_variance(elbo, toy.model, toy.guide, num_reps=reps, seed=3, method="loop",
                              confidence=CONFIDENCE)
    check_against_closed_form(stats["theta"], gradient_moments("score", 2.0), reps=reps)


def test_measurement_leaves_parameters_grads_and_rng_alone():
    import torch

    toy = ToyGaussian(2.0, learn_scale=True)
    toy.guide()
    theta = pyro.param("theta").unconstrained()
    theta.grad = torch.tensor(0.25)
    before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    for method in ("forward", "loop"):
        gradient_variance(PathwiseELBO(num_particles=5, vectorize_particles=True), toy.model, toy.guide,
                          num_reps=10, method=method)
    assert torch.equal(torch.rand(3), expected_next)
    for name, value in pyro.get_param_store().items():
        assert torch.equal(value, before[name])
    assert theta.grad.item() == 0.25


def test_same_seed_same_numbers():
    toy = ToyGaussian(2.0)
    elbo = ScoreFunctionELBO(num_particles=7, vectorize_particles=True)
    a = gradient_variance(elbo, toy.model, toy.guide, num_reps=20, seed=5)["theta"]
    b = gradient_variance(elbo, toy.model, toy.guide, num_reps=20, seed=5)["theta"]
    c = gradient_variance(elbo, toy.model, toy.guide, num_reps=20, seed=6)["theta"]
    assert (a.mean, a.variance) == (b.mean, b.variance)
    assert a.mean != c.mean


def test_gradient_variance_argument_errors():
    toy = ToyGaussian()
    elbo = PathwiseELBO(num_particles=2)
    with pytest.raises(ValueError, match="num_reps must be at least 5"):
        gradient_variance(elbo, toy.model, toy.guide, num_reps=2)
    with pytest.raises(ValueError, match="unknown method"):
        gradient_variance(elbo, toy.model, toy.guide, method="magic")
    with pytest.raises(ValueError, match="vectorize_particles=True"):
        gradient_variance(elbo, toy.model, toy.guide, method="forward")
