r"""Reusable guides: an amortized diagonal-Normal guide for a per-datum latent site.

:class:`AmortizedNormal` is the inference network of the variational autoencoder (Kingma and Welling,
"Auto-Encoding Variational Bayes", ICLR 2014; Rezende, Mohamed and Wierstra, ICML 2014):

.. math:: q_\phi(z_i \mid x_i) = \mathcal N\big(z_i;\ \mu_\phi(x_i),\ \operatorname{diag}\sigma_\phi(x_i)^2\big),
   \qquad i \in \text{minibatch},

one independent factor per datum inside a :func:`pyro.plate`, ``(loc, scale) = encoder(x)``. It fits
any Pyro model whose site ``site`` is drawn inside a plate named ``plate_name`` with one event
dimension (``.to_event(1)``) of the encoder's output size, and whose first argument is the encoder's
input (one row per datum). It does not fix the gradient estimator: that is chosen per site by the
ELBO (:class:`~ppl_reparam.pyro.ScoreFunctionELBO`, :class:`~ppl_reparam.pyro.PathwiseELBO`), by
:func:`~ppl_reparam.pyro.force_estimator`, or by ``infer={"estimator": ...}`` given here.

Minibatches follow :func:`data_plate`: with ``num_data`` = N training rows and a batch of B rows,
every log-density in the plate is scaled by N/B, so the loss estimates the full-data -ELBO.

:class:`MeanField` is a mean-field guide for any model: one factor per latent site in a family with the
site's own support (Normal; LogNormal or Gamma; Beta; Dirichlet), the estimator chosen per site. Its
rules (families, initialisation, errors) are :mod:`ppl_reparam.meanfield`'s; here are Pyro's pieces.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from operator import attrgetter
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution, constraints
from pyro.infer.autoguide import AutoGuide
from pyro.infer.autoguide.initialization import InitMessenger, init_to_median
from pyro.infer.autoguide.utils import deep_setattr
from pyro.nn import PyroModule, PyroParam
from pyro.nn.module import to_pyro_module_
from pyro.ops.tensor_utils import periodic_repeat
from torch import nn

from ..meanfield import ArrayOps, Family, MeanFieldRules, marginal_quantiles
from .handlers import apply_estimator

__all__ = ["AmortizedNormal", "MeanField", "data_plate"]


def data_plate(name: str, batch_size: int, num_data: int | None = None) -> pyro.plate:
    """The plate over a minibatch of ``batch_size`` rows out of ``num_data`` (default: the batch is
    all the data, no scaling).

    With ``num_data`` it is ``pyro.plate(name, size=num_data, subsample=arange(batch_size))``: the
    caller passes the rows themselves, so the indices are positions in the batch and only their
    number matters, for the scale ``num_data / batch_size`` (an unbiased estimate of the full-data
    sum). Model and guide must build it alike.
    """
    if num_data is None:
        return pyro.plate(name, batch_size)
    if not 1 <= batch_size <= num_data:
        raise ValueError(f"plate {name!r}: a batch of {batch_size} rows out of num_data={num_data}")
    return pyro.plate(name, size=num_data, subsample=torch.arange(batch_size))


class AmortizedNormal(PyroModule):
    """Guide ``site ~ Normal(loc, scale).to_event(1)`` per datum, ``(loc, scale) = encoder(x)``.

    :param encoder: maps a batch ``x`` of shape ``(B, ...)`` to ``(loc, scale)``, each ``(B, L)``,
        ``scale > 0``. A plain ``nn.Module`` is converted in place to a ``PyroModule``
        (:func:`pyro.nn.module.to_pyro_module_`), so its parameters live in Pyro's param store as
        ``encoder.<name>`` (e.g. ``encoder.net.0.weight``) when this guide is the top-level module.
    :param site: the latent site it samples.
    :param plate_name: the model's plate over data; see :func:`data_plate`.
    :param infer: passed to the sample site, e.g. ``{"estimator": "score"}`` (a default that the
        ELBO's or :func:`~ppl_reparam.pyro.force_estimator`'s ``sites=[...]`` overrides).

    ``forward(x, *args, num_data=None, **kwargs)`` takes the model's arguments, uses ``x`` (the
    first) and ``num_data``, ignores the rest, and returns the sample.
    """

    def __init__(
        self,
        encoder: nn.Module,
        site: str = "z",
        plate_name: str = "data",
        *,
        infer: dict | None = None,
    ):
        super().__init__()
        if not isinstance(encoder, PyroModule):
            to_pyro_module_(encoder)
        self.encoder = encoder
        self.site = site
        self.plate_name = plate_name
        self.infer = dict(infer or {})

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)`` of q(z | x), each of shape ``(len(x), latent_dim)``; checks the encoder."""
        out = self.encoder(x)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError(
                f"AmortizedNormal({self.site!r}): the encoder must return (loc, scale), got {type(out).__name__}"
            )
        loc, scale = out
        if loc.shape != scale.shape or loc.dim() != 2 or loc.shape[0] != x.shape[0]:
            raise ValueError(
                f"AmortizedNormal({self.site!r}): the encoder must return loc and scale of shape "
                f"(batch, latent_dim) = ({x.shape[0]}, L); got {tuple(loc.shape)} and {tuple(scale.shape)}"
            )
        return loc, scale

    def forward(self, x: torch.Tensor, *args: Any, num_data: int | None = None, **kwargs: Any) -> torch.Tensor:
        loc, scale = self.encode(x)
        with data_plate(self.plate_name, x.shape[0], num_data):
            return pyro.sample(self.site, dist.Normal(loc, scale).to_event(1), infer=dict(self.infer))


# ------------------------------------------------------------------------------------------------
# MeanField: a mean-field guide over native families, for any model (rules in ppl_reparam.meanfield)


def _is_constant(value: float | torch.Tensor, target: float) -> bool:
    return bool(torch.all(torch.as_tensor(value) == target))


def support_kind(support: constraints.Constraint) -> str | None:
    """``"real"``, ``"positive"`` (> 0 or >= 0), ``"unit_interval"`` ([0, 1], open or closed) or
    ``"simplex"`` for a site's support, looking through ``independent``; None for any other."""
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    if isinstance(support, type(constraints.real)):
        return "real"
    if isinstance(support, (constraints.greater_than, constraints.greater_than_eq)):
        return "positive" if _is_constant(support.lower_bound, 0) else None
    if isinstance(support, (constraints.interval, constraints.half_open_interval)):
        unit = _is_constant(support.lower_bound, 0) and _is_constant(support.upper_bound, 1)
        return "unit_interval" if unit else None
    if isinstance(support, type(constraints.simplex)):
        return "simplex"
    return None


def init_to_prior_mean(site: dict) -> torch.Tensor:
    """Pyro's ``init_to_mean``, but it also falls back to ``init_to_median`` (then to a feasible
    point) where the prior mean is infinite, e.g. a HalfCauchy, not only where it is undefined."""
    try:
        mean = site["fn"].mean.detach()
    except NotImplementedError:
        return init_to_median(site)
    return mean if bool(torch.isfinite(mean).all()) else init_to_median(site)


class _TorchRules(MeanFieldRules):
    """The rules of :mod:`ppl_reparam.meanfield` on torch arrays and Pyro constraints."""

    ops = ArrayOps(torch.log, torch.log1p, torch.sqrt, torch.where, torch.minimum, lambda x: x.mean(-1, keepdim=True))
    support_kind = staticmethod(support_kind)
    block = "poutine.block"
    enumeration = "config_enumerate with TraceEnum_ELBO"


class MeanField(AutoGuide):
    r"""Mean-field guide over native families, for any Pyro model:
    :math:`q_\phi(z) = \prod_s q_{\phi_s}(z_s)`, one independent factor per latent site ``s`` in a
    family on the site's own support (Normal; LogNormal or Gamma; Beta; Dirichlet). Families, their
    parameters, the errors for other supports and the initialisation (prior moments, matched) are
    in :mod:`ppl_reparam.meanfield`.

    Unlike Pyro's ``AutoNormal``, which samples a Normal on an unconstrained auxiliary site and
    transforms it, each site is drawn from a family with the site's own support, so the estimators
    can be compared on it: the pathwise gradient of Gamma, Beta and Dirichlet samples is the
    implicit reparameterization gradient (Figurnov, Mohamed and Mnih, NeurIPS 2018). There are no
    guide-only sites, so Pyro's own ``Trace_ELBO`` also gives an unbiased score-function gradient at
    a site that ``estimators`` sets to the score function.

    Plates and subsampling as in Pyro's AutoGuides: a site's parameters have the full size of its
    plates, and inside a subsampled plate the guide uses the rows of the subsample's indices. They
    are ``PyroParam`` s named ``"MeanField.params.{site}.{param}"`` in Pyro's param store.

    :param model: the Pyro model; its latent sites are found by running it once, on the first call.
    :param families: ``{site: family name}`` for sites that should not use the default family.
    :param estimators: ``{site: "score" | "pathwise"}``, the estimator of each named site (see
        :class:`~ppl_reparam.meanfield.MeanFieldRules`), which :func:`~ppl_reparam.pyro.force_estimator`
        and the ELBOs of this package respect (unless they name the site in ``sites=[...]``).
    :param init_loc_fn: per-site initial mean, as for Pyro's AutoGuides (default: the prior mean,
        :func:`init_to_prior_mean`).
    :param init_scale: initial standard deviation as a fraction of the prior's.
    :param create_plates: as for Pyro's AutoGuides: a function of the model's arguments returning
        the plates (e.g. with ``subsample=...``) that the guide should use.

    Calling the guide returns ``{site: sample}``; :meth:`distribution` gives one site's factor.
    """

    def __init__(
        self,
        model: Callable,
        families: Mapping[str, str] | None = None,
        estimators: Mapping[str, str] | None = None,
        *,
        init_loc_fn: Callable[[dict], torch.Tensor] = init_to_prior_mean,
        init_scale: float = 0.1,
        create_plates: Callable | None = None,
    ):
        self.rules = _TorchRules(families or {}, estimators or {}, init_scale)
        self._family: dict[str, Family] = {}
        super().__init__(InitMessenger(init_loc_fn)(model), create_plates=create_plates)

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        super()._setup_prototype(*args, **kwargs)
        self.rules.check_latent([name for name, _ in self.prototype_trace.iter_stochastic_nodes()])
        self.params = PyroModule()
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            fn = site["fn"]
            family = self._family[name] = self.rules.choose_family(name, fn.support)
            mean = site["value"].detach()
            try:
                prior_sd = fn.variance.detach().sqrt().expand_as(mean)
            except NotImplementedError:
                prior_sd = torch.full_like(mean, math.nan)
            values = self.rules.initial(family, mean, prior_sd)
            for frame in site["cond_indep_stack"]:
                full_size = frame.full_size or frame.size
                if full_size != frame.size:
                    values = [periodic_repeat(v, full_size, frame.dim - fn.event_dim).contiguous() for v in values]
            for (param, kind), value in zip(family.params, values):
                constraint = getattr(constraints, kind)
                deep_setattr(self.params, f"{name}.{param}", PyroParam(value.detach(), constraint, fn.event_dim))

    def _arguments(self, name: str) -> tuple[torch.Tensor, ...]:
        """The arguments of site ``name``'s distribution, subsampled by the plates entered around the call."""
        family = self._family[name]
        site_params = attrgetter(name)(self.params)
        return family.arguments(*(getattr(site_params, param) for param, _ in family.params))

    def _factor(self, name: str) -> TorchDistribution:
        """Site ``name``'s factor, with parameters subsampled by the plates entered around the call."""
        family = self._family[name]
        fn = getattr(dist, family.distribution)(*self._arguments(name))
        return fn.to_event(self.prototype_trace.nodes[name]["fn"].event_dim - family.event_dim)

    def distribution(self, name: str) -> TorchDistribution:
        """The factor :math:`q(z_s)` of site ``name``, with full-size parameters (no plates), e.g.
        ``guide.distribution("theta").mean``. Available after the first call of the guide."""
        if name not in self._family:
            raise KeyError(f"MeanField has no site {name!r} (sites: {sorted(self._family)}; call the guide first)")
        return self._factor(name)

    @torch.no_grad()
    def quantiles(self, quantiles: Sequence[float], *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """``{site: quantiles}``, each of shape ``(len(quantiles), *site shape)``: every element's
        marginal quantiles under its factor (:func:`~ppl_reparam.meanfield.marginal_quantiles`), as
        Pyro's AutoGuides give them, e.g. ``guide.quantiles([0.05, 0.5, 0.95])``; ``args`` are the
        model's, needed only before the guide's first call."""
        if self.prototype_trace is None:
            if not (args or kwargs):
                raise ValueError("MeanField has not seen the model yet: call the guide, or pass the model's arguments")
            self._setup_prototype(*args, **kwargs)
        result = {}
        for name, family in self._family.items():
            arguments = self._arguments(name)
            values = marginal_quantiles(family, [a.cpu().numpy() for a in arguments], quantiles)
            result[name] = torch.as_tensor(values, dtype=arguments[0].dtype, device=arguments[0].device)
        return result

    def median(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """``{site: median}``: every element's marginal median under its factor (for a Dirichlet site, of
        its Beta marginals, which need not sum to one), as Pyro's AutoGuides give it."""
        return {name: values[0] for name, values in self.quantiles([0.5], *args, **kwargs).items()}

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Sample every latent site of the model; arguments are the model's. Returns ``{site: value}``."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        estimators = self.rules.estimators
        result = {}
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            with ExitStack() as stack:
                for frame in site["cond_indep_stack"]:
                    stack.enter_context(plates[frame.name])
                fn, infer = self._factor(name), {}
                if name in estimators:
                    fn = apply_estimator(name, fn, estimators[name])
                    infer = {"estimator": estimators[name]}
                result[name] = pyro.sample(name, fn, infer=infer)
        return result
