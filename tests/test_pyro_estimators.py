"""Forcing an estimator on Pyro guides of every kind, checked against exact ELBO gradients.

Each model here has an ELBO in closed form, so the exact gradient with respect to each
unconstrained parameter comes from autograd on that closed form. A measured mean over R
repetitions must lie within K standard errors of it, element-wise; K = 5.5 gives a two-sided
normal tail of 3.8e-8 per element, below 1e-6 per test for the at most 24 elements tested here.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI
from pyro.infer.autoguide import AutoDiagonalNormal, AutoMultivariateNormal, AutoNormal
from pyro.nn import PyroModule, PyroParam

from ppl_reparam.pyro import PathwiseELBO, ScoreFunctionELBO, force_estimator, gradient_variance
from ppl_reparam.pyro.variance import trace_params

K_SE = 5.5
REPS = 400
ELBOS = {"score": ScoreFunctionELBO, "pathwise": PathwiseELBO}
C = 0.5 * math.log(2 * math.pi)

# ------------------------------------------------------------------ a conjugate Normal model
K, D, NOBS = 2, 2, 3
DATA = torch.tensor([[[0.3, -1.2], [2.0, 0.8]], [[1.1, 0.1], [-0.4, 1.6]], [[0.0, 0.9], [1.5, -0.7]]])


def normal_model(data):
    """z[k, d] ~ N(0, 1); x[j, k, d] ~ N(z[k, d], 1) for j < NOBS."""
    with pyro.plate("k", K, dim=-1):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([D]).to_event(1))
        with pyro.plate("obs", NOBS, dim=-2):
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=data)


def exact_normal_loss(mean, variance, entropy, data=DATA):
    """-ELBO for a Gaussian guide with these marginal means and variances and this entropy."""
    n = data.shape[0]
    expected_log_lik = -0.5 * ((data - mean) ** 2).sum() - 0.5 * n * variance.sum() - data.numel() * C
    expected_log_prior = -0.5 * (mean**2 + variance).sum() - mean.numel() * C
    return -(expected_log_lik + expected_log_prior + entropy)


def mean_field_guide(data):
    m = pyro.param("m", torch.zeros(K, D))
    s = pyro.param("s", torch.ones(K, D) * 0.8, constraint=dist.constraints.positive)
    with pyro.plate("k", K, dim=-1):
        pyro.sample("z", dist.Normal(m, s).to_event(1))


def mean_field_exact():
    s = pyro.param("s")
    return exact_normal_loss(pyro.param("m"), s**2, dist.Normal(pyro.param("m"), s).entropy().sum())


class ModuleGuide(PyroModule):
    def __init__(self):
        super().__init__()
        self.loc = PyroParam(torch.full((K, D), 0.5))
        self.scale = PyroParam(torch.full((K, D), 0.7), constraint=dist.constraints.positive)

    def forward(self, data):
        with pyro.plate("k", K, dim=-1):
            pyro.sample("z", dist.Normal(self.loc, self.scale).to_event(1))


def assert_unbiased(model, guide, exact_loss, elbo, *args, reps=REPS, seed=0):
    """Measured mean gradient within K_SE standard errors of autograd on the exact loss."""
    stats = gradient_variance(elbo, model, guide, *args, num_reps=reps, seed=seed)
    leaves = trace_params(model, guide, *args)
    exact = torch.autograd.grad(exact_loss(), list(leaves.values()))
    assert set(stats) == set(leaves)
    for (name, _), grad in zip(leaves.items(), exact):
        s = stats[name]
        error = abs(s.mean - grad.detach().numpy())
        assert (error <= K_SE * s.standard_error).all(), (name, s.mean, grad, s.standard_error)
    return stats


@pytest.mark.parametrize("estimator", ["score", "pathwise"])
@pytest.mark.parametrize("analytic_kl", [False, True])
def test_to_event_in_plate(estimator, analytic_kl):
    elbo = ELBOS[estimator](num_particles=4, vectorize_particles=True, analytic_kl=analytic_kl)
    assert_unbiased(normal_model, mean_field_guide, mean_field_exact, elbo, DATA)


@pytest.mark.parametrize("estimator", ["score", "pathwise"])
def test_pyro_module_guide(estimator):
    guide = ModuleGuide()

    def exact():
        return exact_normal_loss(guide.loc, guide.scale**2, dist.Normal(guide.loc, guide.scale).entropy().sum())

    elbo = ELBOS[estimator](num_particles=4, vectorize_particles=True)
    stats = assert_unbiased(normal_model, guide, exact, elbo, DATA)
    assert set(stats) == {"loc", "scale"}


@pytest.mark.parametrize("estimator", ["score", "pathwise"])
@pytest.mark.parametrize("auto", [AutoNormal, AutoDiagonalNormal, AutoMultivariateNormal])
def test_autoguides(estimator, auto):
    guide = auto(normal_model)
    guide(DATA)  # create the parameters

    def exact():
        if isinstance(guide, AutoNormal):
            m, s = pyro.param("AutoNormal.locs.z"), pyro.param("AutoNormal.scales.z")
            return exact_normal_loss(m, s**2, dist.Normal(m, s).entropy().sum())
        q = guide.get_posterior()
        return exact_normal_loss(q.mean.reshape(K, D), q.variance.reshape(K, D), q.entropy())

    elbo = ELBOS[estimator](num_particles=4, vectorize_particles=True, max_plate_nesting=2)
    assert_unbiased(normal_model, guide, exact, elbo, DATA)


def test_trace_elbo_is_biased_on_autonormal_where_ours_is_not():
    # Pyro's Trace_ELBO builds the score-function cost from model sites only; with the auxiliary
    # site forced to the score function its gradient misses the entropy of the auxiliary site
    # (about 0.91 here, over 10 standard errors with 64 particles).
    guide = AutoNormal(normal_model)
    guide(DATA)
    leaves = trace_params(normal_model, guide, DATA)
    m, s = pyro.param("AutoNormal.locs.z"), pyro.param("AutoNormal.scales.z")
    exact = torch.autograd.grad(exact_normal_loss(m, s**2, dist.Normal(m, s).entropy().sum()),
                                list(leaves.values()))
    forced = force_estimator(guide, "score")
    trace_elbo = pyro.infer.Trace_ELBO(num_particles=64, vectorize_particles=True, max_plate_nesting=2)
    theirs = gradient_variance(trace_elbo, normal_model, forced, DATA, num_reps=REPS)
    scale = theirs["AutoNormal.scales.z"]
    assert (abs(scale.mean - exact[1].numpy()) > K_SE * scale.standard_error).any()


@pytest.mark.parametrize("estimator", ["score", "pathwise"])
def test_lognormal_site(estimator):
    # z ~ LogNormal(0, 1), x ~ Poisson(z), x = 3; guide LogNormal(m, s):
    # -ELBO = KL(N(m, s) || N(0, 1)) - (x m - exp(m + s^2 / 2)) + log x!
    x = torch.tensor(3.0)

    def model():
        z = pyro.sample("z", dist.LogNormal(0.0, 1.0))
        pyro.sample("x", dist.Poisson(z), obs=x)

    def guide():
        m = pyro.param("m", torch.tensor(0.5))
        s = pyro.param("s", torch.tensor(0.6), constraint=dist.constraints.positive)
        pyro.sample("z", dist.LogNormal(m, s))

    def exact():
        m, s = pyro.param("m"), pyro.param("s")
        kl = 0.5 * (s**2 + m**2 - 1) - torch.log(s)
        return kl - (x * m - torch.exp(m + s**2 / 2)) + torch.lgamma(x + 1)

    elbo = ELBOS[estimator](num_particles=8, vectorize_particles=True)
    assert_unbiased(model, guide, exact, elbo)


@pytest.mark.parametrize("estimator", ["score", "pathwise"])
def test_masked_site(estimator):
    mask = torch.tensor([True, False])
    data = DATA[..., 0]  # (NOBS, K)

    def model():
        with pyro.plate("k", K, dim=-1):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).mask(mask))
            with pyro.plate("obs", NOBS, dim=-2):
                pyro.sample("x", dist.Normal(z, 1.0).mask(mask), obs=data)

    def guide():
        m = pyro.param("m", torch.zeros(K))
        s = pyro.param("s", torch.ones(K) * 0.8, constraint=dist.constraints.positive)
        with pyro.plate("k", K, dim=-1):
            pyro.sample("z", dist.Normal(m, s).mask(mask))

    def exact():
        m, s = pyro.param("m")[mask], pyro.param("s")[mask]
        return exact_normal_loss(m, s**2, dist.Normal(m, s).entropy().sum(), data[:, mask])

    elbo = ELBOS[estimator](num_particles=4, vectorize_particles=True)
    stats = assert_unbiased(model, guide, exact, elbo)
    assert stats["m"].mean[1] == 0 and stats["m"].variance[1] == 0  # the masked element


def test_bernoulli_latent_against_enumeration():
    # z ~ Bernoulli(0.3), x ~ N(2 z, 1), x = 1.2; guide Bernoulli(sigmoid(phi)). Exact -ELBO by
    # summing over z in {0, 1}.
    x = torch.tensor(1.2)

    def model():
        z = pyro.sample("z", dist.Bernoulli(0.3))
        pyro.sample("x", dist.Normal(2 * z, 1.0), obs=x)

    def guide():
        pyro.sample("z", dist.Bernoulli(logits=pyro.param("phi", torch.tensor(0.4))))

    def exact():
        q = dist.Bernoulli(logits=pyro.param("phi"))
        total = 0.0
        for z in (torch.tensor(0.0), torch.tensor(1.0)):
            log_joint = dist.Bernoulli(0.3).log_prob(z) + dist.Normal(2 * z, 1.0).log_prob(x)
            total = total + q.log_prob(z).exp() * (q.log_prob(z) - log_joint)
        return total

    assert_unbiased(model, guide, exact, ScoreFunctionELBO(num_particles=8, vectorize_particles=True))
    with pytest.raises(ValueError, match=r"site 'z'.*Bernoulli has none.*ScoreFunctionELBO"):
        PathwiseELBO().loss(model, guide)


def test_force_estimator_per_site_precedence():
    def guide():
        loc = pyro.param("loc", torch.tensor(1.0))
        a = pyro.sample("a", dist.Normal(loc, 1.0))
        b = pyro.sample("b", dist.Normal(loc, 1.0), infer={"estimator": "score"})
        c = pyro.sample("c", dist.Normal(loc, 1.0).to_event(0))
        return a, b, c

    def grads(g):
        return [v.requires_grad for v in g()]

    assert grads(force_estimator(guide, "pathwise")) == [True, False, True]  # b asks for score
    assert grads(force_estimator(guide, "pathwise", sites=["b"])) == [True, True, True]  # named wins
    assert grads(force_estimator(guide, "score", sites=["a"])) == [False, False, True]  # c untouched
    assert grads(force_estimator(guide, "score")) == [False, False, False]
    with pytest.warns(UserWarning, match=r"site 'nope' named for the 'score' estimator has not been sampled"):
        force_estimator(guide, "score", sites=["nope"])()


def test_named_sites_are_checked_against_guide_and_model():
    """A named site may be skipped by the guide on calls where the model observes it (the label of a
    semi-supervised guide); a name that is in neither raises under this package's ELBOs."""

    def model(y=None):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Bernoulli(logits=z), obs=y)

    def guide(y=None):
        pyro.sample("z", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0))
        if y is None:
            pyro.sample("y", dist.Bernoulli(logits=pyro.param("phi", torch.tensor(0.0))))

    labelled, unlabelled = torch.tensor(1.0), None
    for forced, elbo in [
        (force_estimator(guide, "score", sites=["y"]), PathwiseELBO()),
        (guide, PathwiseELBO(sites=["z"])),
        (force_estimator(guide, "score", sites=["z", "y"]), ScoreFunctionELBO()),
    ]:
        for y in (labelled, unlabelled, labelled):
            assert math.isfinite(elbo.loss_and_grads(model, forced, y))
    with pytest.raises(ValueError, match=r"sites \['nope'\].*neither latent sites of the guide nor sites of the model"):
        PathwiseELBO().loss(model, force_estimator(guide, "score", sites=["nope"]), labelled)
    with pytest.raises(ValueError, match=r"sites \['nope'\].*\['y', 'z'\]"):
        ScoreFunctionELBO(sites=["nope"]).loss(model, guide, unlabelled)


def test_elbo_blanket_respects_a_nested_force_estimator():
    def model():
        pyro.sample("b", dist.Bernoulli(0.3))
        pyro.sample("z", dist.Normal(0.0, 1.0))

    def guide():
        pyro.sample("b", dist.Bernoulli(logits=pyro.param("phi", torch.tensor(0.0))))
        pyro.sample("z", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0))

    forced = force_estimator(guide, "score", sites=["b"])
    assert math.isfinite(PathwiseELBO().loss(model, forced))  # b stays score-function, z pathwise
    with pytest.raises(ValueError, match="site 'b'"):
        PathwiseELBO(sites=["b"]).loss(model, forced)  # naming it at the ELBO overrides


def test_forced_guide_keeps_the_guide_interface():
    guide = AutoNormal(normal_model)
    forced = force_estimator(guide, "score")
    forced(DATA)
    assert forced.median()["z"].shape == (K, D)
    assert "force_estimator" in repr(forced)


def test_svi_with_each_elbo_reaches_the_posterior():
    # Posterior of z[k, d]: N(sum_j x / (NOBS + 1), 1 / (NOBS + 1)). After a decaying-learning-rate run
    # the guide mean must be within 0.1 posterior standard deviations (0.05) of the exact mean.
    posterior_mean = DATA.sum(0) / (NOBS + 1)
    for elbo in (PathwiseELBO(num_particles=8, vectorize_particles=True),
                 ScoreFunctionELBO(num_particles=64, vectorize_particles=True)):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        svi = SVI(normal_model, mean_field_guide, pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.997}), loss=elbo)
        for _ in range(1500):
            loss = svi.step(DATA)
        assert math.isfinite(loss)
        torch.testing.assert_close(pyro.param("m").detach(), posterior_mean, atol=0.05, rtol=0)


def test_differentiable_loss_and_elbo_module():
    elbo = ScoreFunctionELBO(num_particles=3)
    loss = elbo.differentiable_loss(normal_model, mean_field_guide, DATA)
    loss.backward()
    assert pyro.param("m").unconstrained().grad is not None
    module = elbo(normal_model, mean_field_guide)
    assert torch.isfinite(module(DATA))


# ------------------------------------------------------------------------------- error cases
def test_error_pathwise_on_wrapped_discrete_site():
    def guide():
        with pyro.plate("p", 3):
            pyro.sample("c", dist.Bernoulli(torch.full((2,), 0.5)).to_event(1))

    with pytest.raises(ValueError, match=r"site 'c'.*Independent\(Bernoulli\).*relaxation"):
        force_estimator(guide, "pathwise")()


def test_error_unknown_estimator_names():
    with pytest.raises(ValueError, match="unknown estimator 'reinforce'"):
        force_estimator(mean_field_guide, "reinforce")

    def guide():
        pyro.sample("z", dist.Normal(0.0, 1.0), infer={"estimator": "magic"})

    with pytest.raises(ValueError, match=r"unknown estimator 'magic' at site 'z'"):
        force_estimator(guide, "score")()


def rate_model(data):
    rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
    loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(data)):
        pyro.sample("x", dist.Normal(loc, rate), obs=data)


def rate_guide(data):
    pyro.sample("rate", dist.LogNormal(pyro.param("m", torch.tensor(0.2)), 0.5))
    pyro.sample("loc", dist.Normal(pyro.param("n", torch.tensor(0.5)), 0.7))


@pytest.mark.parametrize("make_guide, model, data, reference, warned", [
    (lambda model: rate_guide, rate_model, DATA[:, 0, 0], pyro.infer.TraceMeanField_ELBO,
     r"site 'rate'.*KL\(LogNormal \|\| Gamma\) has no closed"),
    (AutoNormal, normal_model, DATA, pyro.infer.TraceMeanField_ELBO,
     r"site 'z_unconstrained'.*guide-only \(auxiliary\)"),
    (AutoDiagonalNormal, normal_model, DATA, pyro.infer.TraceMeanField_ELBO,
     r"site '_AutoDiagonalNormal_latent'.*guide-only"),
    # a positive latent: the AutoGuide's Delta carries the Jacobian in its log_density, which Pyro's
    # KL(Delta || p) drops (TraceMeanField_ELBO is biased there; NumPyro fixed its own in #1625), so
    # the reference is Trace_ELBO: no site of this guide has a closed-form KL
    (AutoMultivariateNormal, rate_model, DATA[:, 0, 0], pyro.infer.Trace_ELBO,
     r"site '_AutoMultivariateNormal_latent'.*guide-only"),
], ids=["LogNormal-vs-Gamma", "AutoNormal", "AutoDiagonalNormal", "AutoMultivariateNormal"])
def test_analytic_kl_is_monte_carlo_where_trace_mean_field_elbo_has_no_closed_form(make_guide, model, data,
                                                                                     reference, warned):
    """What TraceMeanField_ELBO accepts, analytic_kl=True accepts, with the same loss and gradient on
    the same draws: the closed-form KL where one is registered, the Monte Carlo terms elsewhere (a
    LogNormal guide against a Gamma prior; an AutoGuide's auxiliary sites), with a warning naming the site."""
    guide = make_guide(model)
    pyro.clear_param_store()
    guide(data)  # parameters
    params = [p.unconstrained() for p in pyro.get_param_store().values()]
    results = []
    for elbo in (reference(), PathwiseELBO(analytic_kl=True)):
        pyro.set_rng_seed(3)
        loss = elbo.differentiable_loss(model, guide, data)
        results.append((loss, torch.autograd.grad(loss, params)))
    assert results[1][0].item() == pytest.approx(results[0][0].item(), rel=1e-6)
    for ours, theirs in zip(results[1][1], results[0][1]):
        assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    with pytest.warns(UserWarning, match=warned):
        pyro.set_rng_seed(3)
        ScoreFunctionELBO(analytic_kl=True).loss(model, guide, data)


def test_error_num_particles():
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="num_particles must be a positive integer"):
            ScoreFunctionELBO(num_particles=bad)


@pytest.mark.parametrize("value", [-math.inf, math.nan])
def test_error_non_finite_loss_names_the_site(value):
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.factor("bad", x * 0 + value)

    def guide():
        pyro.sample("x", dist.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0))

    # Pyro's own validation rejects a NaN factor before the site exists; ours names the site.
    with pyro.validation_enabled(not math.isnan(value)):
        with pytest.raises(ValueError, match=r"site 'bad': the loss term of Unit is NaN or infinite"):
            PathwiseELBO().loss_and_grads(model, guide)


def test_error_nan_gradient_names_the_site():
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        # finite value, NaN gradient where x < 0: the classic torch.where trap
        pyro.factor("trap", torch.where(x > 0, torch.sqrt(x), torch.zeros(())))

    def guide():
        pyro.sample("x", dist.Normal(pyro.param("loc", torch.tensor(-3.0)), 0.1))

    with pytest.raises(ValueError, match=r"site 'trap'.*NaN or infinite gradient"):
        PathwiseELBO().loss_and_grads(model, guide)


def test_plate_scale_applies_to_cost_not_log_q():
    # With subsampling, pyro.plate scales every term in it by size / subsample_size; the gradient
    # must be that of the full-data ELBO. Full data: 6 points; subsample 3 of them.
    data = torch.tensor([0.5, -0.3, 1.2, 2.0, -1.0, 0.4])

    def model(data):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(data), subsample_size=3) as idx:
            pyro.sample("x", dist.Normal(z, 1.0), obs=data[idx])

    def guide(data):
        m = pyro.param("m", torch.tensor(0.2))
        s = pyro.param("s", torch.tensor(0.5), constraint=dist.constraints.positive)
        pyro.sample("z", dist.Normal(m, s))
        with pyro.plate("data", len(data), subsample_size=3):
            pass

    def exact():
        m, s = pyro.param("m"), pyro.param("s")
        return exact_normal_loss(m, s**2, dist.Normal(m, s).entropy(), data[:, None])

    with poutine.block():
        assert_unbiased(model, guide, exact, ScoreFunctionELBO(num_particles=1), data, reps=2000)
