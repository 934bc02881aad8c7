"""RELAX and REBAR for Bernoulli bits, both backends through one parameter: unbiased against the exact
gradient by enumeration for a non-separable f and any control variate, and on Tucker et al.'s toy
f(b) = (b - 0.45)^2 the closed-form variances of the score function and of RELAX with a constant
control. Z = 5.5 (false failures below 1e-6)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

Z = 5.5
N = 100_000
W = np.array([1.0, 2.0, -1.0])
LOGITS = np.array([0.3, -0.5, 1.0])


def exact_gradient(f, logits: np.ndarray) -> np.ndarray:
    r""":math:`\nabla_\theta \sum_b p(b)\, f(b) = \sum_b p(b)\, f(b)\,(b - p)`, by enumeration."""
    p = 1 / (1 + np.exp(-logits))
    grad = np.zeros_like(logits)
    for bits in itertools.product([0.0, 1.0], repeat=len(logits)):
        b = np.array(bits)
        grad += np.prod(np.where(b > 0, p, 1 - p)) * f(b) * (b - p)
    return grad


class Torch:
    def __init__(self):
        import torch

        from ppl_reparam.pyro import mc_gradients

        self.torch, self.mc = torch, mc_gradients
        w = torch.tensor(W)
        self.f = lambda x: (x @ w - 0.45) ** 2
        self.control = lambda z: 0.3 * (torch.sigmoid(z) ** 2).sum(-1)
        self.toy = lambda x: (x[:, 0] - 0.45) ** 2

    def rebar(self, f, logits, **kw):
        return self.mc.rebar_jacobians(f, self.torch.tensor(logits), N, seed=0, **kw).numpy()

    def relax(self, f, control, logits):
        return self.mc.relax_jacobians(f, control, self.torch.tensor(logits), N, seed=1).numpy()

    def score(self, f, logits):
        torch = self.torch
        return self.mc.score_function_jacobians(
            f, lambda p: torch.distributions.Independent(torch.distributions.Bernoulli(logits=p), 1),
            torch.tensor(logits), N, seed=2).numpy()


class Jax:
    def __init__(self):
        import jax
        import jax.numpy as jnp

        from ppl_reparam.numpyro import mc_gradients

        self.jnp, self.mc = jnp, mc_gradients
        w = jnp.asarray(W)
        self.f = lambda x: (x @ w - 0.45) ** 2
        self.control = lambda z: 0.3 * jnp.sum(jax.nn.sigmoid(z) ** 2)
        self.toy = lambda x: (x[0] - 0.45) ** 2

    def rebar(self, f, logits, **kw):
        return np.asarray(self.mc.rebar_jacobians(f, self.jnp.asarray(logits), N, seed=0, **kw))

    def relax(self, f, control, logits):
        return np.asarray(self.mc.relax_jacobians(f, control, self.jnp.asarray(logits), N, seed=1))

    def score(self, f, logits):
        import numpyro.distributions as dist

        return np.asarray(self.mc.score_function_jacobians(
            f, lambda p: dist.Bernoulli(logits=p).to_event(1), self.jnp.asarray(logits), N, seed=2))


@pytest.fixture(params=["pyro", "numpyro"], scope="module")
def backend(request):
    return Torch() if request.param == "pyro" else Jax()


def _assert_unbiased(g: np.ndarray, exact: np.ndarray) -> None:
    se = g.std(0, ddof=1) / math.sqrt(len(g))
    assert np.all(np.abs(g.mean(0) - exact) < Z * se), (g.mean(0), exact, se)


def test_rebar_is_unbiased(backend):
    exact = exact_gradient(lambda b: (b @ W - 0.45) ** 2, LOGITS)
    for temperature, eta in ((0.5, 1.0), (2.0, 0.3)):
        g = backend.rebar(backend.f, LOGITS, temperature=temperature, eta=eta)
        assert g.shape == (N, 3)
        _assert_unbiased(g, exact)


def test_relax_is_unbiased_for_any_control(backend):
    exact = exact_gradient(lambda b: (b @ W - 0.45) ** 2, LOGITS)
    _assert_unbiased(backend.relax(backend.f, backend.control, LOGITS), exact)


def _two_point_variance(theta: float, f0: float, f1: float) -> float:
    """Variance of (f(b) - 0) (b - p), b ~ Bernoulli(p = sigmoid(theta)): a two-point distribution."""
    p = 1 / (1 + math.exp(-theta))
    g1, g0 = f1 * (1 - p), -f0 * p
    return p * g1**2 + (1 - p) * g0**2 - (p * g1 + (1 - p) * g0) ** 2


def test_relax_with_a_constant_control_is_the_baselined_score_function(backend):
    """Tucker et al.'s toy f(b) = (b - 0.45)^2 at theta = 0.2 (not 0: NumPyro 0.22's Bernoulli log_prob
    has a wrong logits gradient at exactly 0, README). The score function's per-sample variance is a
    two-point closed form; RELAX with c = 0.25 (its reparameterized terms cancel) is the score function
    with a constant baseline, whose variance is the same closed form of f - 0.25: 1/40 of it here."""
    theta, c = 0.2, 0.25
    logits = np.array([theta])
    exact = exact_gradient(lambda b: (b[0] - 0.45) ** 2, logits)
    closed = {"score": _two_point_variance(theta, 0.2025, 0.3025),
              "relax": _two_point_variance(theta, 0.2025 - c, 0.3025 - c)}
    constant = (lambda z: 0 * z.sum(-1) + c) if isinstance(backend, Torch) else (lambda z: 0 * z.sum() + c)
    draws = {"score": backend.score(backend.toy, logits)[:, 0],
             "relax": backend.relax(backend.toy, constant, logits)[:, 0]}
    for name, g in draws.items():
        _assert_unbiased(g[:, None].astype(np.float64), exact)
        deviations = (g.astype(np.float64) - g.mean()) ** 2
        assert abs(deviations.sum() / (N - 1) - closed[name]) < Z * deviations.std(ddof=1) / math.sqrt(N), name
    assert closed["relax"] < closed["score"] / 40


def test_bad_temperature(backend):
    with pytest.raises(ValueError, match="temperature must be positive"):
        backend.rebar(backend.f, LOGITS, temperature=0.0)


def test_bad_logits_and_sample_counts(backend):
    with pytest.raises(ValueError, match=r"params must be a 1-D .* of P parameters, got shape \(1, 3\)"):
        backend.rebar(backend.f, LOGITS[None])
    with pytest.raises(ValueError, match="num_samples must be positive, got 0"):
        logits = backend.torch.tensor(LOGITS) if isinstance(backend, Torch) else backend.jnp.asarray(LOGITS)
        backend.mc.relax_jacobians(backend.f, backend.control, logits, 0, seed=0)
