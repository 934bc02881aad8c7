r"""The toy Gaussian problem in NumPyro: minimise :math:`E_{x \sim N(\theta, \sigma^2)}[f(x)]`.

The model has a flat prior on ``x`` (``ImproperUniform``) and a factor :math:`-f(x)`; the guide is
:math:`N(\theta, \sigma^2)` with ``theta`` learnable and ``sigma`` fixed (learnable with
``learn_scale=True``, constrained positive). The negative ELBO is :math:`E_q[f(x)] - H[q]`, so its
gradient in ``theta`` is :math:`E_q[f'(x)]` (4 at theta = 2 for the default f(x) = x^2). Closed forms
for every estimator: :mod:`ppl_reparam.analytic`. Same problem as :mod:`ppl_reparam.models.toy_gaussian`
(Pyro).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpy.polynomial import Polynomial
from numpyro.distributions import constraints

from ppl_reparam.analytic import SQUARE

Cost = Callable[[jax.Array], jax.Array]


def polynomial_cost(p: Polynomial) -> Cost:
    """The polynomial ``p`` as a function of a JAX array (Horner's rule)."""
    coefs = [float(c) for c in p.coef[::-1]]

    def f(x: jax.Array) -> jax.Array:
        out = jnp.zeros_like(x) + coefs[0]
        for c in coefs[1:]:
            out = out * x + c
        return out

    return f


class ToyGaussian:
    """Model and guide of the toy problem; ``f`` is a numpy ``Polynomial`` (closed forms known) or
    any function of a JAX array. Parameters are NumPyro params ``theta`` and ``sigma``."""

    def __init__(
        self,
        theta: float = 2.0,
        sigma: float = 1.0,
        *,
        learn_scale: bool = False,
        f: Polynomial | Cost = SQUARE,
    ):
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.theta = float(theta)
        self.sigma = float(sigma)
        self.learn_scale = learn_scale
        self.polynomial = f if isinstance(f, Polynomial) else None
        self.f = polynomial_cost(f) if isinstance(f, Polynomial) else f

    def model(self) -> None:
        """Flat prior on ``x`` and the factor ``-f(x)``."""
        x = numpyro.sample("x", dist.ImproperUniform(constraints.real, (), ()))
        numpyro.factor("neg_f", -self.f(x))

    def guide(self) -> jax.Array:
        """``x ~ N(theta, sigma)``."""
        theta = numpyro.param("theta", jnp.asarray(self.theta))
        if self.learn_scale:
            sigma = numpyro.param("sigma", jnp.asarray(self.sigma), constraint=constraints.positive)
        else:
            sigma = self.sigma
        return numpyro.sample("x", dist.Normal(theta, sigma))
