r"""Normal-Normal: the unknown mean of Normal data with a known standard deviation.

.. math:: \mu \sim \mathcal N(\mu_0, \tau_0^2), \qquad x_i \mid \mu \sim \mathcal N(\mu, \sigma^2),
   \quad i = 1..N,

with the conjugate posterior (e.g. Gelman et al., "Bayesian Data Analysis", 3rd ed., section 2.5)

.. math:: \mu \mid x \sim \mathcal N(\mu_N, \tau_N^2), \qquad
   \tau_N^{-2} = \tau_0^{-2} + N \sigma^{-2}, \qquad
   \mu_N = \tau_N^2 \big(\mu_0 \tau_0^{-2} + \textstyle\sum_i x_i\, \sigma^{-2}\big).

:data:`DATA` are ten draws from N(1, 1) (``torch.Generator().manual_seed(0)``, rounded to 2 decimals).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

__all__ = ["DATA", "model", "posterior"]

DATA = torch.tensor([2.54, 0.71, -1.18, 1.57, -0.08, -0.4, 1.4, 1.84, 0.28, 0.6])
"""Ten observations."""


def model(
    data: torch.Tensor = DATA, prior_loc: float = 0.0, prior_scale: float = 2.0, noise_scale: float = 1.0
) -> None:
    """Latent site ``"mu"``; observations ``"obs"`` in the plate ``"data"``."""
    mu = pyro.sample("mu", dist.Normal(prior_loc, prior_scale))
    with pyro.plate("data", len(data)):
        pyro.sample("obs", dist.Normal(mu, noise_scale), obs=data)


def posterior(
    data: torch.Tensor = DATA, prior_loc: float = 0.0, prior_scale: float = 2.0, noise_scale: float = 1.0
) -> dist.Normal:
    r"""The exact posterior of ``mu``, :math:`\mathcal N(\mu_N, \tau_N^2)`."""
    precision = prior_scale**-2 + len(data) * noise_scale**-2
    loc = (prior_loc * prior_scale**-2 + data.sum() * noise_scale**-2) / precision
    return dist.Normal(loc, precision**-0.5)
