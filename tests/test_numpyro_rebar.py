"""REBAR as a per-site estimator of the NumPyro ELBOs (as tests/test_pyro_rebar.py): the mean is the
exact gradient by enumeration, at two settings of the control, with the closed-form KL and with several
particles; the errors.

Means must lie within 5.5 standard errors of the exact gradient (two-sided normal tail 3.8e-8)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import Trace_ELBO

from ppl_reparam.models.toy_gaussian_numpyro import ToyGaussian
from ppl_reparam.numpyro import PathwiseELBO, RebarELBO, force_estimator, gradient_variance
from ppl_reparam.numpyro.specs import make_elbo

Z = 5.5
W = jnp.array([[0.5, -1.0, 0.3], [1.2, 0.2, -0.7], [0.1, 0.9, 0.4]])
LOGITS = jnp.array([[0.2, -0.4, 0.7], [-0.3, 0.5, 0.1]])
PRIOR = 0.4


def f(b):
    return ((b @ W) ** 2).sum(-1) + 0.5 * b.sum(-1)


def model():
    with numpyro.plate("rows", 2):
        b = numpyro.sample("b", dist.Bernoulli(jnp.full((3,), PRIOR)).to_event(1))
        numpyro.factor("f", -f(b))


def guide():
    logits = numpyro.param("l", LOGITS)
    with numpyro.plate("rows", 2):
        numpyro.sample("b", dist.Bernoulli(logits=logits).to_event(1))


def exact_gradient():
    bits = jnp.array(list(itertools.product([0.0, 1.0], repeat=3)))[:, None, :]

    def objective(logits):
        log_q = dist.Bernoulli(logits=logits).to_event(1).log_prob(bits)
        log_p = dist.Bernoulli(jnp.full((3,), PRIOR)).to_event(1).log_prob(bits)
        return jnp.sum(jnp.exp(log_q) * (f(bits) + log_q - log_p))

    return np.asarray(jax.grad(objective)(LOGITS))


@pytest.mark.parametrize("elbo", [RebarELBO(), RebarELBO(rebar_eta=0.5, rebar_temperature=2.0),
                                  RebarELBO(analytic_kl=True), RebarELBO(num_particles=3), PathwiseELBO()])
def test_mean_is_the_exact_gradient(elbo):
    reps = 3000
    run = guide if isinstance(elbo, RebarELBO) else force_estimator(guide, "rebar")
    stats = gradient_variance(elbo, model, run, num_reps=reps, seed=2)["l"]
    se = np.sqrt(np.asarray(stats.variance) / reps)
    assert np.all(np.abs(np.asarray(stats.mean) - exact_gradient()) <= Z * se), (stats.mean, exact_gradient())


def test_spec():
    elbo = make_elbo("rebar+t=2+eta=0.5:3")
    assert elbo == RebarELBO(num_particles=3, rebar_temperature=2.0, rebar_eta=0.5)


def test_errors():
    toy = ToyGaussian(2.0)
    with pytest.raises(ValueError, match="site 'x': REBAR relaxes Bernoulli bits, and Normal is not a Bernoulli"):
        RebarELBO().loss(jax.random.PRNGKey(0), {}, toy.model, toy.guide)
    with pytest.raises(ValueError, match="REBAR estimator is differentiated only by this package's ELBOs"):
        Trace_ELBO().loss(jax.random.PRNGKey(0), {}, model, force_estimator(guide, "rebar"))
    with pytest.raises(ValueError, match="baselines apply to the score function"):
        RebarELBO(baseline="ma")
    given = numpyro.handlers.substitute(guide, data={"b": jnp.ones((2, 3))})
    with pytest.raises(ValueError, match="site 'b': the REBAR estimator needs the draw its own sampler made"):
        jax.grad(lambda p: RebarELBO().loss(jax.random.PRNGKey(0), p, model, given))({"l": LOGITS})
