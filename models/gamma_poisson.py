r"""Gamma-Poisson: the rate of Poisson counts.

.. math:: \lambda \sim \operatorname{Gamma}(\alpha, \beta), \qquad
   x_i \mid \lambda \sim \operatorname{Poisson}(\lambda), \quad i = 1..N,

(shape :math:`\alpha`, rate :math:`\beta`) with the conjugate posterior (Gelman et al., "Bayesian Data
Analysis", 3rd ed., section 2.6)

.. math:: \lambda \mid x \sim \operatorname{Gamma}\big(\alpha + \textstyle\sum_i x_i,\ \beta + N\big).

:data:`DATA` are twelve draws from Poisson(3) (``torch.Generator().manual_seed(0)``, after ten
Normal draws).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

__all__ = ["DATA", "model", "posterior"]

DATA = torch.tensor([2.0, 4.0, 4.0, 3.0, 5.0, 3.0, 3.0, 0.0, 5.0, 4.0, 5.0, 2.0])
"""Twelve counts."""


def model(data: torch.Tensor = DATA, concentration: float = 2.0, rate: float = 1.0) -> None:
    """Latent site ``"rate"``; counts ``"obs"`` in the plate ``"data"``."""
    lam = pyro.sample("rate", dist.Gamma(concentration, rate))
    with pyro.plate("data", len(data)):
        pyro.sample("obs", dist.Poisson(lam), obs=data)


def posterior(data: torch.Tensor = DATA, concentration: float = 2.0, rate: float = 1.0) -> dist.Gamma:
    r"""The exact posterior of ``rate``, :math:`\operatorname{Gamma}(\alpha + \sum_i x_i, \beta + N)`."""
    return dist.Gamma(concentration + data.sum(), rate + len(data))
