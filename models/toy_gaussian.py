r"""The toy Gaussian problem in Pyro: minimise :math:`E_{x \sim N(\theta, \sigma^2)}[f(x)]`.

The model has a flat prior on ``x`` and a factor :math:`-f(x)`; the guide is
:math:`N(\theta, \sigma^2)` with ``theta`` learnable and ``sigma`` fixed (learnable with
``learn_scale=True``). The negative ELBO is :math:`E_q[f(x)] - H[q]`, so its gradient in ``theta`` is
:math:`E_q[f'(x)]` (4 at theta = 2 for the default f(x) = x^2). Closed forms for every estimator:
:mod:`ppl_reparam.analytic`.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from ppl_reparam.analytic import ToyProblem


class ToyGaussian(ToyProblem):
    """Model and guide of the toy problem; ``f`` is a numpy ``Polynomial`` (closed forms known) or
    any function of a tensor. Parameters live in Pyro's param store as ``theta`` and ``sigma``."""

    def model(self) -> None:
        """Flat prior on ``x`` and the factor ``-f(x)``."""
        x = pyro.sample("x", dist.ImproperUniform(constraints.real, (), ()))
        pyro.factor("neg_f", -self.f(x))

    def guide(self) -> torch.Tensor:
        """``x ~ N(theta, sigma)``."""
        theta = pyro.param("theta", torch.tensor(self.theta))
        if self.learn_scale:
            sigma = pyro.param("sigma", torch.tensor(self.sigma), constraint=constraints.positive)
        else:
            sigma = torch.tensor(self.sigma)
        return pyro.sample("x", dist.Normal(theta, sigma))
