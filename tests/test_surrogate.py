"""The surrogate of ppl_reparam.surrogate in both backends: plates, masks, subsampling, edge cases.

Each statistical test compares a measured mean with an exact gradient (within 5 standard errors:
two-sided normal tail 5.7e-7) and, where the per-sample variance has a closed form, checks that it lies
inside the measured Bonett interval at confidence 1 - 1e-6.
"""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as ndist
import pyro
import pyro.distributions as dist
import pytest
import torch
from numpyro import handlers
from pyro import poutine
from pyro.infer import RenyiELBO, TraceGraph_ELBO

from ppl_reparam import numpyro as np_backend
from ppl_reparam import pyro as pyro_backend
from ppl_reparam.stats import GradientStats, variance_ratio_ci

pytestmark = pytest.mark.usefixtures("quick_compiles")

K_SE, CONFIDENCE, REPS = 5.0, 1 - 1e-6, 2000


class Pyro:
    ppl, dist, backend = pyro, dist, pyro_backend

    @staticmethod
    def vectorized(cls, nesting):
        """The ELBO with its particles vectorized (so that gradient_variance measures in batches)."""
        return cls(vectorize_particles=True, max_plate_nesting=nesting)

    @staticmethod
    def array(x):
        return torch.tensor(x, dtype=torch.float32)

    @staticmethod
    def mask(flag):
        return poutine.mask(mask=torch.tensor(flag))

    @staticmethod
    def measure(elbo, model, guide, params, *args, reps=REPS, seed=0):
        for name, value in params.items():
            pyro.param(name, Pyro.array(value))
        return pyro_backend.gradient_variance(
            elbo, model, guide, *args, num_reps=reps, seed=seed, confidence=CONFIDENCE
        )

    @staticmethod
    def loss(elbo, model, guide, params, *args):
        for name, value in params.items():
            pyro.param(name, Pyro.array(value))
        return elbo.loss(model, guide, *args)


class NumPyro:
    ppl, dist, backend = numpyro, ndist, np_backend

    @staticmethod
    def vectorized(cls, nesting):
        return cls()

    @staticmethod
    def array(x):
        return jnp.asarray(x, dtype=jnp.float32)

    @staticmethod
    def mask(flag):
        return handlers.mask(mask=flag)

    @staticmethod
    def measure(elbo, model, guide, params, *args, reps=REPS, seed=0):
        params = {k: NumPyro.array(v) for k, v in params.items()}
        return np_backend.gradient_variance(
            elbo, model, guide, *args, params=params, num_reps=reps, seed=seed, confidence=CONFIDENCE
        )

    @staticmethod
    def loss(elbo, model, guide, params, *args):
        params = {k: NumPyro.array(v) for k, v in params.items()}
        return float(elbo.loss(jax.random.PRNGKey(0), params, model, guide, *args))


BACKENDS = [pytest.param(Pyro, id="pyro"), pytest.param(NumPyro, id="numpyro")]


def assert_mean(stats, exact):
    error = np.abs(stats.mean - np.asarray(exact))
    assert np.all(error <= K_SE * stats.standard_error), (stats.mean, exact, stats.standard_error)


def assert_variance(stats, exact):
    low, high = stats.variance_ci
    per_sample_low, per_sample_high = low * stats.num_particles, high * stats.num_particles
    assert np.all((per_sample_low <= exact) & (exact <= per_sample_high)), (stats.per_sample_variance, exact)


@pytest.mark.parametrize("b", BACKENDS)
def test_sites_in_plates_of_different_sizes_and_dims(b):
    """x ~ N(m, 1) in plate a (3), y ~ N(n, 1) in plate b (2, dim -2), priors N(0, 1): the gradient of
    -ELBO is m and n per element. Each element's cost is its own KL integrand m x - m^2 / 2, so the
    score function's per-sample variance is m^4 / 4 + 2 m^2 (2.25 at m = 1, 12 at n = 2): any term of
    another site or element in the cost would add to it."""
    ppl, d = b.ppl, b.dist

    def model():
        with ppl.plate("a", 3):
            ppl.sample("x", d.Normal(0.0, 1.0))
        with ppl.plate("b", 2, dim=-2):
            ppl.sample("y", d.Normal(0.0, 1.0))

    def guide():
        m, n = ppl.param("m", b.array(np.zeros(3))), ppl.param("n", b.array(np.zeros((2, 1))))
        with ppl.plate("a", 3):
            ppl.sample("x", d.Normal(m, 1.0))
        with ppl.plate("b", 2, dim=-2):
            ppl.sample("y", d.Normal(n, 1.0))

    elbo = b.vectorized(b.backend.ScoreFunctionELBO, 2)
    stats = b.measure(elbo, model, guide, {"m": np.ones(3), "n": np.full((2, 1), 2.0)})
    assert_mean(stats["m"], np.ones(3))
    assert_mean(stats["n"], np.full((2, 1), 2.0))
    assert_variance(stats["m"], 2.25)
    assert_variance(stats["n"], 12.0)


@pytest.mark.parametrize("b", BACKENDS)
def test_masked_site_keeps_its_score_against_unmasked_terms_downstream(b):
    """z masked out in model and guide, x ~ N(z, 1) observed and not masked: -ELBO = E[-log p(x | z)],
    whose gradient in m is -(x - m). A score function masked with its site would give 0."""
    ppl, d = b.ppl, b.dist

    def model():
        with b.mask(False):
            z = ppl.sample("z", d.Normal(0.0, 1.0))
        ppl.sample("x", d.Normal(z, 1.0), obs=b.array(1.5))

    def guide():
        with b.mask(False):
            ppl.sample("z", d.Normal(ppl.param("m", b.array(0.0)), 1.0))

    stats = b.measure(b.vectorized(b.backend.ScoreFunctionELBO, 0), model, guide, {"m": 0.5})
    assert_mean(stats["m"], -1.0)
    pathwise = b.measure(b.vectorized(b.backend.PathwiseELBO, 0), model, guide, {"m": 0.5})
    assert_mean(pathwise["m"], -1.0)


@pytest.mark.parametrize("b", BACKENDS)
def test_empty_model_and_guide_have_zero_loss(b):
    def nothing():
        pass

    for elbo in (b.backend.ScoreFunctionELBO(num_particles=3), b.backend.PathwiseELBO()):
        assert b.loss(elbo, nothing, nothing, {}) == 0.0


@pytest.mark.parametrize("b", BACKENDS)
def test_enumerated_model_site_is_refused_not_drawn_from_the_prior(b):
    ppl, d = b.ppl, b.dist

    def model():
        c = ppl.sample("c", d.Bernoulli(0.3), infer={"enumerate": "parallel"})
        ppl.sample("z", d.Normal(c, 1.0))

    def guide():
        ppl.sample("z", d.Normal(ppl.param("m", b.array(0.0)), 1.0))

    with pytest.raises(ValueError, match=r"site 'c'.*enumerate.*TraceEnum_ELBO"):
        b.loss(b.backend.ScoreFunctionELBO(), model, guide, {"m": 0.0})


@pytest.mark.parametrize("b", BACKENDS)
def test_analytic_kl_of_a_fully_masked_site(b):
    """Pyro's closed-form KL of a pair masked with .mask(False) is the float 0.0: the loss is then
    that of the unmasked site alone, KL(N(m, 1) || N(0, 1)) = m^2 / 2."""
    ppl, d = b.ppl, b.dist

    def model():
        ppl.sample("a", d.Normal(0.0, 1.0).mask(False))
        ppl.sample("z", d.Normal(0.0, 1.0))

    def guide():
        ppl.sample("a", d.Normal(ppl.param("n", b.array(3.0)), 1.0).mask(False))
        ppl.sample("z", d.Normal(ppl.param("m", b.array(0.0)), 1.0))

    for elbo in (b.backend.ScoreFunctionELBO(analytic_kl=True), b.backend.PathwiseELBO(analytic_kl=True)):
        assert b.loss(elbo, model, guide, {"m": 2.0, "n": 3.0}) == pytest.approx(2.0)


def test_analytic_kl_warns_when_the_guide_may_not_be_mean_field():
    """As Pyro's TraceMeanField_ELBO: model and guide draw the shared sites in different orders."""

    def model():
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        pyro.sample("b", dist.Normal(a, 1.0))

    def guide():
        b = pyro.sample("b", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0))
        pyro.sample("a", dist.Normal(b, 1.0))

    with pytest.warns(UserWarning, match="could not verify that the guide is mean field"):
        pyro_backend.PathwiseELBO(analytic_kl=True).loss(model, guide)

    def same_order():
        a = pyro.sample("a", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0))
        pyro.sample("b", dist.Normal(a, 1.0))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pyro_backend.PathwiseELBO(analytic_kl=True).loss(model, same_order)


def test_plate_nesting_guess_runs_the_guide_under_the_forcing():
    """With vectorized particles and no max_plate_nesting, Pyro guesses the nesting from a run of the
    guide and model: a score-function site's sample must not reach the model with a gradient there."""

    def model():
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
        if z.requires_grad:
            raise AssertionError("a score-function sample reached the model with a gradient")

    def guide():
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Normal(pyro.param("m", torch.zeros(3)), 1.0))

    elbo = pyro_backend.ScoreFunctionELBO(num_particles=4, vectorize_particles=True)
    assert math.isfinite(elbo.loss_and_grads(model, guide))


# ------------------------------------------------------------------- measurement under subsampling
def _subsampled_problem():
    """z ~ N(0, 10^2), x_i ~ N(z, 1) for 100 points, 5 a step; guide N(loc, 1), pathwise. A step's
    gradient in loc is z / 100 - 20 sum_{i in S} (x_i - z) with z = loc + eps: mean loc / 100 -
    sum_i (x_i - loc), variance (100 + 1/100)^2 + 400 * 5 s^2 (1 - 5/100) (sampling 5 of 100 without
    replacement, s^2 the data's variance with divisor 99)."""
    data = torch.arange(100.0).remainder(7.0) * 1.3 - 2.0

    def model(data):
        z = pyro.sample("z", dist.Normal(0.0, 10.0))
        with pyro.plate("data", 100, subsample_size=5) as idx:
            pyro.sample("x", dist.Normal(z, 1.0), obs=data[idx])

    def guide(data):
        pyro.sample("z", dist.Normal(pyro.param("loc", torch.tensor(0.5)), 1.0))

    loc = 0.5
    mean = loc / 100 - float((data - loc).sum())
    variance = (100 + 1 / 100) ** 2 + 400 * 5 * float(data.double().var()) * (1 - 5 / 100)
    return model, guide, data, mean, variance


def test_gradient_variance_draws_a_subsample_per_repetition():
    """The default method against a hand-written loop of loss_and_grads, on a subsampled model: both
    unbiased, both with the exact variance (one subsample for many repetitions would shrink it)."""
    model, guide, data, mean, variance = _subsampled_problem()
    reps = 800
    elbo = pyro_backend.PathwiseELBO(vectorize_particles=True, max_plate_nesting=1)
    stats = pyro_backend.gradient_variance(elbo, model, guide, data, num_reps=reps, seed=0, confidence=CONFIDENCE)
    assert_mean(stats["loc"], mean)
    assert_variance(stats["loc"], variance)

    pyro.set_rng_seed(1)
    loc = pyro.param("loc").unconstrained()
    grads = []
    for _ in range(reps):
        loc.grad = None
        elbo.loss_and_grads(model, guide, data)
        grads.append(float(loc.grad))
    by_hand = GradientStats.from_samples({"loc": np.array(grads)}, 1, 0.0, CONFIDENCE)
    assert_mean(by_hand["loc"], mean)
    assert_variance(by_hand["loc"], variance)
    with pytest.raises(ValueError, match=r"subsampled plates \['data'\].*method='loop'"):
        pyro_backend.gradient_variance(elbo, model, guide, data, num_reps=10, method="forward")


def test_gradient_variance_of_pyro_elbos_without_differentiable_loss():
    """TraceGraph_ELBO and RenyiELBO are measured through loss_and_grads; TraceGraph_ELBO on the forced
    guide gives ScoreFunctionELBO's estimates draw for draw; a decaying-average baseline's state and the
    parameters' .grad are left as they were."""

    def model(baseline=False):
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor([0.3, -1.0, 2.0]))

    def guide(baseline=False):
        m = pyro.param("m", torch.zeros(3))
        infer = {"baseline": {"use_decaying_avg_baseline": True}} if baseline else {}
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Normal(m, 1.0), infer=infer)

    ours = pyro_backend.gradient_variance(pyro_backend.ScoreFunctionELBO(), model, guide, num_reps=50, method="loop")
    forced = pyro_backend.force_estimator(guide, "score")
    theirs = pyro_backend.gradient_variance(TraceGraph_ELBO(), model, forced, num_reps=50)
    np.testing.assert_allclose(theirs["m"].samples, ours["m"].samples, rtol=1e-5, atol=1e-6)

    pyro.param("m").unconstrained().grad = torch.ones(3)
    pyro_backend.gradient_variance(TraceGraph_ELBO(), model, forced, True, num_reps=20)
    assert set(pyro.get_param_store().keys()) == {"m"}
    assert torch.equal(pyro.param("m").unconstrained().grad, torch.ones(3))
    renyi = pyro_backend.gradient_variance(RenyiELBO(alpha=0.5), model, guide, num_reps=20)
    assert np.all(np.isfinite(renyi["m"].mean))


def test_variance_ratio_of_identical_samples_is_exactly_one():
    a = np.random.default_rng(0).normal(size=(40, 3))
    assert variance_ratio_ci(a, a) == (1.0, (1.0, 1.0))
    assert variance_ratio_ci(2 * a, a) == (4.0, (4.0, 4.0))


def test_partially_reparameterized_site_keeps_its_score_function_term():
    """A rejection sampler (Pyro's ShapeAugmentedGamma) is reparameterized but its acceptance step needs
    a score-function term (Naesseth et al. 2017), which Pyro's Trace_ELBO adds with every term as cost:
    PathwiseELBO gives its gradient on the same draws."""
    from pyro.distributions.testing.rejection_gamma import ShapeAugmentedGamma
    from pyro.infer import Trace_ELBO

    def model():
        pyro.sample("z", dist.Gamma(2.0, 1.0))
        pyro.sample("w", dist.Normal(0.0, 1.0))

    def guide():
        a = pyro.param("a", torch.tensor(0.7), constraint=dist.constraints.positive)
        b = pyro.param("b", torch.tensor(1.5), constraint=dist.constraints.positive)
        pyro.sample("z", ShapeAugmentedGamma(a, b))
        pyro.sample("w", dist.Normal(pyro.param("m", torch.tensor(0.3)), 1.0))

    grads = []
    for elbo in (pyro_backend.PathwiseELBO(), Trace_ELBO()):
        pyro.clear_param_store()
        pyro.set_rng_seed(3)
        elbo.loss_and_grads(model, guide)
        grads.append(torch.stack([p.grad for _, p in pyro.get_param_store().named_parameters()]))
    torch.testing.assert_close(grads[0], grads[1])
