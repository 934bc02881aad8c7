r"""Beta-Bernoulli: the fairness of a coin, as in Pyro's SVI tutorial (part I).

.. math:: f \sim \operatorname{Beta}(\alpha, \beta), \qquad
   x_i \mid f \sim \operatorname{Bernoulli}(f), \quad i = 1..N,

with the conjugate posterior :math:`f \mid x \sim \operatorname{Beta}(\alpha + h,\ \beta + N - h)`,
:math:`h = \sum_i x_i` heads. The tutorial's prior Beta(10, 10) and its data, 6 heads in 10 tosses,
give Beta(16, 14): mean 16/30 = 0.5333, standard deviation 0.0896.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

__all__ = ["DATA", "model", "posterior"]

DATA = torch.tensor([1.0] * 6 + [0.0] * 4)
"""Ten tosses, six heads."""


def model(data: torch.Tensor = DATA, alpha: float = 10.0, beta: float = 10.0) -> None:
    """Latent site ``"latent_fairness"`` (the tutorial's name); tosses ``"obs"`` in the plate ``"data"``."""
    fairness = pyro.sample("latent_fairness", dist.Beta(alpha, beta))
    with pyro.plate("data", len(data)):
        pyro.sample("obs", dist.Bernoulli(fairness), obs=data)


def posterior(data: torch.Tensor = DATA, alpha: float = 10.0, beta: float = 10.0) -> dist.Beta:
    r"""The exact posterior of ``latent_fairness``, :math:`\operatorname{Beta}(\alpha + h, \beta + N - h)`."""
    heads = data.sum()
    return dist.Beta(alpha + heads, beta + len(data) - heads)
