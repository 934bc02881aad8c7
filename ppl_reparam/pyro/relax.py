r"""RELAX's learned control at a discrete guide site (Grathwohl, Choi, Wu, Roeder and Duvenaud 2018,
"Backpropagation through the Void", section 3.3 and their discrete VAE experiments).

The control of :mod:`ppl_reparam.pyro.rebar`'s estimator is

.. math:: c_\phi(z) = \eta\, f(\sigma(z / \lambda)) + r_\rho(z)

at Bernoulli sites (REBAR's relaxed cost, from reruns of guide and model, plus a network), and
:math:`c_\phi(z) = r_\rho(z)` at Categorical and OneHotCategorical sites (a model indexes with a category,
so it cannot be run at a relaxed one). :math:`r_\rho` is a two-layer network on the site's relaxation, one
output per element of the site's batch (its event flattened into the input); its output layer starts at
zero, so that before any learning RELAX is REBAR with :math:`\eta` = ``rebar_eta`` and :math:`\lambda` =
``rebar_temperature``, which are the starting values.

:math:`\phi = (\eta, \log\lambda, \rho)` is learned by descending the single-sample variance of the
gradient estimate :math:`\hat g` of the guide's parameters: since :math:`E[\hat g]` does not depend on
:math:`\phi`, :math:`\nabla_\phi \mathrm{Var}[\hat g] = E[\nabla_\phi \|\hat g\|^2]`, one more
derivative of :math:`\hat g` (a double backward pass). The parameters of :math:`\phi` are Pyro params
named ``relax.<site>$$$...`` (:func:`pyro.module`), so ``SVI.step`` updates them with its optimizer
beside the model's and guide's, and saving or loading the param store saves or restores them.
"""

from __future__ import annotations

import math

import torch

PREFIX = "relax."
"""The Pyro param names of a site's control start with this and the site's name."""


class RelaxControl(torch.nn.Module):
    r""":math:`r_\rho` (and, with ``temperature``, the learned :math:`\eta` and :math:`\log\lambda`) of
    one site whose relaxation has ``size`` numbers per batch element."""

    def __init__(self, size: int, hidden: int, temperature: float | None = None, eta: float | None = None):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(size, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
        torch.nn.init.zeros_(self.net[2].weight)
        torch.nn.init.zeros_(self.net[2].bias)
        self.relaxes = temperature is not None
        if self.relaxes:
            self.log_temperature = torch.nn.Parameter(torch.tensor(math.log(temperature)))
            self.eta = torch.nn.Parameter(torch.tensor(float(eta)))

    def network(self, z: torch.Tensor, batch_dims: int) -> torch.Tensor:
        r""":math:`r_\rho(z)`, one value per batch element (the first ``batch_dims`` dims of ``z``)."""
        return self.net(z.reshape(z.shape[:batch_dims] + (-1,))).squeeze(-1)
