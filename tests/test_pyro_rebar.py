"""REBAR as a per-site estimator of the Pyro ELBOs: the mean is the exact gradient (enumeration of every
bit pattern, a non-separable cost) at two settings of its control, with and without the closed-form KL,
in a plate with ``to_event``, with vectorized particles; the errors.

Means must lie within 5.5 standard errors of the exact gradient (two-sided normal tail 3.8e-8)."""

import itertools

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from ppl_reparam.models.toy_gaussian import ToyGaussian
from ppl_reparam.pyro import JitPathwiseELBO, PathwiseELBO, RebarELBO, force_estimator, gradient_variance

Z = 5.5
W = torch.tensor([[0.5, -1.0, 0.3], [1.2, 0.2, -0.7], [0.1, 0.9, 0.4]])
LOGITS = torch.tensor([[0.2, -0.4, 0.7], [-0.3, 0.5, 0.1]])
PRIOR = 0.4


def f(b):
    """A cost that couples the bits (their REBAR control cannot be exact)."""
    return ((b @ W) ** 2).sum(-1) + 0.5 * b.sum(-1)


def model():
    with pyro.plate("rows", 2):
        b = pyro.sample("b", dist.Bernoulli(torch.full((3,), PRIOR)).to_event(1))
        pyro.factor("f", -f(b))


def guide():
    logits = pyro.param("l", LOGITS.clone())
    with pyro.plate("rows", 2):
        pyro.sample("b", dist.Bernoulli(logits=logits).to_event(1))


def exact_gradient():
    """d/dl of E_q[f(b) + log q(b) - log p(b)] summed over the rows, by enumerating the 8 patterns a row."""
    logits = LOGITS.clone().requires_grad_()
    bits = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)))[:, None, :]  # (8, 1, 3)
    q = dist.Bernoulli(logits=logits).to_event(1)
    log_q = q.log_prob(bits)  # (8, 2)
    log_p = dist.Bernoulli(torch.full((3,), PRIOR)).to_event(1).log_prob(bits)
    objective = (log_q.exp() * (f(bits) + log_q - log_p)).sum()
    return torch.autograd.grad(objective, logits)[0]


@pytest.mark.parametrize("options", [{}, {"rebar_eta": 0.5, "rebar_temperature": 2.0}, {"analytic_kl": True},
                                     {"num_particles": 3, "vectorize_particles": True}])
def test_mean_is_the_exact_gradient(options):
    pyro.clear_param_store()
    reps = 1500
    stats = gradient_variance(RebarELBO(**options), model, guide, num_reps=reps, seed=2)["l"]
    se = torch.sqrt(torch.as_tensor(stats.variance) / reps)
    assert torch.all((torch.as_tensor(stats.mean) - exact_gradient()).abs() <= Z * se), (stats.mean, exact_gradient())


def test_chosen_per_site_under_another_elbo():
    pyro.clear_param_store()
    reps = 1500
    forced = force_estimator(guide, "rebar", sites=["b"])
    stats = gradient_variance(PathwiseELBO(), model, forced, num_reps=reps, seed=3)["l"]
    se = torch.sqrt(torch.as_tensor(stats.variance) / reps)
    assert torch.all((torch.as_tensor(stats.mean) - exact_gradient()).abs() <= Z * se)


def test_errors():
    toy = ToyGaussian(2.0)
    with pytest.raises(ValueError, match="site 'x': REBAR relaxes Bernoulli bits, and Normal is not a Bernoulli"):
        RebarELBO().differentiable_loss(toy.model, toy.guide)
    with pytest.raises(ValueError, match="REBAR estimator is differentiated only by this package's ELBOs"):
        Trace_ELBO().differentiable_loss(model, force_estimator(guide, "rebar"))
    with pytest.raises(ValueError, match="site 'b': the REBAR estimator reruns guide and model"):
        JitPathwiseELBO().loss_and_grads(model, force_estimator(guide, "rebar"))
    with pytest.raises(ValueError, match="baselines apply to the score function"):
        RebarELBO(baseline="ma")
    with pytest.raises(ValueError, match="rebar_temperature must be positive"):
        RebarELBO(rebar_temperature=0.0)
    pyro.clear_param_store()
    replayed = pyro.poutine.replay(guide, trace=pyro.poutine.trace(guide).get_trace())
    with pytest.raises(ValueError, match="site .b.: the REBAR estimator needs the draw its own sampler made"):
        RebarELBO().differentiable_loss(model, replayed)


def test_the_corpus_bernoulli_sites_run():
    """Every corpus model with Bernoulli guide sites (alone, five in a row, a Markov chain, a scaled
    site) with those sites forced to REBAR: a finite loss and finite gradients."""
    import math

    import corpus_pyro
    from pyro import poutine

    from ppl_reparam.pyro import ScoreFunctionELBO
    from ppl_reparam.pyro.handlers import leaf_path

    ran = []
    for case in corpus_pyro.CORPUS:
        pyro.clear_param_store()
        model, guide = corpus_pyro.fresh(case)
        trace = poutine.trace(guide).get_trace(*case.args, **case.kwargs)
        bits = [n for n, s in trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]
                and isinstance(leaf_path(s["fn"])[0], torch.distributions.Bernoulli)]
        if not bits:
            continue
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        model, guide = corpus_pyro.fresh(case)
        nesting = {} if case.max_plate_nesting is None else {"max_plate_nesting": case.max_plate_nesting}
        with poutine.trace(param_only=True) as capture:
            loss = ScoreFunctionELBO(**nesting).loss_and_grads(
                model, force_estimator(guide, "rebar", sites=bits), *case.args, **case.kwargs
            )
        assert math.isfinite(loss), case.name
        for site in capture.trace.nodes.values():
            grad = site["value"].unconstrained().grad
            assert grad is None or torch.isfinite(grad).all(), (case.name, site["name"])
        ran.append(case.name)
    assert len(ran) >= 4, ran
