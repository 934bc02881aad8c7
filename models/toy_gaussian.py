r"""The toy Gaussian problem in Pyro: minimise :math:`E_{x \sim N(\theta, \sigma^2)}[f(x)]`.

The model has a flat prior on ``x`` and a factor :math:`-f(x)`; the guide is
:math:`N(\theta, \sigma^2)` with ``theta`` learnable and ``sigma`` fixed (learnable with
``learn_scale=True``). The negative ELBO is :math:`E_q[f(x)] - H[q]`, so its gradient in ``theta`` is
:math:`E_q[f'(x)]` (4 at theta = 2 for the default f(x) = x^2). Closed forms for every estimator:
:mod:`ppl_reparam.analytic`.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from numpy.polynomial import Polynomial
from pyro.distributions import constraints

from ppl_reparam.analytic import SQUARE

Cost = Callable[[torch.Tensor], torch.Tensor]


def polynomial_cost(p: Polynomial) -> Cost:
    """The polynomial ``p`` as a function of a tensor (Horner's rule)."""
    coefs = [float(c) for c in p.coef[::-1]]

    def f(x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x) + coefs[0]
        for c in coefs[1:]:
            out = out * x + c
        return out

    return f


class ToyGaussian:
    """Model and guide of the toy problem; ``f`` is a numpy ``Polynomial`` (closed forms known) or
    any function of a tensor. Parameters live in Pyro's param store as ``theta`` and ``sigma``."""

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
