"""The measure-valued estimator as a per-site choice in the NumPyro ELBOs (as tests/test_pyro_measure.py
for Pyro): the toy's closed forms, each family's mean against the exact gradient (autograd of the
closed-form E_q[f] - H[q] under a flat prior), plates, event dims, masks and downstream sites, the
errors.

Means must lie within 5.5 standard errors of the exact gradient (two-sided normal tail 3.8e-8); the
closed-form variance inside the measured interval at confidence 1 - 1e-6."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax.scipy.special import digamma, gammaln
from numpyro.distributions import constraints
from numpyro.infer import SVI, Trace_ELBO
from numpyro.optim import Adam

from ppl_reparam.analytic import measure_valued_variance
from ppl_reparam.models.toy_gaussian_numpyro import ToyGaussian
from ppl_reparam.numpyro import MeasureValuedELBO, PathwiseELBO, force_estimator, gradient_variance
from ppl_reparam.numpyro.specs import make_elbo

Z, CONFIDENCE = 5.5, 1 - 1e-6


@pytest.mark.parametrize("coupling", [True, False])
def test_toy_closed_forms(coupling):
    theta, reps = 2.0, 4000
    toy = ToyGaussian(theta)
    stats = gradient_variance(MeasureValuedELBO(analytic_kl=True, coupling=coupling), toy.model, toy.guide,
                              num_reps=reps, seed=1, confidence=CONFIDENCE)["theta"]
    assert abs(float(stats.mean) - 2 * theta) <= Z * math.sqrt(float(stats.variance) / reps)
    low, high = stats.variance_ci
    assert low <= measure_valued_variance(theta, coupling=coupling) <= high


def test_spec_builds_the_measure_valued_elbo_and_equal_options_are_equal():
    elbo = make_elbo("measure+akl+indep:4")
    assert isinstance(elbo, MeasureValuedELBO) and elbo.analytic_kl and not elbo.coupling
    assert elbo.num_particles == 4
    assert elbo == MeasureValuedELBO(num_particles=4, analytic_kl=True, coupling=False)
    assert elbo != MeasureValuedELBO(num_particles=4, analytic_kl=True)


# ---------------------------------------------------------------------------- families
def _positive(name, value):
    return numpyro.param(name, jnp.asarray(value), constraint=constraints.positive)


_TABLE = jnp.array([1.0, -2.0, 0.5, 3.0])
_POISSON_K = jnp.arange(80.0)

FAMILIES = {
    # name: (guide distribution, support, f, E_q[f] - H[q] from the constrained params in name order)
    "Normal": (
        lambda: dist.Normal(numpyro.param("a", 0.7), _positive("b", 1.3)),
        constraints.real, lambda z: (z - 0.5) ** 2,
        lambda a, b: (a - 0.5) ** 2 + b**2 - 0.5 * jnp.log(2 * math.pi * math.e * b**2),
    ),
    "LogNormal": (
        lambda: dist.LogNormal(numpyro.param("a", 0.2), _positive("b", 0.4)),
        constraints.positive, lambda z: z**2,
        lambda a, b: jnp.exp(2 * a + 2 * b**2) - (a + 0.5 + jnp.log(b * math.sqrt(2 * math.pi))),
    ),
    "Exponential": (
        lambda: dist.Exponential(_positive("a", 1.5)),
        constraints.positive, lambda z: z**2,
        lambda a: 2 / a**2 - (1 - jnp.log(a)),
    ),
    "Gamma": (
        lambda: dist.Gamma(2.5, _positive("a", 1.7)),
        constraints.positive, lambda z: z**2,
        lambda a: 2.5 * 3.5 / a**2 - (2.5 - jnp.log(a) + gammaln(2.5) + (1 - 2.5) * digamma(2.5)),
    ),
    "Poisson": (
        lambda: dist.Poisson(_positive("a", 2.2)),
        constraints.nonnegative_integer, lambda z: (z - 1.0) ** 2,
        # E[f] + E[log q], summed over k < 80 (the rest of the mass is below 1e-80)
        lambda a: a + (a - 1.0) ** 2 + jnp.sum(jnp.exp(_poisson(a)) * _poisson(a)),
    ),
    "Bernoulli": (
        lambda: dist.Bernoulli(logits=numpyro.param("a", 0.4)),
        constraints.boolean, lambda z: 3 * (z - 0.3) ** 2,
        lambda a: _bernoulli(jax.nn.sigmoid(a)),
    ),
    "Categorical": (
        lambda: dist.Categorical(logits=numpyro.param("a", jnp.array([0.3, -0.2, 0.5, 0.0]))),
        constraints.integer_interval(0, 3), lambda z: _TABLE[z],
        lambda a: jnp.sum(jax.nn.softmax(a) * (_TABLE + jax.nn.log_softmax(a))),
    ),
}


def _poisson(a):
    return _POISSON_K * jnp.log(a) - a - gammaln(_POISSON_K + 1)


def _bernoulli(p):
    return p * 3 * 0.49 + (1 - p) * 3 * 0.09 + p * jnp.log(p) + (1 - p) * jnp.log1p(-p)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_mean_is_the_exact_gradient(family):
    q, support, f, objective = FAMILIES[family]

    def model():
        z = numpyro.sample("z", dist.ImproperUniform(support, (), ()))
        numpyro.factor("f", -f(z))

    def guide():
        numpyro.sample("z", q())

    reps = 3000
    stats = gradient_variance(MeasureValuedELBO(), model, guide, num_reps=reps, seed=11)
    # the exact gradient in the unconstrained parameters (the log of the positive ones)
    names = sorted(stats.params)
    logged = POSITIVE.get(family, set())
    free = {n: jnp.log(VALUES[family][n]) if n in logged else jnp.asarray(VALUES[family][n]) for n in names}
    grads = jax.grad(lambda free: objective(*(jnp.exp(free[n]) if n in logged else free[n] for n in names)))(free)
    for n in names:
        s, g = stats[n], np.asarray(grads[n])
        se = np.sqrt(np.asarray(s.variance) / reps)
        # (Bernoulli and Categorical are exact, variance 0: no randomness downstream; float32 rounding)
        assert np.all(np.abs(np.asarray(s.mean) - g) <= Z * se + 1e-5 * (1 + np.abs(g))), (n, s.mean, g, se)


VALUES = {
    "Normal": {"a": 0.7, "b": 1.3}, "LogNormal": {"a": 0.2, "b": 0.4}, "Exponential": {"a": 1.5},
    "Gamma": {"a": 1.7}, "Poisson": {"a": 2.2}, "Bernoulli": {"a": 0.4},
    "Categorical": {"a": [0.3, -0.2, 0.5, 0.0]},
}
"""The initial values of the guides above, constrained."""
POSITIVE = {"Normal": {"b"}, "LogNormal": {"b"}, "Exponential": {"a"}, "Gamma": {"a"}, "Poisson": {"a"}}


def _structured(mask):
    """A plate of 4, an event dim of 3, a mask, and a pathwise site drawn after the measure-valued one
    and depending on it."""
    m = jnp.array([True, False, True, True]) if mask else jnp.ones(4, dtype=bool)
    loc0 = jnp.array([[0.3, -0.1, 0.2], [0.5, 0.0, -0.4], [0.1, 0.1, 0.1], [-0.3, 0.2, 0.6]])

    def model():
        with numpyro.plate("data", 4):
            z = numpyro.sample("z", dist.Normal(jnp.zeros(3), 1.0).to_event(1).mask(m))
            y = numpyro.sample("y", dist.Normal(z.sum(-1), 1.0).mask(m))
            numpyro.factor("f", -((y - 1.0) ** 2) * m)

    def guide():
        loc = numpyro.param("loc", loc0)
        s = numpyro.param("s", jnp.array([0.8, 1.1, 0.9]), constraint=constraints.positive)
        with numpyro.plate("data", 4):
            z = numpyro.sample("z", dist.Normal(loc, s).to_event(1).mask(m))
            numpyro.sample("y", dist.Normal(z.sum(-1) + 0.5, 1.0).mask(m))

    return model, guide


@pytest.mark.parametrize("mask", [False, True])
def test_plates_events_masks_and_downstream_sites(mask):
    # Against the pathwise estimator on the same problem, both unbiased: means agree within their
    # combined standard errors.
    model, guide = _structured(mask)
    reps = 3000
    a = gradient_variance(PathwiseELBO(), model, force_estimator(guide, "measure", sites=["z"]), num_reps=reps, seed=3)
    b = gradient_variance(PathwiseELBO(), model, guide, num_reps=reps, seed=3)
    for p in ("loc", "s"):
        se = np.sqrt((np.asarray(a[p].variance) + np.asarray(b[p].variance)) / reps)
        assert np.all(np.abs(np.asarray(a[p].mean) - np.asarray(b[p].mean)) <= Z * se + 1e-7), p


def test_trains_under_svi():
    toy = ToyGaussian(2.0)
    svi = SVI(toy.model, toy.guide, Adam(0.1), MeasureValuedELBO(analytic_kl=True))
    result = svi.run(jax.random.PRNGKey(0), 200, progress_bar=False)
    assert abs(float(result.params["theta"])) < 0.3  # the minimum of E[x^2] is theta = 0


# ------------------------------------------------------------------------------- errors
def _run(elbo, model, guide):
    return elbo.loss(jax.random.PRNGKey(0), {}, model, guide)


def test_unsupported_family_and_gamma_concentration_name_the_site():
    def model():
        numpyro.sample("w", dist.Beta(1.0, 1.0))

    def beta_guide():
        numpyro.sample("w", dist.Beta(numpyro.param("a", 2.0, constraint=constraints.positive), 2.0))

    with pytest.raises(ValueError, match=r"site 'w'.*no weak derivative for Beta.*Use 'score' or 'pathwise'"):
        jax.grad(lambda p: MeasureValuedELBO().loss(jax.random.PRNGKey(0), p, model, beta_guide))({"a": 2.0})

    def gamma_model():
        numpyro.sample("w", dist.Gamma(1.0, 1.0))

    def gamma_guide():
        numpyro.sample("w", dist.Gamma(numpyro.param("c", 2.0, constraint=constraints.positive), 1.0))

    with pytest.raises(ValueError, match=r"site 'w': Gamma's concentration has no measure-valued gradient"):
        jax.grad(lambda p: MeasureValuedELBO().loss(jax.random.PRNGKey(0), p, gamma_model, gamma_guide))({"c": 2.0})


def test_numpyro_own_elbo_and_baselines_are_refused():
    toy = ToyGaussian(2.0)
    with pytest.raises(ValueError, match="measure-valued estimator is differentiated only by this package"):
        _run(Trace_ELBO(), toy.model, force_estimator(toy.guide, "measure"))
    with pytest.raises(ValueError, match="baselines apply to the score function"):
        MeasureValuedELBO(baseline="ma")


def test_a_plate_with_a_term_outside_it_moves_one_element_at_a_time():
    # as in tests/test_pyro_measure.py: d/d mu_i E[(sum z)^2] + KL = 2 sum mu + mu_i
    loc = jnp.array([0.3, -0.5, 0.9])

    def model():
        with numpyro.plate("p", 3):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.factor("f", -(z.sum(-1) ** 2))

    def guide():
        with numpyro.plate("p", 3):
            numpyro.sample("z", dist.Normal(numpyro.param("loc", loc), 1.0))

    elbo = MeasureValuedELBO(analytic_kl=True)
    reps = 2000
    stats = gradient_variance(elbo, model, guide, num_reps=reps, seed=4)["loc"]
    exact = np.asarray(2 * loc.sum() + loc)
    se = np.sqrt(np.asarray(stats.variance) / reps)
    assert np.all(np.abs(np.asarray(stats.mean) - exact) <= Z * se)
    assert elbo.reruns == 6


@pytest.mark.parametrize("name", ["plates_different_dims", "subsample_local_global", "hmm_categorical",
                                  "masked_sites", "eight_schools", "to_event_sites"])
def test_corpus_subset_runs_or_names_the_site(name):
    """A quick subset of the NumPyro corpus (all 26 ran once: finite, but for Dirichlet's ``w`` in
    to_event_sites and Gamma's learnable concentration in sparse_gamma_def, which are refused)."""
    import corpus_numpyro
    from numpyro.infer import SVI

    (case,) = [c for c in corpus_numpyro.CORPUS if c.name == name]
    model, guide = corpus_numpyro.fresh(case)
    svi = SVI(model, guide, Adam(0.01), MeasureValuedELBO())
    state = svi.init(jax.random.PRNGKey(0), *case.args, **case.kwargs)
    if name == "to_event_sites":
        with pytest.raises(ValueError, match="site 'w': the measure-valued estimator has no weak derivative for Dir"):
            svi.update(state, *case.args, **case.kwargs)
        return
    state, loss = svi.update(state, *case.args, **case.kwargs)
    assert math.isfinite(float(loss))
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(svi.get_params(state)))
