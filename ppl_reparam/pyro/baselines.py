r"""Baselines (control variates) for the score-function estimator.

A baseline :math:`b` that does not depend on the sample :math:`z_s` leaves the score-function
gradient unbiased, since :math:`E[b\, \nabla_\phi \log q_\phi(z_s)] = b\, E[\nabla_\phi \log q_\phi]
= 0`, and lowers its variance when it tracks the cost:

.. math:: \hat g = \nabla_\phi \log q_\phi(z_s)\, (c(z) - b).

A baseline here predicts the *unscaled* cost of a site, the cost divided by the site's subsampling
scale; the ELBO multiplies it back (pyro #555), so it does not change with the batch size. Its
state is updated only by ``loss_and_grads`` (training), never by ``loss`` or by a measurement.

- :class:`ConstantBaseline`: a fixed :math:`b`. On the toy problem the variance-optimal constant is
  :math:`b = \theta^2 + 3` (per-sample variance :math:`8\theta^2 + 6`, 38 at theta = 2, against 87).
- :class:`MovingAverageBaseline`: Pyro's decaying average,
  :math:`b \leftarrow \beta b + (1 - \beta) \bar c`, one per site, averaged over particles and over
  subsampled plates (whose elements change from step to step).
- :class:`LeaveOneOutBaseline` (RLOO; Kool, van Hoof and Welling 2019): particle :math:`i`'s
  baseline is the mean cost of the other particles, :math:`b_i = \frac{1}{P-1}\sum_{j \ne i} c_j`;
  needs ``num_particles >= 2`` and ``vectorize_particles=True``.
- :class:`LearnedBaseline`: a small network :math:`b_\psi(x)` of per-element features (or a learned
  constant), fit by squared error :math:`(b_\psi - c)^2` with its own optimizer; its parameters are
  kept apart from the model's, outside Pyro's param store (Mnih and Gregor 2014).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import specs


@dataclass(frozen=True)
class Context:
    """Where a cost comes from: its particle dim (None when particles are not vectorized), the dims
    to average over (the particle dim and subsampled plates present in the cost) and the model's
    arguments."""

    particle_dim: int | None
    reduce: tuple[int, ...]
    args: tuple
    kwargs: dict


class Baseline:
    """The interface the ELBOs call: ``value`` before a gradient, ``update`` after a training step."""

    needs_particles = False

    def value(self, site: str, cost: torch.Tensor, ctx: Context) -> torch.Tensor:
        """The baseline for ``cost`` (unscaled, detached), broadcastable to it."""
        raise NotImplementedError

    def update(self, site: str, cost: torch.Tensor, ctx: Context) -> None:
        """Learn from the unscaled, detached ``cost`` of a training step (default: nothing)."""

    def state_dict(self) -> dict[str, Any]:
        """What the baseline has learned, as tensors and plain values (for checkpoints)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` into a fresh baseline of the same kind."""
        if state:
            raise ValueError(f"{self!r} holds no state, got {sorted(state)}")


class ConstantBaseline(Baseline):
    """A fixed baseline ``b``."""

    def __init__(self, b: float):
        self.b = float(b)

    def value(self, site, cost, ctx):
        return torch.full_like(cost, self.b)

    def __repr__(self) -> str:
        return f"ConstantBaseline({self.b})"


class MovingAverageBaseline(Baseline):
    r"""Decaying average of each site's cost, :math:`b \leftarrow \beta b + (1-\beta)\bar c`,
    starting from 0, as Pyro's ``use_decaying_avg_baseline`` (default :math:`\beta = 0.9`)."""

    def __init__(self, beta: float = 0.9):
        if not 0 <= beta < 1:
            raise ValueError(f"beta must lie in [0, 1), got {beta}")
        self.beta = beta
        self.averages: dict[str, torch.Tensor] = {}

    def value(self, site, cost, ctx):
        return self.averages.get(site, torch.zeros(()))

    def update(self, site, cost, ctx):
        mean = cost.mean(dim=ctx.reduce, keepdim=True) if ctx.reduce else cost
        old = self.averages.get(site, torch.zeros(()))
        self.averages[site] = self.beta * old + (1 - self.beta) * mean

    def state_dict(self):
        return {"averages": {site: v.detach().clone() for site, v in self.averages.items()}}

    def load_state_dict(self, state):
        self.averages = {site: v.clone() for site, v in state["averages"].items()}

    def __repr__(self) -> str:
        return f"MovingAverageBaseline(beta={self.beta})"


class LeaveOneOutBaseline(Baseline):
    r"""RLOO: :math:`b_i = \frac{1}{P-1}\sum_{j \ne i} c_j` over the vectorized particles."""

    needs_particles = True

    def value(self, site, cost, ctx):
        dim = ctx.particle_dim
        if dim is None or cost.dim() < -dim:  # the cost is the same for every particle
            return cost
        n = cost.shape[dim]
        return (cost.sum(dim, keepdim=True) - cost) / (n - 1)

    def __repr__(self) -> str:
        return "LeaveOneOutBaseline()"


class LearnedBaseline(Baseline):
    """A per-site network ``b(features(*args, **kwargs))`` fit by squared error, or a learned
    constant per site when ``features`` is None.

    :param features: maps the model's arguments to per-element features of shape ``(..., F)``
        whose batch dims line up with the site's plates (for a VAE: the minibatch ``x``).
    :param hidden: width of the one hidden layer.
    :param lr: learning rate of the baseline's own Adam optimizer.
    """

    def __init__(self, features: Callable[..., torch.Tensor] | None = None, hidden: int = 32, lr: float = 1e-2):
        self.features = features
        self.hidden = hidden
        self.lr = lr
        self.nets: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    def _build(self, site: str, width: int | None) -> nn.Module:
        """Create the site's network (a constant when ``width`` is None) and its optimizer."""
        if width is None:
            net: nn.Module = _Constant()
        else:
            net = nn.Sequential(nn.Linear(width, self.hidden), nn.ReLU(), nn.Linear(self.hidden, 1))
        self.nets[site] = net
        self.optimizers[site] = torch.optim.Adam(net.parameters(), lr=self.lr)
        return net

    def _net(self, site: str, args: tuple, kwargs: dict) -> tuple[nn.Module, torch.Tensor | None]:
        x = None if self.features is None else self.features(*args, **kwargs).detach()
        if site not in self.nets:
            self._build(site, None if x is None else x.shape[-1])
        return self.nets[site], x

    def _predict(self, site, args, kwargs):
        net, x = self._net(site, args, kwargs)
        return net(x).squeeze(-1) if x is not None else net(None)

    def value(self, site, cost, ctx):
        with torch.no_grad():
            return self._predict(site, ctx.args, ctx.kwargs)

    def update(self, site, cost, ctx):
        with torch.enable_grad():
            error = (self._predict(site, ctx.args, ctx.kwargs) - cost) ** 2
            self.optimizers[site].zero_grad()
            error.mean().backward()
        self.optimizers[site].step()

    def state_dict(self):
        return {
            "widths": {site: _input_width(net) for site, net in self.nets.items()},
            "nets": {site: {k: v.detach().clone() for k, v in net.state_dict().items()}
                     for site, net in self.nets.items()},
            "optimizers": {site: opt.state_dict() for site, opt in self.optimizers.items()},
        }

    def load_state_dict(self, state):
        for site, width in state["widths"].items():
            with torch.random.fork_rng(devices=[]):  # the weights are overwritten: leave the RNG alone
                net = self._build(site, width)
            net.load_state_dict(state["nets"][site])
            self.optimizers[site].load_state_dict(state["optimizers"][site])

    def __repr__(self) -> str:
        return f"LearnedBaseline(features={self.features!r}, hidden={self.hidden}, lr={self.lr})"


def _input_width(net: nn.Module) -> int | None:
    return None if isinstance(net, _Constant) else net[0].in_features


class _Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.b = nn.Parameter(torch.zeros(()))

    def forward(self, x: Any) -> torch.Tensor:
        return self.b


BASELINES = {
    "moving_average": MovingAverageBaseline,
    "rloo": LeaveOneOutBaseline,
    "learned": LearnedBaseline,
}


def make_baseline(spec: str | float | Baseline | None) -> Baseline | None:
    """A baseline from a name in :data:`BASELINES`, a number (constant), an instance, or None."""
    return specs.make_baseline(spec, BASELINES, ConstantBaseline, Baseline)
