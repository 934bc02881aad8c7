"""MeanField: family per support, initialisation, errors, plates and subsampling, per-site estimators;
the rules shared with the NumPyro guide (ppl_reparam.meanfield): the same initial parameters and errors.

Initial moments are exact by construction (float32 arithmetic: rtol 1e-5). Gradient means are
checked against autograd on the closed-form -ELBO within K_SE standard errors, as in
test_pyro_estimators.py (K_SE = 5.5: a two-sided normal tail of 3.8e-8 per element).
"""

import math
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as ndist
import pyro
import pyro.distributions as dist
import pytest
import torch
from numpyro.handlers import seed, substitute, trace
from pyro import poutine
from pyro.infer import Trace_ELBO

import ppl_reparam.numpyro as numpyro_backend
from ppl_reparam.models import normal_normal
from ppl_reparam.pyro import MeanField, PathwiseELBO, ScoreFunctionELBO, force_estimator, gradient_variance
from ppl_reparam.pyro.variance import trace_params

K_SE = 5.5
RTOL = 1e-5




def every_support():
    """One latent site per support MeanField covers, with priors whose moments are known."""
    pyro.sample("real", dist.Normal(1.0, 2.0))
    pyro.sample("vector", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    pyro.sample("positive", dist.Gamma(3.0, 2.0))
    pyro.sample("shape", dist.Gamma(3.0, 2.0))
    pyro.sample("heavy", dist.HalfCauchy(1.0))
    pyro.sample("unit", dist.Beta(2.0, 3.0))
    pyro.sample("uniform", dist.Uniform(0.0, 1.0))
    pyro.sample("simplex", dist.Dirichlet(torch.tensor([1.0, 2.0, 3.0])))


def assert_close(actual, expected):
    expected = torch.as_tensor(expected, dtype=torch.float32)
    torch.testing.assert_close(torch.as_tensor(actual), expected, rtol=RTOL, atol=0)


def test_family_per_support_and_initial_moments():
    pyro.set_rng_seed(0)
    guide = MeanField(every_support, families={"shape": "gamma"})
    values = guide()
    q = {name: guide.distribution(name) for name in values}
    assert type(q["real"]) is dist.Normal
    assert type(q["vector"]) is dist.Independent and type(q["vector"].base_dist) is dist.Normal
    assert type(q["positive"]) is dist.LogNormal and type(q["heavy"]) is dist.LogNormal
    assert type(q["shape"]) is dist.Gamma
    assert type(q["unit"]) is dist.Beta and type(q["uniform"]) is dist.Beta
    assert type(q["simplex"]) is dist.Dirichlet
    for name, fn in q.items():
        assert values[name].shape == fn.shape()
    # Mean = prior mean; sd = init_scale (0.1) x prior sd.
    assert_close(q["real"].mean, 1.0)
    assert_close(q["real"].stddev, 0.2)
    assert_close(q["vector"].stddev, torch.full((3,), 0.1))
    for name in ("positive", "shape"):
        assert_close(q[name].mean, 1.5)
        assert_close(q[name].variance.sqrt(), 0.1 * math.sqrt(3) / 2)
    assert_close(q["unit"].mean, 0.4)
    assert_close(q["unit"].variance.sqrt(), 0.1 * math.sqrt(0.4 * 0.6 / 6))
    assert_close(q["uniform"].variance.sqrt(), 0.1 * math.sqrt(1 / 12))
    assert_close(q["simplex"].mean, torch.tensor([1.0, 2.0, 3.0]) / 6)
    assert_close(q["simplex"].variance, 0.01 * dist.Dirichlet(torch.tensor([1.0, 2.0, 3.0])).variance)
    # HalfCauchy: infinite mean and variance, so the mean is the prior's empirical median and the sd 0.1 x that.
    assert_close(q["heavy"].variance.sqrt() / q["heavy"].mean, 0.1)


def test_spread_is_capped_on_the_unit_interval():
    # init_scale = 5 asks for an sd above what a Beta with mean m can have; the cap sqrt(m (1 - m) / 2)
    # gives a total concentration of 1.
    guide = MeanField(lambda: pyro.sample("p", dist.Beta(2.0, 3.0)), init_scale=5.0)
    guide()
    assert_close(pyro.param("MeanField.params.p.concentration"), 1.0)


@pytest.mark.parametrize(
    "fn, support",
    [
        (dist.Bernoulli(0.3), "Boolean()"),
        (dist.Categorical(torch.ones(4)), "IntegerInterval(lower_bound=0, upper_bound=3)"),
        (dist.Uniform(0.0, 5.0), "Interval(lower_bound=0.0, upper_bound=5.0)"),
        (dist.LKJCholesky(2, 1.0), "CorrCholesky()"),
    ],
)
def test_unsupported_support_names_site_and_support(fn, support):
    guide = MeanField(lambda: pyro.sample("odd", fn))
    with pytest.raises(ValueError, match="site 'odd' has") as error:
        guide()
    assert support in str(error.value)
    if fn.support.is_discrete:
        assert "discrete" in str(error.value) and "enumeration" in str(error.value)


def test_family_must_fit_the_support():
    with pytest.raises(ValueError, match=r"families\['positive'\] = 'beta'.*\['gamma', 'lognormal'\]"):
        MeanField(every_support, families={"positive": "beta"})()
    with pytest.raises(ValueError, match="unknown family 'weibull' for site 'positive'"):
        MeanField(every_support, families={"positive": "weibull"})
    with pytest.raises(ValueError, match=r"estimators=\.\.\. names \['nope'\]"):
        MeanField(every_support, estimators={"nope": "score"})()
    with pytest.raises(ValueError, match="unknown estimator 'reinforce'"):
        MeanField(every_support, estimators={"real": "reinforce"})


def grouped(subsample=None):
    """Ten groups, a local latent of each supported kind, observed data per group."""
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("groups", 10, subsample=subsample) as idx:
        theta = pyro.sample("theta", dist.Normal(mu, 1.0))
        p = pyro.sample("p", dist.Beta(2.0, 2.0))
        w = pyro.sample("w", dist.Dirichlet(torch.ones(3)))
        pyro.sample("x", dist.Normal(theta + p + w[..., 0], 1.0), obs=torch.arange(10.0)[idx])


def test_plates_and_subsampling_use_full_size_params_indexed_by_the_subsample():
    subsample = torch.tensor([7, 2, 5])
    guide = MeanField(grouped, create_plates=lambda subsample=None: pyro.plate("groups", 10, subsample=subsample))
    guide(subsample)  # the prototype sees 3 of 10 groups; the parameters still have the full size
    store = pyro.get_param_store()
    assert store["MeanField.params.theta.loc"].shape == (10,)
    assert store["MeanField.params.p.mean"].shape == (10,)
    assert store["MeanField.params.w.mean"].shape == (10, 3)
    assert store["MeanField.params.w.concentration"].shape == (10, 1)
    with torch.no_grad():
        store["MeanField.params.theta.loc"].unconstrained().copy_(torch.arange(10.0))
        store["MeanField.params.theta.scale"].unconstrained().fill_(math.log(1e-6))
    values = guide(subsample)
    assert values["theta"].shape == (3,) and values["w"].shape == (3, 3)
    torch.testing.assert_close(values["theta"], subsample.float(), atol=1e-4, rtol=0)
    # A training step touches only the subsampled rows, with particles in a loop or vectorized.
    for elbo in (PathwiseELBO(), ScoreFunctionELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)):
        loc = store["MeanField.params.theta.loc"].unconstrained()
        loc.grad = None
        elbo.loss_and_grads(grouped, guide, subsample)
        assert (loc.grad[subsample] != 0).all() and (loc.grad[[0, 1, 3, 4, 6, 8, 9]] == 0).all()


def two_sites():
    pyro.sample("a", dist.Normal(0.0, 1.0))
    pyro.sample("b", dist.Gamma(2.0, 1.0))


def guide_trace(guide):
    trace = poutine.trace(guide).get_trace()
    return {name: (trace.nodes[name]["value"].requires_grad, trace.nodes[name]["infer"].get("estimator"))
            for name in ("a", "b")}


def test_estimators_per_site_are_respected_by_force_estimator_and_the_elbos():
    guide = MeanField(two_sites, estimators={"a": "score"})
    assert guide_trace(guide) == {"a": (False, "score"), "b": (True, None)}
    assert guide_trace(force_estimator(guide, "pathwise")) == {"a": (False, "score"), "b": (True, "pathwise")}
    assert guide_trace(force_estimator(guide, "pathwise", sites=["a"])) == {"a": (True, "pathwise"), "b": (True, None)}
    assert guide_trace(force_estimator(guide, "score")) == {"a": (False, "score"), "b": (False, "score")}
    traced = poutine.trace(guide)
    PathwiseELBO().differentiable_loss(two_sites, traced)
    assert not traced.trace.nodes["a"]["value"].requires_grad
    assert traced.trace.nodes["b"]["value"].requires_grad
    traced = poutine.trace(guide)
    ScoreFunctionELBO(sites=["a"]).differentiable_loss(two_sites, traced)
    assert traced.trace.nodes["b"]["value"].requires_grad


def normal_normal_exact_loss(loc, scale, data=normal_normal.DATA):
    """Closed-form -ELBO of the Normal-Normal model (prior N(0, 2^2), noise sd 1) for q = N(loc, scale^2)."""
    c = 0.5 * math.log(2 * math.pi)
    prior = 0.5 * (loc**2 + scale**2) / 4 + math.log(2.0) + c
    likelihood = (0.5 * ((data - loc) ** 2 + scale**2) + c).sum()
    return prior + likelihood - dist.Normal(loc, scale).entropy()


@pytest.mark.parametrize("elbo", [Trace_ELBO(), PathwiseELBO()])
def test_score_site_gradient_is_unbiased_under_every_elbo(elbo):
    # The guide has no auxiliary sites, so even Pyro's Trace_ELBO builds the score-function term of a
    # site that MeanField samples with the score function.
    guide = MeanField(normal_normal.model, estimators={"mu": "score"})
    leaves = trace_params(normal_normal.model, guide)
    q = guide.distribution("mu")
    exact = torch.autograd.grad(normal_normal_exact_loss(q.loc, q.scale), list(leaves.values()))
    stats = gradient_variance(elbo, normal_normal.model, guide, num_reps=400, method="loop")
    for name, grad in zip(leaves, exact):
        assert abs(stats[name].mean - grad.item()) <= K_SE * stats[name].standard_error, name
    # Score function, not pathwise: the pathwise per-sample gradient in loc is z / 4 + sum_i (z - x_i),
    # of variance (10 + 1/4)^2 s^2 = 4.2 at s = 0.2; the score function's is orders of magnitude above.
    assert stats["MeanField.params.mu.loc"].per_sample_variance > 10 * 4.2


# ------------------------------------------------------------------------------------------------
# The rules both backends share (ppl_reparam.meanfield)


def test_the_shared_rules_import_neither_framework():
    code = "import sys, ppl_reparam.meanfield; print(sorted({'torch', 'pyro', 'jax', 'numpyro'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def pyro_kinds():
    """Real, positive, unit-interval and simplex sites, global and in a subsampled plate (2 rows of 4)."""
    pyro.sample("real", dist.Normal(1.0, 2.0))
    pyro.sample("vector", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    pyro.sample("positive", dist.Gamma(3.0, 2.0))
    pyro.sample("shape", dist.Gamma(3.0, 2.0))
    pyro.sample("unit", dist.Beta(2.0, 3.0))
    pyro.sample("uniform", dist.Uniform(0.0, 1.0))
    with pyro.plate("groups", 4, subsample=torch.tensor([2, 0])):
        pyro.sample("local", dist.Exponential(0.5))
        pyro.sample("p", dist.Beta(torch.tensor(4.0), 1.0))
        pyro.sample("w", dist.Dirichlet(torch.tensor([1.0, 2.0, 3.0])))


def numpyro_kinds():
    """pyro_kinds in NumPyro."""
    numpyro.sample("real", ndist.Normal(1.0, 2.0))
    numpyro.sample("vector", ndist.Normal(jnp.zeros(3), 1.0).to_event(1))
    numpyro.sample("positive", ndist.Gamma(3.0, 2.0))
    numpyro.sample("shape", ndist.Gamma(3.0, 2.0))
    numpyro.sample("unit", ndist.Beta(2.0, 3.0))
    numpyro.sample("uniform", ndist.Uniform(0.0, 1.0))
    with numpyro.plate("groups", 4, subsample_size=2):
        numpyro.sample("local", ndist.Exponential(0.5))
        numpyro.sample("p", ndist.Beta(4.0, 1.0))
        numpyro.sample("w", ndist.Dirichlet(jnp.array([1.0, 2.0, 3.0])))


@pytest.mark.usefixtures("quick_compiles")
@pytest.mark.parametrize("init_scale", [0.1, 5.0])  # 5: the spread is capped on [0, 1] and the simplex
def test_both_backends_start_from_the_same_parameters(init_scale):
    options = {"families": {"shape": "gamma"}, "init_scale": init_scale}
    MeanField(pyro_kinds, **options)()
    store = pyro.get_param_store()
    from_pyro = {name: store[name].detach().numpy() for name in store}
    guide = numpyro_backend.MeanField(numpyro_kinds, **options)
    no_draws = substitute(seed(guide, 0), substitute_fn=lambda site: 0.0 if site["type"] == "sample" else None)
    numpyro_trace = trace(no_draws).get_trace()  # the draws are not compared (JAX's samplers compile slowly)
    from_numpyro = {name: np.asarray(site["value"]) for name, site in numpyro_trace.items() if site["type"] == "param"}
    assert sorted(from_pyro) == sorted(from_numpyro)
    assert len(from_pyro) == 2 * 9 and from_pyro["MeanField.params.w.concentration"].shape == (4, 1)
    for name, value in from_pyro.items():
        np.testing.assert_allclose(from_numpyro[name], value, rtol=RTOL, atol=0, err_msg=name)


def build(backend, fn, **options):
    """A backend's MeanField on a one-site model (site "x" drawn from ``fn``, a distribution's name and
    arguments), called once."""
    name, args = fn
    if backend == "pyro":
        MeanField(lambda: pyro.sample("x", getattr(dist, name)(*args)), **options)()
    else:
        seed(numpyro_backend.MeanField(lambda: numpyro.sample("x", getattr(ndist, name)(*args)), **options), 0)()


DISCRETE = (
    "MeanField: site 'x' has discrete support Boolean(); MeanField guides continuous latents only. Sum the site "
    "out by enumeration (config_enumerate with TraceEnum_ELBO{funsor}), or guide it separately: "
    "MeanField({block}(model, hide=['x'])) and a guide for 'x' in an AutoGuideList."
)
UNCOVERED = (
    "MeanField: site 'x' has support Interval(lower_bound=0.0, upper_bound=5.0), for which it has no family (it "
    "covers real: normal; positive: lognormal, gamma; unit interval [0, 1]: beta; simplex: dirichlet). Rewrite "
    "the model onto a covered support (e.g. an interval (a, b) as a + (b - a) times a Beta variable), or guide "
    "the site separately: MeanField({block}(model, hide=['x'])) and AutoNormal({block}(model, expose=['x'])) in "
    "an AutoGuideList."
)
MISFIT = (
    "MeanField: families['x'] = 'gamma' is a family on the positive support, but site 'x' has support Real() "
    "(real); families for it: ['normal']"
)
WORDS = {
    "pyro": {"block": "poutine.block", "funsor": ""},
    "numpyro": {"block": "numpyro.handlers.block", "funsor": ", which needs funsor"},
}


@pytest.mark.parametrize("backend", ["pyro", "numpyro"])
def test_both_backends_refuse_a_site_with_the_same_family_choice_errors(backend):
    words = WORDS[backend]
    gamma = ("Gamma", (2.0, 1.0))
    cases = [
        (("Bernoulli", (0.3,)), {}, DISCRETE.format(**words)),
        (("Uniform", (0.0, 5.0)), {}, UNCOVERED.format(**words)),
        (("Normal", (0.0, 1.0)), {"families": {"x": "gamma"}}, MISFIT),
    ]
    for fn, options, message in cases:
        with pytest.raises(ValueError) as error:
            build(backend, fn, **options)
        assert str(error.value) == message
    # The options, checked at construction or against the model's latent sites.
    for options, message in [
        ({"families": {"x": "weibull"}}, "unknown family 'weibull' for site 'x'"),
        ({"families": {"y": "normal"}}, r"families=\.\.\. names \['y'\], not latent sites of the model: \['x'\]"),
        ({"estimators": {"y": "score"}}, r"estimators=\.\.\. names \['y'\]"),
        ({"estimators": {"x": "reinforce"}}, "unknown estimator 'reinforce' at site 'x'"),
        ({"init_scale": -1.0}, "init_scale must be positive, got -1.0"),
    ]:
        with pytest.raises(ValueError, match=message):
            build(backend, gamma, **options)


def test_median_and_quantiles_are_each_elements_marginal_ones():
    """``median()`` and ``quantiles(ps)`` as Pyro's AutoGuides have them (Pyro's ``sparse_regression``
    calls ``guide.median()``): exact for the Normal (loc + scale x the standard normal's quantile) and
    the LogNormal (its exp); for every family, the fraction of N draws of the factor below each
    quantile is p within K_SE binomial standard errors (element by element; a Dirichlet's marginals)."""
    pyro.set_rng_seed(0)
    guide = MeanField(every_support, families={"shape": "gamma"})
    guide()
    probs = [0.05, 0.5, 0.95]
    quantiles, median = guide.quantiles(probs), guide.median()
    assert sorted(quantiles) == sorted(median) == sorted(guide._family)
    standard = dist.Normal(0.0, 1.0).icdf(torch.tensor(probs))
    assert_close(quantiles["real"], 1.0 + 0.2 * standard)
    lognormal = guide.distribution("positive")
    assert_close(quantiles["positive"], (lognormal.loc + lognormal.scale * standard).exp())
    n = 400_000
    for name, values in quantiles.items():
        fn = guide.distribution(name)
        assert values.shape == (len(probs), *fn.shape()) and torch.equal(median[name], values[1])
        draws = fn.sample((n,))
        for p, q in zip(probs, values):
            below = (draws < q).double().mean(0)
            assert (below - p).abs().max() <= K_SE * math.sqrt(p * (1 - p) / n), (name, p, below)


def test_median_before_the_first_call():
    pyro.clear_param_store()
    guide = MeanField(normal_normal.model)
    with pytest.raises(ValueError, match="call the guide, or pass the model's arguments"):
        guide.median()
    data = torch.tensor([0.5, 1.0])
    median = guide.median(data)  # the model's arguments, as for AutoGuides
    assert_close(median["mu"], guide.distribution("mu").loc)
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        guide.quantiles([0.5, 1.5])
