"""NumPyro MeanField: family per support, initialisation, errors, plates and subsampling, per-site
estimators, and SVI to a conjugate posterior.

Initial moments are exact by construction (float32 arithmetic: rtol 1e-5). The gradient mean is
checked against the exact gradient of the closed-form -ELBO within K_SE = 5.5 standard errors (a
two-sided normal tail of 3.8e-8), as in test_mean_field.py for the Pyro guide.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax import random
from numpyro.handlers import seed, substitute, trace
from numpyro.infer import SVI

from ppl_reparam.numpyro import (
    EstimatorDistribution,
    MeanField,
    PathwiseELBO,
    ScoreFunctionELBO,
    force_estimator,
    gradient_variance,
)
from ppl_reparam.numpyro.variance import init_params

K_SE = 5.5
RTOL = 1e-5
KEY = random.PRNGKey(0)


pytestmark = pytest.mark.usefixtures("quick_compiles")


def every_support():
    """One latent site per support MeanField covers, with priors whose moments are known."""
    numpyro.sample("real", dist.Normal(1.0, 2.0))
    numpyro.sample("vector", dist.Normal(jnp.zeros(3), 1.0).to_event(1))
    numpyro.sample("positive", dist.Gamma(3.0, 2.0))
    numpyro.sample("shape", dist.Gamma(3.0, 2.0))
    numpyro.sample("heavy", dist.HalfCauchy(1.0))
    numpyro.sample("unit", dist.Beta(2.0, 3.0))
    numpyro.sample("uniform", dist.Uniform(0.0, 1.0))
    numpyro.sample("simplex", dist.Dirichlet(jnp.array([1.0, 2.0, 3.0])))


def assert_close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual), np.broadcast_to(expected, np.shape(actual)), rtol=RTOL, atol=0)


def test_family_per_support_and_initial_moments():
    guide = MeanField(every_support, families={"shape": "gamma"})
    with seed(rng_seed=0):
        guide._setup_prototype()  # eagerly, cheap; the guide's draws are then only traced, for their shapes
    tr = jax.eval_shape(lambda key: {k: v["value"] for k, v in trace(seed(guide, key)).get_trace().items()}, KEY)
    q = {
        name: guide.distribution(name)
        for name in ("real", "vector", "positive", "shape", "heavy", "unit", "uniform", "simplex")
    }
    assert type(q["real"]) is dist.Normal
    assert type(q["vector"]) is dist.Independent and type(q["vector"].base_dist) is dist.Normal
    assert type(q["positive"]) is dist.LogNormal and type(q["heavy"]) is dist.LogNormal
    assert type(q["shape"]) is dist.Gamma
    assert type(q["unit"]) is dist.Beta and type(q["uniform"]) is dist.Beta
    assert type(q["simplex"]) is dist.Dirichlet
    for name, fn in q.items():
        assert tr[name].shape == fn.shape()
    assert "MeanField.params.shape.concentration" in tr  # the Pyro guide's param names
    # Mean = prior mean; sd = init_scale (0.1) x prior sd.
    assert_close(q["real"].mean, 1.0)
    assert_close(jnp.sqrt(q["real"].variance), 0.2)
    assert_close(jnp.sqrt(q["vector"].variance), 0.1)
    for name in ("positive", "shape"):
        assert_close(q[name].mean, 1.5)
        assert_close(jnp.sqrt(q[name].variance), 0.1 * math.sqrt(3) / 2)
    assert_close(q["unit"].mean, 0.4)
    assert_close(jnp.sqrt(q["unit"].variance), 0.1 * math.sqrt(0.4 * 0.6 / 6))
    assert_close(jnp.sqrt(q["uniform"].variance), 0.1 * math.sqrt(1 / 12))
    assert_close(q["simplex"].mean, np.array([1.0, 2.0, 3.0]) / 6)
    assert_close(q["simplex"].variance, 0.01 * dist.Dirichlet(jnp.array([1.0, 2.0, 3.0])).variance)
    # HalfCauchy: infinite mean and variance, so the mean is the prior's empirical median and the sd 0.1 x that.
    assert_close(jnp.sqrt(q["heavy"].variance) / q["heavy"].mean, 0.1)


def test_spread_is_capped_on_the_unit_interval():
    # init_scale = 5 asks for an sd above what a Beta with mean m can have; the cap sqrt(m (1 - m) / 2)
    # gives a total concentration of 1.
    guide = MeanField(lambda: numpyro.sample("p", dist.Beta(2.0, 3.0)), init_scale=5.0)
    with seed(rng_seed=0):
        guide._setup_prototype()
    q = guide.distribution("p")
    assert_close(q.concentration1 + q.concentration0, 1.0)


@pytest.mark.parametrize(
    "fn, support",
    [
        (dist.Bernoulli(0.3), "Boolean()"),
        (dist.Categorical(jnp.ones(4) / 4), "IntegerInterval(lower_bound=0, upper_bound=3)"),
        (dist.Uniform(0.0, 5.0), "Interval(lower_bound=0.0, upper_bound=5.0)"),
        (dist.LKJCholesky(2, 1.0), "CorrCholesky()"),
    ],
)
def test_unsupported_support_names_site_and_support(fn, support):
    guide = MeanField(lambda: numpyro.sample("odd", fn))
    with pytest.raises(ValueError, match="site 'odd' has") as error:
        seed(guide, 0)()
    assert support in str(error.value)
    if fn.support.is_discrete:
        assert "discrete" in str(error.value) and "enumeration" in str(error.value)


def test_family_must_fit_the_support():
    with pytest.raises(ValueError, match=r"families\['positive'\] = 'beta'.*\['gamma', 'lognormal'\]"):
        seed(MeanField(every_support, families={"positive": "beta"}), 0)()
    with pytest.raises(ValueError, match="unknown family 'weibull' for site 'positive'"):
        MeanField(every_support, families={"positive": "weibull"})
    with pytest.raises(ValueError, match=r"estimators=\.\.\. names \['nope'\]"):
        seed(MeanField(every_support, estimators={"nope": "score"}), 0)()
    with pytest.raises(ValueError, match="unknown estimator 'reinforce'"):
        MeanField(every_support, estimators={"real": "reinforce"})
    with pytest.raises(ValueError, match="init_scale must be positive"):
        MeanField(every_support, init_scale=0.0)


def grouped(subsample_size=None):
    """Ten groups, local latents on the real line and on the simplex (event dim 1), data per group."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("groups", 10, subsample_size=subsample_size) as idx:
        theta = numpyro.sample("theta", dist.Normal(mu, 1.0))
        w = numpyro.sample("w", dist.Dirichlet(jnp.ones(3)))
        numpyro.sample("x", dist.Normal(theta + w[..., 0], 1.0), obs=jnp.arange(10.0)[idx])


def test_plates_and_subsampling_use_full_size_params_indexed_by_the_subsample():
    guide = MeanField(grouped, create_plates=lambda size=None: numpyro.plate("groups", 10, subsample_size=size))
    with seed(rng_seed=0):
        guide._setup_prototype(3)  # the prototype sees 3 of 10 groups; the rest runs compiled
    elbo = ScoreFunctionELBO(sites=["w"])  # theta pathwise, w score function

    @jax.jit
    def run():
        values, _ = init_params(grouped, guide, KEY, 3)
        tiny = {
            **values,
            "MeanField.params.theta.loc": jnp.arange(10.0),
            "MeanField.params.theta.scale": jnp.full(10, 1e-6),
        }
        tr = trace(substitute(seed(guide, 1), data=tiny)).get_trace(3)
        grads = jax.grad(lambda p: elbo.loss(KEY, p, grouped, guide, 3))(values)
        return values, tr["groups"]["value"], tr["theta"]["value"], tr["w"]["value"], grads

    values, idx, theta, w, grads = run()
    # The parameters have the full size; the guide uses the rows of the subsample's indices.
    assert values["MeanField.params.theta.loc"].shape == (10,)
    assert values["MeanField.params.w.mean"].shape == (10, 3)
    assert values["MeanField.params.w.concentration"].shape == (10, 1)
    assert theta.shape == (3,) and w.shape == (3, 3)
    np.testing.assert_allclose(theta, idx, atol=1e-4)
    # A gradient estimate (one particle) touches only the 3 subsampled rows, of pathwise (theta) and
    # score-function (w) sites alike.
    for name in ("theta.loc", "theta.scale", "w.mean", "w.concentration"):
        rows = np.asarray(grads[f"MeanField.params.{name}"]).reshape(10, -1)
        assert (np.abs(rows).sum(1) != 0).sum() == 3, name


def two_sites():
    numpyro.sample("a", dist.Normal(0.0, 1.0))
    numpyro.sample("b", dist.Gamma(2.0, 1.0))


def choices(guide):
    """Per site: True = pathwise, False = score function (EstimatorDistribution), None = not forced;
    and the site's own infer={"estimator": ...}."""
    tr = trace(seed(guide, 0)).get_trace()
    return {
        name: (
            tr[name]["fn"].has_rsample if isinstance(tr[name]["fn"], EstimatorDistribution) else None,
            tr[name]["infer"].get("estimator"),
        )
        for name in ("a", "b")
    }


def test_estimators_per_site_are_respected_by_force_estimator():
    guide = MeanField(two_sites, estimators={"a": "score"})
    assert choices(guide) == {"a": (False, "score"), "b": (None, None)}
    # forcing records its choice as the site's request (so an enclosing ELBO keeps it)
    assert choices(force_estimator(guide, "pathwise")) == {"a": (False, "score"), "b": (True, "pathwise")}
    assert choices(force_estimator(guide, "pathwise", sites=["a"])) == {"a": (True, "pathwise"), "b": (None, None)}
    assert choices(force_estimator(guide, "score")) == {"a": (False, "score"), "b": (False, "score")}


NN_DATA = jnp.array([2.54, 0.71, -1.18, 1.57, -0.08, -0.4, 1.4, 1.84, 0.28, 0.6])  # ppl_reparam.models.normal_normal


def normal_normal(data=NN_DATA):
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    with numpyro.plate("data", len(data)):
        numpyro.sample("obs", dist.Normal(mu, 1.0), obs=data)


def test_score_site_under_pathwise_elbo_is_unbiased():
    # The site asks for the score function (estimators=...), which PathwiseELBO respects. Exact
    # gradient: -ELBO = (m^2 + s^2)/8 + sum_i ((x_i - m)^2 + s^2)/2 - log s + const for q = N(m, s^2),
    # in (m, log s): (m/4 + sum (m - x_i), s^2/4 + n s^2 - 1).
    guide = MeanField(normal_normal, estimators={"mu": "score"})
    stats = gradient_variance(PathwiseELBO(num_particles=4), normal_normal, guide, num_reps=400, seed=3)
    m, s, n = 0.0, 0.2, len(NN_DATA)
    exact = {
        "MeanField.params.mu.loc": m / 4 + float(jnp.sum(m - NN_DATA)),
        "MeanField.params.mu.scale": s**2 / 4 + n * s**2 - 1,
    }
    for name, grad in exact.items():
        assert abs(stats[name].mean - grad) <= K_SE * stats[name].standard_error, (name, stats[name].mean, grad)
    # Score function, not pathwise: the pathwise per-sample gradient in loc, z / 4 + sum_i (z - x_i), has
    # variance (10 + 1/4)^2 s^2 = 4.2 at s = 0.2; the score function's is orders of magnitude above.
    assert stats["MeanField.params.mu.loc"].per_sample_variance > 10 * 4.2


COIN = jnp.array([1.0] * 6 + [0.0] * 4)  # ppl_reparam.models.beta_bernoulli: 6 heads in 10 tosses


def coin(data=COIN):
    fairness = numpyro.sample("latent_fairness", dist.Beta(10.0, 10.0))
    with numpyro.plate("data", len(data)):
        numpyro.sample("obs", dist.Bernoulli(fairness), obs=data)


STEPS, AVERAGED = 400, 0.3
POSTERIOR_MEAN, POSTERIOR_SD = 16 / 30, math.sqrt(16 * 14 / (30**2 * 31))  # Beta(16, 14): 0.5333, 0.0896


@pytest.mark.parametrize("estimator", ["pathwise+stl", "score+rloo"])
def test_svi_reaches_the_beta_bernoulli_posterior(estimator):
    # SVI under jit (one lax.scan): Adam, learning rate 0.1 decaying geometrically to 0.005 over 400 steps,
    # the guide's mean and sd averaged over the last 30% of the iterates. The Beta family contains the
    # posterior Beta(16, 14) (mean 16/30 = 0.5333, sd 0.0896), so the optimum is exact, and both
    # estimators are exactly 0 there: the cost log q(z) - log p(x, z) = -log p(x) is the same for every z,
    # so the leave-one-out baseline cancels it and the path derivative of sticking the landing vanishes
    # (Roeder, Wu and Duvenaud 2017); the iterates settle. Over seeds 0-19 (measured once) the largest
    # errors were 3e-6 (mean, in posterior sds) and 2e-6 (sd, relative) for pathwise+stl, 2e-4 and 0.004
    # for score+rloo; tolerances 0.05 for both, as tests/test_conjugate.py for the Pyro guide.
    # "score+rloo": the site asks for the score function (estimators=...) under PathwiseELBO.
    if estimator == "pathwise+stl":
        guide, elbo = MeanField(coin), PathwiseELBO(num_particles=4, stl=True)
    else:
        guide = MeanField(coin, estimators={"latent_fairness": "score"})
        elbo = PathwiseELBO(num_particles=8, baseline="rloo")
    optim = numpyro.optim.Adam(lambda i: 0.1 * (0.005 / 0.1) ** (i / STEPS))
    svi = SVI(coin, guide, optim, loss=elbo)

    @jax.jit
    def moments(state):
        def step(state, _):
            state, _ = svi.update(state)
            q = guide.distribution("latent_fairness", svi.get_params(state))
            return state, (q.mean, jnp.sqrt(q.variance))

        return jax.lax.scan(step, state, None, length=STEPS)[1]

    kept = int(STEPS * (1 - AVERAGED))
    mean, sd = (float(jnp.mean(x[kept:])) for x in moments(svi.init(random.PRNGKey(0))))
    assert abs(mean - POSTERIOR_MEAN) <= 0.05 * POSTERIOR_SD, (mean, POSTERIOR_MEAN)
    assert abs(sd / POSTERIOR_SD - 1) <= 0.05, (sd, POSTERIOR_SD)


def test_median_and_quantiles_equal_the_pyro_guides():
    """NumPyro's ``median(params)`` and ``quantiles(params, ps)``: the Pyro guide's (the same rules,
    the same initial parameters, the same SciPy quantiles; the Pyro test checks them against draws),
    and at trained params those params' own quantiles. The HalfCauchy site starts at the prior's
    empirical median, drawn by each backend's own random numbers, so it is left out."""
    import pyro

    from ppl_reparam.pyro import MeanField as PyroMeanField
    from tests.test_mean_field import every_support as pyro_every_support

    guide = MeanField(every_support, families={"shape": "gamma"})
    with seed(rng_seed=0):
        guide._setup_prototype()
    pyro.set_rng_seed(0)
    pyro_guide = PyroMeanField(pyro_every_support, families={"shape": "gamma"})
    pyro_guide()
    probs = [0.05, 0.5, 0.95]
    ours, theirs = guide.quantiles({}, probs), pyro_guide.quantiles(probs)
    assert sorted(ours) == sorted(theirs)
    for name, values in theirs.items():
        if name == "heavy":
            continue
        np.testing.assert_allclose(np.asarray(ours[name]), values.numpy(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(guide.median({})["unit"]), pyro_guide.median()["unit"].numpy(), rtol=1e-5)
    moved = guide.median({"MeanField.params.real.loc": jnp.array(-3.0)})
    assert float(moved["real"]) == -3.0
