"""Antithetic and randomized quasi-Monte Carlo draws at pathwise sites, both backends through one
parameter: unbiased against exact gradients (plates, to_event, a LogNormal transform), the toy's closed
forms (antithetic: zero variance in the loc, 8 sigma^2 per pair in the scale), QMC below plain Monte
Carlo, the Sobol points as specified, and clear errors.

Z = 5.5: a two-sided false-failure rate of 4e-8 per comparison (under 1e-6 per test)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ppl_reparam.noise import shifted_uniforms, sobol_points
from ppl_reparam.specs import parse_spec

Z = 5.5
THETA, SIGMA = 2.0, 1.0
M, S = 0.5, 1.5  # the LogNormal guide's loc and scale


class Pyro:
    def __init__(self):
        import pyro
        import pyro.distributions as dist
        import torch
        from pyro.distributions import constraints

        from ppl_reparam import pyro as pr

        self.pyro, self.dist, self.torch, self.pr, self.positive = pyro, dist, torch, pr, constraints.positive

    def elbo(self, **options):
        return self.pr.PathwiseELBO(vectorize_particles=True, **options)

    def measure(self, elbo, model, guide, reps, seed=0):
        self.pyro.clear_param_store()
        return self.pr.gradient_variance(elbo, model, guide, num_reps=reps, seed=seed)

    def toy(self):
        from ppl_reparam.models.toy_gaussian import ToyGaussian

        toy = ToyGaussian(theta=THETA, sigma=SIGMA, learn_scale=True)
        return toy.model, toy.guide

    def lognormal(self, family="LogNormal"):
        pyro, dist, torch = self.pyro, self.dist, self.torch

        def model():
            with pyro.plate("p", 3):
                pyro.sample("z", dist.LogNormal(torch.zeros(2), 1.0).to_event(1))

        def guide():
            m = pyro.param("m", torch.full((3, 2), M))
            s = pyro.param("s", torch.full((3, 2), S), constraint=self.positive)
            with pyro.plate("p", 3):
                q = dist.LogNormal(m, s) if family == "LogNormal" else dist.Gamma(s, 1.0)
                pyro.sample("z", q.to_event(1))

        return model, guide


class NumPyro:
    def __init__(self):
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as dist
        from numpyro.distributions import constraints

        from ppl_reparam import numpyro as nr

        self.numpyro, self.dist, self.jnp, self.nr, self.constraints = numpyro, dist, jnp, nr, constraints

    def elbo(self, **options):
        return self.nr.PathwiseELBO(**options)

    def measure(self, elbo, model, guide, reps, seed=0):
        return self.nr.gradient_variance(elbo, model, guide, num_reps=reps, seed=seed)

    def toy(self):
        numpyro, dist, constraints = self.numpyro, self.dist, self.constraints

        def model():
            x = numpyro.sample("x", dist.ImproperUniform(constraints.real, (), ()))
            numpyro.factor("neg_f", -(x**2))

        def guide():
            theta = numpyro.param("theta", THETA)
            sigma = numpyro.param("sigma", SIGMA, constraint=constraints.positive)
            numpyro.sample("x", dist.Normal(theta, sigma))

        return model, guide

    def lognormal(self, family="LogNormal"):
        numpyro, dist, jnp = self.numpyro, self.dist, self.jnp

        def model():
            with numpyro.plate("p", 3):
                numpyro.sample("z", dist.LogNormal(jnp.zeros(2), 1.0).to_event(1))

        def guide():
            m = numpyro.param("m", jnp.full((3, 2), M))
            s = numpyro.param("s", jnp.full((3, 2), S), constraint=self.constraints.positive)
            with numpyro.plate("p", 3):
                q = dist.LogNormal(m, s) if family == "LogNormal" else dist.Gamma(s, 1.0)
                numpyro.sample("z", q.to_event(1))

        return model, guide


@pytest.fixture(params=["pyro", "numpyro"], scope="module")
def backend(request):
    return Pyro() if request.param == "pyro" else NumPyro()


def test_antithetic_toy_closed_forms(backend):
    """Loc: each pair averages to 2 theta exactly. Scale (unconstrained log sigma, sigma = 1): a pair
    averages to 2 sigma eps^2 - 1/sigma, so an estimate of K particles is 2 chi2_{K/2} / (K/2) - 1 with
    variance 8 sigma^2 / (K/2) (against (4 theta^2 + 8 sigma^2) / K for independent draws)."""
    k, reps = 8, 4000
    stats = backend.measure(backend.elbo(num_particles=k, analytic_kl=True, antithetic=True), *backend.toy(), reps)
    np.testing.assert_allclose(stats["theta"].samples, 2 * THETA, rtol=1e-6)
    g = stats["sigma"].samples
    deviations = (g - g.mean()) ** 2
    variance, se = deviations.sum() / (reps - 1), deviations.std(ddof=1) / math.sqrt(reps)
    assert abs(variance - 8 * SIGMA**2 / (k // 2)) < Z * se
    assert abs(g.mean() - (2 * SIGMA**2 - 1)) < Z * math.sqrt(variance / reps)


def test_qmc_toy_is_unbiased_and_far_below_monte_carlo(backend):
    k, reps = 64, 400
    stats = backend.measure(backend.elbo(num_particles=k, analytic_kl=True, qmc=True), *backend.toy(), reps)
    for name, exact, mc_variance in (("theta", 2 * THETA, 4 * SIGMA**2 / k),
                                     ("sigma", 2 * SIGMA**2 - 1, (4 * THETA**2 + 8 * SIGMA**2) / k)):
        g = stats[name].samples
        assert abs(g.mean() - exact) < Z * g.std(ddof=1) / math.sqrt(reps), name
        deviations = (g - g.mean()) ** 2
        upper = deviations.mean() + Z * deviations.std(ddof=1) / math.sqrt(reps)
        assert upper < mc_variance / 5, (name, upper, mc_variance)


@pytest.mark.parametrize("kind", ["antithetic", "qmc"])
def test_unbiased_in_plates_with_to_event_and_a_transform(backend, kind):
    """-ELBO = KL(LogNormal(m, s) || LogNormal(0, 1)) = KL of the Normals, element by element: gradient
    m in m, and s^2 - 1 in log s (Monte Carlo KL, so the draws matter)."""
    reps = 300
    stats = backend.measure(backend.elbo(num_particles=8, **{kind: True}), *backend.lognormal(), reps)
    for name, exact in (("m", M), ("s", S**2 - 1)):
        g = stats[name].samples
        se = g.std(0, ddof=1) / math.sqrt(reps)
        assert np.all(np.abs(g.mean(0) - exact) < Z * se), (name, g.mean(0), exact, se)


def test_sobol_points_and_their_shift():
    points = sobol_points(8, 2)
    np.testing.assert_array_equal(points[:4] / 2.0**32, [[0, 0], [0.5, 0.5], [0.75, 0.25], [0.25, 0.75]])
    with pytest.raises(ValueError, match="at most 21201"):
        sobol_points(4, 21202)
    # a digital shift keeps one point in each of the 8 cells of [0, 1) in every coordinate
    u = shifted_uniforms(points, np.array([123456789, 987654321], dtype=np.uint32))
    for column in u.T:
        assert sorted(np.floor(column * 8).astype(int)) == list(range(8))


def test_bad_requests_are_refused(backend):
    with pytest.raises(ValueError, match="choose one"):
        backend.elbo(num_particles=4, antithetic=True, qmc=True)
    with pytest.raises(ValueError, match="num_particles must be even, got 3"):
        backend.elbo(num_particles=3, antithetic=True)
    with pytest.raises(ValueError, match="qmc=True .* num_particles >= 2"):
        backend.elbo(num_particles=1, qmc=True)
    with pytest.raises(ValueError, match="leave-one-out baseline .* unbiased only for independent"):
        backend.elbo(num_particles=4, qmc=True, baseline="rloo")
    with pytest.raises(ValueError, match="site 'z': antithetic draws apply to .* Normal .* Independent\\(Gamma\\)"):
        backend.measure(backend.elbo(num_particles=4, antithetic=True), *backend.lognormal("Gamma"), 5)


def test_pyro_needs_vectorized_particles_and_the_eager_elbo():
    from ppl_reparam.pyro import JitPathwiseELBO, PathwiseELBO

    with pytest.raises(ValueError, match="needs vectorize_particles=True"):
        PathwiseELBO(num_particles=4, antithetic=True)
    with pytest.raises(ValueError, match="JitPathwiseELBO: qmc=True is not compiled; use PathwiseELBO"):
        JitPathwiseELBO(num_particles=4, vectorize_particles=True, qmc=True)


def test_specs():
    assert str(parse_spec("pathwise+akl+anti:8")) == "pathwise+akl+anti:8"
    assert parse_spec("pathwise+qmc:16").noise == "qmc"
    with pytest.raises(ValueError, match="K must be even, got 3"):
        parse_spec("pathwise+anti:3")
    with pytest.raises(ValueError, match="antithetic sampling needs K >= 2 particles, got 1"):
        parse_spec("pathwise+anti:1")
    with pytest.raises(ValueError, match="anti and qmc apply to the pathwise estimator only"):
        parse_spec("score+qmc:4")
    with pytest.raises(ValueError, match="choose one"):
        parse_spec("pathwise+anti+qmc:4")


NOT_VECTORIZABLE = {"auxiliary_guide_site", "sparse_gamma_def", "ss_vae_m2_unlabelled", "ss_vae_m2_labelled"}
"""Corpus cases whose models break under Pyro's vectorized particle plate with or without coupled draws
(their shapes assume no extra batch dim): they run with sequential particles elsewhere."""


@pytest.mark.parametrize("kind", ["antithetic", "qmc"])
def test_pyro_corpus_runs_or_names_the_site(kind):
    """Every vectorizable corpus model (plates of every shape, subsampling, masks, scales, AutoGuides,
    Pyro's examples): finite loss and gradients under coupled draws, with each site's own estimator
    (``sites=()``), or the error naming a pathwise site that is not Normal-based."""
    import corpus_pyro
    import pyro
    import torch
    from pyro import poutine

    from ppl_reparam.pyro import PathwiseELBO

    unsupported = {}
    for case in corpus_pyro.CORPUS:
        if case.name in NOT_VECTORIZABLE:
            continue
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        model, guide = corpus_pyro.fresh(case)
        nesting = {} if case.max_plate_nesting is None else {"max_plate_nesting": case.max_plate_nesting}
        elbo = PathwiseELBO(num_particles=4, vectorize_particles=True, sites=(), **{kind: True}, **nesting)
        try:
            with poutine.trace(param_only=True) as capture:
                loss = elbo.loss_and_grads(model, guide, *case.args, **case.kwargs)
        except ValueError as e:
            unsupported[case.name] = str(e)
            continue
        assert math.isfinite(loss), case.name
        for site in capture.trace.nodes.values():
            grad = site["value"].unconstrained().grad
            assert grad is None or torch.isfinite(grad).all(), (case.name, site["name"])
    assert set(unsupported) == {"to_event_sites"}, unsupported
    assert unsupported["to_event_sites"].startswith(f"site 'w': {kind} draws apply to pathwise sites")


def test_toy_closed_forms_of_an_antithetic_pair():
    from ppl_reparam.analytic import gradient_moments
    from ppl_reparam.cli.toy import closed_form

    loc = gradient_moments("pathwise", THETA, SIGMA, antithetic=True)
    scale = gradient_moments("pathwise", THETA, 1.5, wrt="scale", antithetic=True)
    assert (loc.mean, loc.variance) == (2 * THETA, 0.0)
    assert scale.variance == pytest.approx(8 * 1.5**2)  # the pair average 2 sigma eps^2 - 1/sigma
    # the toy table: N/2 pairs, so the N-sample variance is 2 x a pair's over N; QMC has no closed form
    assert closed_form(parse_spec("pathwise+akl+anti:2"), THETA).variance == 0.0
    assert closed_form(parse_spec("pathwise+qmc:2"), THETA) is None
    with pytest.raises(ValueError, match="antithetic draws apply to the pathwise estimator only"):
        gradient_moments("score", THETA, antithetic=True)


NUMPYRO_CASES = ["nested_both_levels", "masked_sites", "auto_diagonal_normal_positive", "to_event_sites"]
"""A quick subset of the NumPyro corpus (each case compiles; all 26 ran once with antithetic draws:
finite, but for the sites that are not Normal-based, README)."""


@pytest.mark.parametrize("name", NUMPYRO_CASES)
def test_numpyro_corpus_runs_or_names_the_site(name):
    import corpus_numpyro
    import jax
    from jax import random
    from numpyro.infer import SVI
    from numpyro.optim import Adam

    from ppl_reparam.numpyro import PathwiseELBO

    (case,) = [c for c in corpus_numpyro.CORPUS if c.name == name]
    model, guide = corpus_numpyro.fresh(case)
    svi = SVI(model, guide, Adam(0.01), PathwiseELBO(num_particles=4, sites=(), antithetic=True))
    state = svi.init(random.PRNGKey(0), *case.args, **case.kwargs)
    if name == "to_event_sites":
        with pytest.raises(ValueError, match="site 'w': antithetic draws apply to pathwise sites .* Dirichlet"):
            svi.update(state, *case.args, **case.kwargs)
        return
    state, loss = svi.update(state, *case.args, **case.kwargs)
    assert math.isfinite(float(loss))
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(svi.get_params(state)))
