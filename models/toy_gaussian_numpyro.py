r"""The toy Gaussian problem in NumPyro: minimise :math:`E_{x \sim N(\theta, \sigma^2)}[f(x)]`.

The model has a flat prior on ``x`` (``ImproperUniform``) and a factor :math:`-f(x)`; the guide is
:math:`N(\theta, \sigma^2)` with ``theta`` learnable and ``sigma`` fixed (learnable with
``learn_scale=True``, constrained positive). The negative ELBO is :math:`E_q[f(x)] - H[q]`, so its
gradient in ``theta`` is :math:`E_q[f'(x)]` (4 at theta = 2 for the default f(x) = x^2). Closed forms
for every estimator: :mod:`ppl_reparam.analytic`. Same problem as :mod:`ppl_reparam.models.toy_gaussian`
(Pyro).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from ppl_reparam.analytic import ToyProblem


class ToyGaussian(ToyProblem):
    """Model and guide of the toy problem; ``f`` is a numpy ``Polynomial`` (closed forms known) or
    any function of a JAX array. Parameters are NumPyro params ``theta`` and ``sigma``."""

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
