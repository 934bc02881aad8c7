r"""The measure-valued estimator at a guide site of a Pyro ELBO (:mod:`ppl_reparam.measure_valued`).

A site :math:`z_s \sim q_s(\cdot;\theta)` forced to ``"measure"`` is drawn without a gradient; the
gradient of the ELBO in each parameter element :math:`\theta_j` of its distribution is the weak
derivative

.. math:: \hat g_j = c_j\,\big(c_s(z^{+}_j) - c_s(z^{-}_j)\big),

where :math:`z^\pm_j` is :math:`z_s` with the element of :math:`\theta_j` drawn from the two sides of
the decomposition, and :math:`c_s(\cdot)` is the site's cost, the loss terms downstream of its sample
(found by provenance tracking, as for a score-function site), re-evaluated by running guide and model
again with every site drawn before :math:`z_s` replayed, :math:`z_s` replaced, and the sites after it
drawn afresh from one random stream shared by both sides (common random numbers: the terms that do
not move with :math:`z_s` cancel). The ELBO's surrogate gains :math:`\sum_j \theta_j\,\bot(\hat g_j)`,
so the gradient flows on from :math:`\theta` into whatever computed it (an encoder).

Elements of a plate are perturbed together where every term downstream of the site lies in that
plate (each element's cost is then its own terms); every other element (event dims, batch dims outside
plates, plates with a downstream term outside them) gets its own pair of runs, so a site costs
:math:`2 \times` (its parameters with a gradient) :math:`\times` (elements moved one at a time) runs
of guide and model, :math:`K` per element for a Categorical or OneHotCategorical (its weak derivative
in :math:`p_k` is the point mass at :math:`k`: :math:`\hat g_k = c_s(k)`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextvars import ContextVar

import torch
import torch.autograd.forward_ad as fwAD
from pyro.distributions import Bernoulli, Categorical, Exponential, Gamma, Normal, OneHotCategorical, Poisson

from ..measure_valued import FAMILIES, check_parameter, weak_pair

SUPPORTED = (("Normal", Normal), ("Exponential", Exponential), ("Gamma", Gamma), ("Poisson", Poisson),
             ("Bernoulli", Bernoulli), ("Categorical", Categorical), ("OneHotCategorical", OneHotCategorical))
"""Leaf families with a weak derivative here (LogNormal and other element-wise transforms of them
included), as ``(name, torch class)``."""

ALLOWED: ContextVar[bool] = ContextVar("measure_valued_allowed", default=False)
"""True inside this package's ELBOs, the only ones that implement the measure-valued and REBAR estimators
(a site forced to one of them refuses other ELBOs)."""


def family_of(leaf: torch.distributions.Distribution) -> str | None:
    """The name of ``leaf``'s family in :data:`SUPPORTED` (the ``torch.distributions`` classes, Pyro's
    subclasses included), or None."""
    for name, cls in SUPPORTED:
        if isinstance(leaf, getattr(torch.distributions, cls.__name__)):
            return name
    return None


class TorchDraws:
    """:class:`ppl_reparam.measure_valued.Draws` of one shape from torch's global generator."""

    def __init__(self, shape: torch.Size, like: torch.Tensor):
        self.shape, self.dtype, self.device = shape, like.dtype, like.device

    def _new(self) -> torch.Tensor:
        return torch.empty(self.shape, dtype=self.dtype, device=self.device)

    def exponential(self) -> torch.Tensor:
        return self._new().exponential_()

    def maxwell(self) -> torch.Tensor:
        chi = torch.randn((3, *self.shape), dtype=self.dtype, device=self.device).square().sum(0).sqrt()
        return chi * (2.0 * torch.randint(0, 2, self.shape, device=self.device) - 1.0).to(self.dtype)

    def uniform(self) -> torch.Tensor:
        return self._new().uniform_()

    def normal(self) -> torch.Tensor:
        return self._new().normal_()

    def gamma(self, concentration: torch.Tensor) -> torch.Tensor:
        return torch._standard_gamma(torch.as_tensor(concentration, dtype=self.dtype).expand(self.shape).contiguous())

    def poisson(self, rate: torch.Tensor) -> torch.Tensor:
        return torch.poisson(torch.as_tensor(rate, dtype=self.dtype).expand(self.shape).contiguous())

    def constant(self, value: float) -> torch.Tensor:
        return self._new().fill_(value)


def has_gradient(x: torch.Tensor) -> bool:
    """Whether ``x`` carries a reverse-mode gradient or a forward-mode tangent."""
    return x.requires_grad or fwAD.unpack_dual(x).tangent is not None


def site_term(
    name: str,
    leaf: torch.distributions.Distribution,
    transforms: list,
    value: torch.Tensor,
    event_dim: int,
    plate_dims: frozenset[int],
    cost: Callable[[torch.Tensor], torch.Tensor],
    coupling: bool,
) -> torch.Tensor:
    r""":math:`\sum_j \theta_j \bot(\hat g_j)` summed over the event dims: the measure-valued surrogate
    of one site, of its batch shape.

    :param leaf: the site's innermost distribution, whose draws ``transforms`` (element-wise) map to
        the site's values.
    :param value: the site's value, of shape ``batch_shape + event_shape``; ``event_dim`` the length
        of its ``event_shape``.
    :param plate_dims: the (negative) dims of ``value`` that are plates of the site (perturbed together).
    :param cost: maps a replacement value to the site's cost at it, broadcastable to ``value``'s shape
        with size 1 outside ``plate_dims`` (the caller reruns guide and model).
    :param coupling: common random numbers for the two sides.
    """
    family = family_of(leaf)
    shape = value.shape
    one_hot = family == "OneHotCategorical"
    free_shape = tuple(1 if i - len(shape) in plate_dims or (one_hot and i == len(shape) - 1) else n
                       for i, n in enumerate(shape))
    discrete = family in ("Categorical", "OneHotCategorical")
    term = _categorical_term(leaf, value, free_shape, cost, one_hot) if discrete else 0.0
    params = {} if discrete else {p: getattr(leaf, p) for p in FAMILIES[family]}
    detached = {p: x.detach().expand(shape) for p, x in params.items()}
    for p, theta in params.items():
        if not has_gradient(theta):
            continue
        check_parameter(family, p, f"site {name!r}")
        c, plus, minus = weak_pair(family, p, detached, TorchDraws(shape, value), coupling, torch.exp)
        for t in transforms:
            plus, minus = t(plus), t(minus)
        g = torch.zeros(shape, dtype=value.dtype, device=value.device)
        for mask in _coordinates(free_shape, value.device):
            difference = cost(torch.where(mask, plus, value)) - cost(torch.where(mask, minus, value))
            g = g + torch.where(mask, c * difference, 0.0)
        term = term + theta.expand(shape) * g
    if isinstance(term, float):
        return torch.zeros((), dtype=value.dtype, device=value.device)
    return term.sum(tuple(range(-event_dim, 0))) if event_dim else term


def _categorical_term(leaf: torch.distributions.Distribution, value: torch.Tensor, free_shape: tuple[int, ...],
                      cost: Callable[[torch.Tensor], torch.Tensor], one_hot: bool) -> torch.Tensor | float:
    r""":math:`p_k \bot(c_s(k))` element by element, summed over :math:`k` for a Categorical (its values
    have no category dim) and not for a OneHotCategorical (0.0 where the probabilities carry no
    gradient)."""
    probs = leaf.probs
    if not has_gradient(probs):
        return 0.0
    k_count = probs.shape[-1]
    batch = value.shape[:-1] if one_hot else value.shape
    g = torch.zeros((*batch, k_count), dtype=probs.dtype, device=probs.device)
    for mask in _coordinates(free_shape, value.device):
        for k in range(k_count):
            if one_hot:
                point = torch.nn.functional.one_hot(torch.tensor(k), k_count).to(value.dtype)
                g[..., k] += torch.where(mask[..., 0], cost(torch.where(mask, point, value))[..., 0], 0.0)
            else:
                g[..., k] += torch.where(mask, cost(torch.where(mask, torch.full_like(value, k), value)), 0.0)
    term = probs.expand(g.shape) * g
    return term if one_hot else term.sum(-1)


def _coordinates(free_shape: tuple[int, ...], device: torch.device):
    """One boolean mask of ``free_shape`` per element: the coordinates perturbed one at a time."""
    n = math.prod(free_shape)
    for j in range(n):
        yield (torch.arange(n, device=device) == j).reshape(free_shape)
