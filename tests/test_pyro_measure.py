"""The measure-valued estimator as a per-site choice in the Pyro ELBOs: the toy's closed forms, each
family's mean against the exact gradient (autograd of the closed-form expectation and KL), plates,
event dims, masks, subsampling scales and downstream sites, and the errors.

Means must lie within 5.5 standard errors of the exact gradient (two-sided normal tail 3.8e-8); the
closed-form variance inside the measured interval at confidence 1 - 1e-6."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from ppl_reparam.analytic import measure_valued_variance
from ppl_reparam.models.toy_gaussian import ToyGaussian
from ppl_reparam.pyro import (
    JitPathwiseELBO,
    MeasureValuedELBO,
    PathwiseELBO,
    ScoreFunctionELBO,
    force_estimator,
    gradient_variance,
)
from ppl_reparam.pyro.variance import trace_params

Z, CONFIDENCE = 5.5, 1 - 1e-6


def _elbo(**kwargs):
    return MeasureValuedELBO(vectorize_particles=True, **kwargs)


@pytest.mark.parametrize("coupling", [True, False])
@pytest.mark.parametrize("analytic_kl", [True, False])
def test_toy_closed_forms(coupling, analytic_kl):
    # With or without the closed-form entropy the same: log q's two sides cancel under coupling, and
    # the log q term has no weak-derivative contribution in mean.
    theta, reps = 2.0, 4000
    toy = ToyGaussian(theta)
    elbo = _elbo(analytic_kl=analytic_kl, coupling=coupling)
    stats = gradient_variance(elbo, toy.model, toy.guide, num_reps=reps, seed=1, confidence=CONFIDENCE)["theta"]
    assert abs(float(stats.mean) - 2 * theta) <= Z * math.sqrt(float(stats.variance) / reps)
    if analytic_kl or coupling:
        low, high = stats.variance_ci
        assert low <= measure_valued_variance(theta, coupling=coupling) <= high


@pytest.mark.parametrize("cls", [MeasureValuedELBO, ScoreFunctionELBO])
def test_same_seed_same_numbers_on_a_reused_elbo(cls):
    # The first call guesses max_plate_nesting from a run of its own: it must not shift the draws.
    toy = ToyGaussian(2.0)
    elbo = cls(analytic_kl=True, num_particles=3, vectorize_particles=True)
    a, b = (gradient_variance(elbo, toy.model, toy.guide, num_reps=40, seed=5, method="loop")["theta"]
            for _ in range(2))
    fresh = gradient_variance(cls(analytic_kl=True, num_particles=3, vectorize_particles=True), toy.model,
                              toy.guide, num_reps=40, seed=5, method="loop")["theta"]
    assert float(a.mean) == float(b.mean) == float(fresh.mean)
    assert float(a.variance) == float(b.variance) == float(fresh.variance)


# ---------------------------------------------------------------------------- families
def _positive(name, value):
    return pyro.param(name, torch.tensor(value), constraint=constraints.positive)


FAMILIES = {
    # name: (guide distribution from its params, prior, f, E_q[f] from the same params)
    "Normal": (
        lambda: dist.Normal(pyro.param("a", torch.tensor(0.7)), _positive("b", 1.3)),
        dist.Normal(0.0, 2.0), lambda z: (z - 0.5) ** 2,
        lambda a, b: (a - 0.5) ** 2 + b**2,
    ),
    "LogNormal": (
        lambda: dist.LogNormal(pyro.param("a", torch.tensor(0.2)), _positive("b", 0.4)),
        dist.LogNormal(0.0, 1.0), lambda z: z**2,
        lambda a, b: torch.exp(2 * a + 2 * b**2),
    ),
    "Exponential": (
        lambda: dist.Exponential(_positive("a", 1.5)),
        dist.Exponential(1.0), lambda z: z**2,
        lambda a: 2 / a**2,
    ),
    "Gamma": (
        lambda: dist.Gamma(2.5, _positive("a", 1.7)),
        dist.Gamma(2.0, 1.0), lambda z: z**2,
        lambda a: 2.5 * 3.5 / a**2,
    ),
    "Poisson": (
        lambda: dist.Poisson(_positive("a", 2.2)),
        dist.Poisson(3.0), lambda z: (z - 1.0) ** 2,
        lambda a: a + (a - 1.0) ** 2,
    ),
    "Bernoulli": (
        lambda: dist.Bernoulli(logits=pyro.param("a", torch.tensor(0.4))),
        dist.Bernoulli(0.5), lambda z: 3 * (z - 0.3) ** 2,
        lambda a: torch.sigmoid(a) * 3 * 0.49 + (1 - torch.sigmoid(a)) * 3 * 0.09,
    ),
    "Categorical": (
        lambda: dist.Categorical(logits=pyro.param("a", torch.tensor([0.3, -0.2, 0.5, 0.0]))),
        dist.Categorical(torch.full((4,), 0.25)),
        lambda z: torch.tensor([1.0, -2.0, 0.5, 3.0])[z],
        lambda a: (torch.softmax(a, -1) * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum(),
    ),
    "OneHotCategorical": (
        lambda: dist.OneHotCategorical(logits=pyro.param("a", torch.tensor([0.3, -0.2, 0.5, 0.0]))),
        dist.OneHotCategorical(torch.full((4,), 0.25)),
        lambda z: (z * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum(-1),
        lambda a: (torch.softmax(a, -1) * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum(),
    ),
}


def _family_problem(family):
    q, prior, f, expectation = FAMILIES[family]

    def model():
        z = pyro.sample("z", prior)
        pyro.factor("f", -f(z))

    def guide():
        pyro.sample("z", q())

    return model, guide, expectation


def _exact_gradients(model, guide, expectation, prior):
    """Autograd of E_q[f] + KL(q || prior) at the current parameters, per unconstrained leaf."""
    leaves = trace_params(model, guide)
    store = pyro.get_param_store()
    names = sorted(leaves)
    constrained = [store[n] for n in names]
    kl = torch.distributions.kl_divergence(_guide_distribution(guide), prior)
    total = expectation(*constrained) + kl
    grads = torch.autograd.grad(total, [leaves[n] for n in names])
    return dict(zip(names, grads))


def _guide_distribution(guide):
    return pyro.poutine.trace(guide).get_trace().nodes["z"]["fn"]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_mean_is_the_exact_gradient(family):
    pyro.clear_param_store()
    model, guide, expectation = _family_problem(family)
    exact = _exact_gradients(model, guide, expectation, FAMILIES[family][1])
    reps = 3000
    stats = gradient_variance(_elbo(analytic_kl=True), model, guide, num_reps=reps, seed=11)
    for name, g in exact.items():
        s = stats[name]
        se = torch.sqrt(torch.as_tensor(s.variance) / reps)
        # (Bernoulli and Categorical are exact, variance 0, here: no randomness downstream; float32 rounding)
        assert torch.all((torch.as_tensor(s.mean) - g).abs() <= Z * se + 1e-6 * (1 + g.abs())), (name, s.mean, g, se)


def test_cost_counts_one_pair_per_parameter_element_outside_plates():
    # Normal(loc[3, 2], scale) under a plate of 3 and to_event(1): 2 free elements x 2 sides per
    # parameter with a gradient (loc only): 4 reruns, whatever the plate's size.
    calls = []

    def model():
        with pyro.plate("p", 3):
            z = pyro.sample("z", dist.Normal(torch.zeros(3, 2), 1.0).to_event(1))
            pyro.factor("f", -(z**2).sum(-1))

    def guide():
        loc = pyro.param("loc", torch.zeros(3, 2))
        calls.append(1)
        with pyro.plate("p", 3):
            pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))

    pyro.clear_param_store()
    _elbo(analytic_kl=True, max_plate_nesting=1).differentiable_loss(model, guide)
    assert len(calls) == 1 + 4


def _structured(mask, scale):
    """A plate of 4 subsampled to 2 (scale 2) or not, an event dim of 3, a mask, and a pathwise site
    drawn after the measure-valued one and depending on it."""
    subsample = [1, 3] if scale else None
    m = torch.tensor([True, False, True, True]) if mask else torch.ones(4, dtype=torch.bool)

    def model():
        with pyro.plate("data", 4, subsample=subsample) as i:
            z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1).mask(m[i]))
            y = pyro.sample("y", dist.Normal(z.sum(-1), 1.0).mask(m[i]))
            pyro.factor("f", -((y - 1.0) ** 2) * m[i])

    def guide():
        loc = pyro.param("loc", torch.tensor([[0.3, -0.1, 0.2], [0.5, 0.0, -0.4], [0.1, 0.1, 0.1], [-0.3, 0.2, 0.6]]))
        s = pyro.param("s", torch.tensor([0.8, 1.1, 0.9]), constraint=constraints.positive)
        with pyro.plate("data", 4, subsample=subsample) as i:
            z = pyro.sample("z", dist.Normal(loc[i], s).to_event(1).mask(m[i]))
            pyro.sample("y", dist.Normal(z.sum(-1) + 0.5, 1.0).mask(m[i]))

    return model, guide


@pytest.mark.parametrize("mask,subsample", [(False, False), (True, False), (False, True)])
def test_plates_events_masks_subsampling_and_downstream_sites(mask, subsample):
    # Against the pathwise estimator (Trace_ELBO's) on the same problem, both
    # unbiased: their means must agree within their combined standard errors.
    model, guide = _structured(mask, subsample)
    reps = 300
    found = {}
    for name, elbo in [
        ("measure", force_estimator(guide, "measure", sites=["z"])),
        ("pathwise", guide),
    ]:
        pyro.clear_param_store()
        pathwise = PathwiseELBO(num_particles=10, vectorize_particles=True, max_plate_nesting=1)
        stats = gradient_variance(pathwise, model, elbo, num_reps=reps, seed=3, method="loop")
        found[name] = stats
    for p in ("loc", "s"):
        a, b = found["measure"][p], found["pathwise"][p]
        se = torch.sqrt((torch.as_tensor(a.variance) + torch.as_tensor(b.variance)) / reps)
        assert torch.all((torch.as_tensor(a.mean) - torch.as_tensor(b.mean)).abs() <= Z * se + 1e-12), p


def test_trains_under_svi_and_mixes_with_other_estimators():
    pyro.clear_param_store()
    toy = ToyGaussian(2.0)
    svi = SVI(toy.model, force_estimator(toy.guide, "measure"), Adam({"lr": 0.1}), ScoreFunctionELBO(analytic_kl=True))
    pyro.set_rng_seed(0)
    for _ in range(200):
        svi.step()
    assert abs(pyro.param("theta").item()) < 0.3  # the minimum of E[x^2] is theta = 0


# ------------------------------------------------------------------------------- errors
def test_unsupported_family_names_the_site():
    def guide():
        pyro.sample("w", dist.Beta(pyro.param("a", torch.tensor(2.0), constraint=constraints.positive), 2.0))

    def model():
        pyro.sample("w", dist.Beta(1.0, 1.0))

    with pytest.raises(ValueError, match=r"site 'w'.*no weak derivative for Beta.*Use 'score' or 'pathwise'"):
        MeasureValuedELBO().differentiable_loss(model, guide)


def test_gamma_concentration_is_refused():
    def guide():
        pyro.sample("w", dist.Gamma(pyro.param("c", torch.tensor(2.0), constraint=constraints.positive), 1.0))

    def model():
        pyro.sample("w", dist.Gamma(1.0, 1.0))

    with pytest.raises(ValueError, match=r"site 'w': Gamma's concentration has no measure-valued gradient"):
        MeasureValuedELBO().differentiable_loss(model, guide)


def test_pyro_own_elbo_refuses_a_measure_valued_site():
    toy = ToyGaussian(2.0)
    with pytest.raises(ValueError, match="measure-valued estimator is differentiated only by this package"):
        Trace_ELBO().differentiable_loss(toy.model, force_estimator(toy.guide, "measure"))


def test_jit_and_baselines_are_refused():
    toy = ToyGaussian(2.0)
    with pytest.raises(ValueError, match="site 'x': the measure-valued estimator reruns guide and model"):
        JitPathwiseELBO().loss_and_grads(toy.model, force_estimator(toy.guide, "measure"))
    with pytest.raises(ValueError, match="baselines apply to the score function"):
        MeasureValuedELBO(baseline="ma")


def test_a_plate_with_a_term_outside_it_moves_one_element_at_a_time():
    # f = (sum_i z_i)^2 lies outside the plate: E[f] = (sum mu)^2 + 3, so d/d mu_i = 2 sum mu, from
    # 2 reruns per element (the plate's 3 elements one at a time)
    loc = torch.tensor([0.3, -0.5, 0.9])

    def model():
        with pyro.plate("p", 3):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.factor("f", -(z.sum(-1, keepdim=True) ** 2))  # (keepdim: a size-1 dim for the plate)

    def guide():
        with pyro.plate("p", 3):
            pyro.sample("z", dist.Normal(pyro.param("loc", loc.clone()), 1.0))

    pyro.clear_param_store()
    elbo = _elbo(analytic_kl=True, max_plate_nesting=1)
    reps = 2000
    stats = gradient_variance(elbo, model, guide, num_reps=reps, seed=4)["loc"]
    exact = 2 * loc.sum() + loc  # the KL to N(0, 1) adds mu_i
    se = torch.sqrt(torch.as_tensor(stats.variance) / reps)
    assert torch.all((torch.as_tensor(stats.mean) - exact).abs() <= Z * se)
    elbo.differentiable_loss(model, guide)
    assert elbo.reruns == 6


def test_the_corpus_runs_or_names_the_site():
    """Every corpus model (plates of every shape, subsampling, masks, scales, AutoGuides, Markov chains,
    Pyro's examples) under the measure-valued estimator at every site: a finite loss and finite
    gradients, or the error naming a site whose family has no weak derivative here."""
    import corpus_pyro
    from pyro import poutine

    refused = {}
    for case in corpus_pyro.CORPUS:
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        model, guide = corpus_pyro.fresh(case)
        nesting = {} if case.max_plate_nesting is None else {"max_plate_nesting": case.max_plate_nesting}
        try:
            with poutine.trace(param_only=True) as capture:
                loss = MeasureValuedELBO(**nesting).loss_and_grads(model, guide, *case.args, **case.kwargs)
        except ValueError as e:
            refused[case.name] = str(e)
            continue
        assert math.isfinite(loss), case.name
        for site in capture.trace.nodes.values():
            grad = site["value"].unconstrained().grad
            assert grad is None or torch.isfinite(grad).all(), (case.name, site["name"])
    assert set(refused) == {"to_event_sites", "sparse_gamma_def"}, refused
    assert refused["to_event_sites"].startswith("site 'w': the measure-valued estimator has no weak derivative for "
                                                "Dirichlet")
    assert refused["sparse_gamma_def"].startswith("site 'w_top': Gamma's concentration has no measure-valued "
                                                  "gradient")
