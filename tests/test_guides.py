"""AmortizedNormal as the guide of a second model: a linear-Gaussian latent model with a known posterior.

Model, per datum i in plate "data": z_i ~ N(0, I_L), x_i | z_i ~ N(W z_i + b, sigma^2 I_D), with W's columns
orthogonal, so the posterior is N(A (x_i - b), diag(v)) with v = 1 / (1 + |W_l|^2 / sigma^2) and
A = diag(v) W^T / sigma^2: a linear encoder with a constant scale represents it exactly.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from torch import nn
from torch.nn.functional import softplus

from ppl_reparam.pyro import AmortizedNormal, PathwiseELBO, ScoreFunctionELBO, force_estimator, gradient_variance
from ppl_reparam.pyro.guides import data_plate

D, L, SIGMA = 4, 2, 0.5
W = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, -1.0]])  # orthogonal columns, |W_l|^2 = 2, 5
B = torch.tensor([0.5, -1.0, 0.0, 1.0])
POST_VAR = 1 / (1 + (W**2).sum(0) / SIGMA**2)
POST_A = POST_VAR[:, None] * W.T / SIGMA**2


def linear_gaussian(x: torch.Tensor, num_data: int | None = None) -> None:
    with data_plate("data", x.shape[0], num_data):
        z = pyro.sample("z", dist.Normal(torch.zeros(L), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T + B, SIGMA).to_event(1), obs=x)


class LinearEncoder(nn.Module):
    """loc = A x + c, scale = softplus(raw), the same for every datum."""

    def __init__(self) -> None:
        super().__init__()
        self.loc = nn.Linear(D, L)
        self.raw_scale = nn.Parameter(torch.zeros(L))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loc(x), softplus(self.raw_scale).expand(x.shape[0], L)

    def set_posterior(self) -> None:
        with torch.no_grad():
            self.loc.weight.copy_(POST_A)
            self.loc.bias.copy_(-POST_A @ B)
            self.raw_scale.copy_(torch.log(torch.expm1(POST_VAR.sqrt())))


def data(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, L, generator=g)
    return z @ W.T + B + SIGMA * torch.randn(n, D, generator=g)


def log_evidence(x: torch.Tensor) -> torch.Tensor:
    """log p(x_i) = log N(x_i; b, W W^T + sigma^2 I), per row."""
    return dist.MultivariateNormal(B, W @ W.T + SIGMA**2 * torch.eye(D)).log_prob(x)


def exact_loss(guide: AmortizedNormal, x: torch.Tensor, num_data: int) -> torch.Tensor:
    """-ELBO in closed form for a Gaussian q = N(m, diag s^2), scaled by num_data / len(x):
    E_q log p(x|z) = -D/2 log(2 pi sigma^2) - (|x - W m - b|^2 + sum_l s_l^2 |W_l|^2) / (2 sigma^2),
    E_q log p(z) = -L/2 log(2 pi) - (|m|^2 + sum s^2) / 2, H(q) = L/2 log(2 pi e) + sum log s."""
    m, s = guide.encode(x)
    lik = -D / 2 * math.log(2 * math.pi * SIGMA**2) - (
        ((x - m @ W.T - B) ** 2).sum(-1) + (s**2 * (W**2).sum(0)).sum(-1)
    ) / (2 * SIGMA**2)
    prior = -L / 2 * math.log(2 * math.pi) - ((m**2).sum(-1) + (s**2).sum(-1)) / 2
    entropy = L / 2 * math.log(2 * math.pi * math.e) + s.log().sum(-1)
    return -(lik + prior + entropy).sum() * num_data / len(x)




@pytest.mark.parametrize("elbo_class", [ScoreFunctionELBO, PathwiseELBO])
def test_shapes_and_finite_losses(elbo_class):
    guide = AmortizedNormal(LinearEncoder())
    x = data(6)
    z = guide(x, num_data=30)
    assert z.shape == (6, L)
    elbo = elbo_class(num_particles=7, vectorize_particles=True, max_plate_nesting=1)
    loss, surrogate = elbo.particle_losses(linear_gaussian, guide, x, num_data=30)
    assert loss.shape == surrogate.shape == (7,)
    assert torch.isfinite(loss).all() and torch.isfinite(surrogate).all()
    assert math.isfinite(elbo.loss_and_grads(linear_gaussian, guide, x, num_data=30))
    grads = [p.grad for p in guide.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_param_names_and_plain_module_conversion():
    guide = AmortizedNormal(LinearEncoder())
    pyro.poutine.trace(guide).get_trace(data(3))
    assert set(pyro.get_param_store().keys()) == {"encoder.loc.weight", "encoder.loc.bias", "encoder.raw_scale"}


@pytest.mark.parametrize("elbo_class", [ScoreFunctionELBO, PathwiseELBO])
def test_exact_posterior_gives_log_evidence_every_particle(elbo_class):
    """At q = posterior, log p(x, z) - log q(z | x) = log p(x) for every z: each particle's loss must be
    -(N/B) sum_i log p(x_i) exactly (float32 rounding: 1e-4 relative), which checks the plate's scale."""
    encoder = LinearEncoder()
    encoder.set_posterior()
    guide = AmortizedNormal(encoder)
    x = data(8)
    elbo = elbo_class(num_particles=50, vectorize_particles=True, max_plate_nesting=1)
    loss, _ = elbo.particle_losses(linear_gaussian, guide, x, num_data=40)
    expected = -log_evidence(x).sum() * 40 / 8
    torch.testing.assert_close(loss, expected.expand(50), rtol=1e-4, atol=0)


@pytest.mark.parametrize("elbo_class", [ScoreFunctionELBO, PathwiseELBO])
def test_gradient_is_unbiased_against_closed_form(elbo_class):
    """Mean gradient over 2000 repetitions vs the closed-form ELBO's gradient, element by element.
    z_j = (mean_j - exact_j) / standard_error_j is about N(0, 1) if unbiased; the bound 4.0 is the
    two-sided normal quantile for a family-wise error of 1e-3 over the 14 elements (Bonferroni: 3.97)."""
    torch.manual_seed(1)
    guide = AmortizedNormal(LinearEncoder())
    x = data(6)
    elbo = elbo_class(num_particles=1, vectorize_particles=True, max_plate_nesting=1)
    stats = gradient_variance(elbo, linear_gaussian, guide, x, num_reps=2000, seed=3, num_data=30)
    params = dict(guide.named_parameters())
    exact = torch.autograd.grad(exact_loss(guide, x, 30), list(params.values()))
    bound = NormalDist().inv_cdf(1 - 1e-3 / (2 * 14))
    assert bound < 4.0
    for (name, _), g in zip(params.items(), exact):
        s = stats[name]
        z = (s.mean - g.double().numpy()) / s.standard_error
        assert abs(z).max() < bound, (name, z)


def test_pathwise_training_recovers_the_posterior():
    """SVI with PathwiseELBO from a default initialisation: the optimum is the exact posterior, so the
    encoder's weights must approach A and the scale sqrt(v). The tolerance 0.05 is an optimisation
    tolerance: after 1500 Adam steps at lr 0.02 with 10 particles, stochastic-approximation noise
    in the weights is about lr-sized (measured spread across seeds below 0.02)."""
    pyro.set_rng_seed(0)
    encoder = LinearEncoder()
    guide = AmortizedNormal(encoder)
    x = data(64)
    elbo = PathwiseELBO(num_particles=10, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(linear_gaussian, guide, Adam({"lr": 0.02}), elbo)
    for _ in range(1500):
        svi.step(x)
    torch.testing.assert_close(encoder.loc.weight.detach(), POST_A, atol=0.05, rtol=0)
    torch.testing.assert_close(softplus(encoder.raw_scale).detach(), POST_VAR.sqrt(), atol=0.05, rtol=0)


def test_estimator_is_chosen_per_site_not_hard_wired():
    """The guide's Normal is reparameterizable; force_estimator and infer={"estimator": "score"} switch it."""
    x = data(4)
    guide = AmortizedNormal(LinearEncoder())
    plain = pyro.poutine.trace(guide).get_trace(x).nodes["z"]
    assert plain["fn"].has_rsample and plain["value"].requires_grad
    forced = pyro.poutine.trace(force_estimator(guide, "score")).get_trace(x).nodes["z"]
    assert not forced["fn"].has_rsample and not forced["value"].requires_grad
    asks = AmortizedNormal(LinearEncoder(), infer={"estimator": "score"})
    site = pyro.poutine.trace(force_estimator(asks, "pathwise")).get_trace(x).nodes["z"]
    assert not site["fn"].has_rsample
    # Pyro's own ELBOs also accept it as an ordinary reparameterized guide.
    assert math.isfinite(Trace_ELBO(max_plate_nesting=1).loss(linear_gaussian, guide, x))


def test_encoder_contract_errors():
    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(D, L)

        def forward(self, x):
            return self.lin(x)

    with pytest.raises(ValueError, match=r"must return \(loc, scale\)"):
        AmortizedNormal(Bad())(data(3))
    with pytest.raises(ValueError, match="a batch of 5 rows out of num_data=3"):
        AmortizedNormal(LinearEncoder())(data(5), num_data=3)
