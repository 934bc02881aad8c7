"""Reparameterizable families in NumPyro: both estimators of ppl_reparam.numpyro.mc_gradients against
exact gradients, Poisson's missing pathwise gradient, seeding and Jacobian shapes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

from ppl_reparam.numpyro.mc_gradients import pathwise_jacobians, score_function_jacobians

Z = 5.5
# Two-sided normal tail P(|Z| > 5.5) = 3.8e-8 per element; a test checks at most 6 elements (3
# parameters x 2 estimators), so its false-failure rate is below 1e-6 (normal approximation to the
# mean of N independent per-sample gradients). Seeds are fixed, so the outcome is deterministic.
SAMPLES = 20_000


pytestmark = pytest.mark.usefixtures("quick_compiles")


def _dirichlet_square_gradient(alpha: np.ndarray) -> np.ndarray:
    """d/d alpha of E[sum_k x_k^2] = S / D, A = sum alpha, S = sum alpha (alpha + 1), D = A (A + 1)."""
    a = alpha.sum()
    s, d = (alpha * (alpha + 1)).sum(), a * (a + 1)
    return (2 * alpha + 1) / d - s * (2 * a + 1) / d**2


@dataclass(frozen=True)
class Case:
    name: str
    params: tuple[float, ...]
    build: Callable
    function: Callable
    exact: Callable[[np.ndarray], np.ndarray]


CASES = [
    # E[x^2] = mu^2 + sigma^2
    Case("Normal", (2.0, 1.0), lambda p: dist.Normal(p[0], p[1]), lambda x: x**2,
         lambda p: np.array([2 * p[0], 2 * p[1]])),
    # E[x] = exp(mu + s^2 / 2)
    Case("LogNormal", (0.0, 0.5), lambda p: dist.LogNormal(p[0], p[1]), lambda x: x,
         lambda p: np.exp(p[0] + p[1] ** 2 / 2) * np.array([1.0, p[1]])),
    # E[x] = 1 / rate
    Case("Exponential", (2.0,), lambda p: dist.Exponential(p[0]), lambda x: x,
         lambda p: np.array([-1 / p[0] ** 2])),
    # E[x] = alpha / beta (rate beta); implicit reparameterization
    Case("Gamma", (0.5, 2.0), lambda p: dist.Gamma(p[0], p[1]), lambda x: x,
         lambda p: np.array([1 / p[1], -p[0] / p[1] ** 2])),
    # E[x] = a / (a + b); implicit reparameterization
    Case("Beta", (2.0, 3.0), lambda p: dist.Beta(p[0], p[1]), lambda x: x,
         lambda p: np.array([p[1], -p[0]]) / (p[0] + p[1]) ** 2),
    # E[sum_k x_k^2] = S / D; implicit reparameterization
    Case("Dirichlet", (1.0, 2.0, 3.0), lambda p: dist.Dirichlet(p), lambda x: (x**2).sum(-1),
         _dirichlet_square_gradient),
]


def _assert_unbiased(jacobians: jax.Array, exact: np.ndarray) -> None:
    j = np.asarray(jacobians, dtype=np.float64)
    mean, se = j.mean(0), j.std(0, ddof=1) / np.sqrt(j.shape[0])
    assert np.all(np.isfinite(j))
    assert np.all(np.abs(mean - exact) < Z * se), (mean, exact, se)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_both_estimators_are_unbiased(case):
    params = jnp.array(case.params)
    exact = case.exact(np.array(case.params))
    score = score_function_jacobians(case.function, case.build, params, SAMPLES, seed=0)
    pathwise = pathwise_jacobians(case.function, case.build, params, SAMPLES, seed=1)
    assert score.shape == pathwise.shape == (SAMPLES, len(case.params))
    _assert_unbiased(score, exact)
    _assert_unbiased(pathwise, exact)


def test_poisson_has_score_function_but_no_pathwise_gradient():
    def build(p):
        return dist.Poisson(p[0])

    params = jnp.array([3.0])
    with pytest.raises(ValueError, match="Poisson has no rsample"):
        pathwise_jacobians(lambda x: x, build, params, 10, seed=0)
    _assert_unbiased(score_function_jacobians(lambda x: x * 1.0, build, params, SAMPLES, seed=0), np.array([1.0]))


def test_same_seed_same_numbers_and_shapes():
    def build(p):
        return dist.Dirichlet(p)

    def f(x):
        return (x**2).sum(-1)

    params = jnp.array([1.0, 2.0, 3.0])
    for estimator in (score_function_jacobians, pathwise_jacobians):
        a = estimator(f, build, params, 7, seed=3)
        b = estimator(f, build, params, 7, seed=3)
        c = estimator(f, build, params, 7, seed=4)
        assert a.shape == (7, 3)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert not np.allclose(np.asarray(a), np.asarray(c))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="1-D"):
        pathwise_jacobians(lambda x: x, lambda p: dist.Exponential(p), jnp.array(2.0), 4, seed=0)
    with pytest.raises(ValueError, match="batch shape"):
        score_function_jacobians(lambda x: x, lambda p: dist.Exponential(p), jnp.array([2.0, 3.0]), 4, seed=0)
    with pytest.raises(ValueError, match="num_samples"):
        score_function_jacobians(lambda x: x, lambda p: dist.Exponential(p[0]), jnp.array([2.0]), 0, seed=0)
    with pytest.raises(ValueError, match="scalar"):
        pathwise_jacobians(lambda x: jnp.stack([x, x]), lambda p: dist.Exponential(p[0]), jnp.array([2.0]), 4, seed=0)
