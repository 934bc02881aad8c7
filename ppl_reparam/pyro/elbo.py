r"""ELBOs that force one gradient estimator on the guide's latent sites.

Both classes estimate :math:`\mathrm{ELBO} = E_q[\log p(x, z) - \log q(z)]` and differentiate the
surrogate loss

.. math::
    \tilde L = \sum_t \ell_t(z)
        + \sum_{s \in S} \log q_s(z_s)\, \bot\big(\textstyle\sum_{t \succeq s} \ell_t(z)\big)

where the :math:`\ell_t` are the loss terms (:math:`\log q_t` of each guide site,
:math:`-\log p_t` of each model site, or closed-form :math:`\mathrm{KL}(q_t \| p_t)` with
``analytic_kl=True``), :math:`\bot` stops gradients and :math:`S` is the set of score-function
sites (Williams 1992; Ranganath, Gerrish and Blei 2014; Schulman et al. 2015). Reparameterized sites
carry gradients through their samples (Kingma and Welling 2014; Rezende, Mohamed and Wierstra 2014).

The cost of a score-function site ``s`` holds only terms that can depend on its sample
(Rao-Blackwellization as in Pyro's ``TraceGraph_ELBO``): every model term, the Monte Carlo
:math:`\log q_t` of guide sites sampled at or after ``s``, every closed-form KL term but its own,
and within a shared :func:`pyro.plate` only the same plate element. Unlike Pyro's ``Trace_ELBO``,
guide-only (auxiliary) sites, such as an AutoGuide's, get their full cost, so the score-function
gradient stays unbiased there. Subsampling scales the cost, not :math:`\log q_s` (pyro #555). The
zero-mean direct term :math:`\nabla_\phi \log q_s(z_s)` of a score-function site is left out, as in
Pyro's ELBOs.

``analytic_kl=False`` is Kingma and Welling's estimator A (the whole ELBO by Monte Carlo);
``analytic_kl=True`` is their estimator B: :math:`\mathrm{KL}(q_t \| p_t)` in closed form where a KL
is registered, :math:`-H(q_t)` where the prior is flat (``ImproperUniform``), and a ValueError naming
the site otherwise (guide-only sites included).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from pyro.distributions import ImproperUniform
from pyro.distributions.kl import kl_divergence
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import MultiFrameTensor, get_plate_stacks, is_validation_enabled
from pyro.poutine import Trace
from pyro.util import check_if_enumerated

from ..forcing import check_estimator
from .baselines import Baseline, Context, make_baseline
from .handlers import (
    EstimatorDistribution,
    ForceEstimatorMessenger,
    describe,
    is_guide_latent,
    leaf_distribution,
)

_PARTICLE_PLATE = "num_particles_vectorized"  # the name Pyro's ELBO gives its particle plate


@dataclass
class _Term:
    """One additive piece of the loss: a site's scaled, masked log-density or closed-form KL."""

    site: str
    frames: list
    value: torch.Tensor
    position: float  # guide order of the site; model terms come after every guide site
    own_sample: bool  # whether it depends on the sample of its own site (False for closed forms)
    surrogate: torch.Tensor | float  # what it adds to the surrogate loss before score terms

    def depends_on(self, position: int) -> bool:
        """Whether this term can depend on the sample of the guide site at ``position``: Monte Carlo
        terms of that site or later ones and every model term; closed forms of every other site (a
        KL term reads the samples of its model parents, wherever the guide draws them)."""
        if self.own_sample:
            return self.position >= position
        return self.position != position


class _Particles(NamedTuple):
    loss: torch.Tensor
    surrogate: torch.Tensor
    terms: list[_Term]
    costs: list[tuple[str, torch.Tensor, Context]]


def _averaged_dims(frames: list, cost: torch.Tensor) -> tuple[int, ...]:
    """Dims of ``cost`` a baseline averages over: particles, and plates that are subsampled (their
    elements change from step to step)."""
    return tuple(
        f.dim
        for f in frames
        if -f.dim <= cost.dim() and (f.name == _PARTICLE_PLATE or (f.full_size or f.size) != f.size)
    )


def _is_score_site(site: dict) -> bool:
    """A guide latent drawn without rsample: its gradient needs the score-function term."""
    return is_guide_latent(site) and not site["fn"].has_rsample


def _raise_non_finite(terms: list[_Term], guide_trace: Trace, model_trace: Trace) -> None:
    """Raise a ValueError naming the first site whose loss term is NaN or infinite."""
    for term in terms:
        if not torch.isfinite(term.value).all():
            site = guide_trace.nodes.get(term.site) or model_trace.nodes[term.site]
            raise ValueError(
                f"site {term.site!r}: the loss term of {describe(site['fn'])} is NaN or infinite "
                "(a value outside the support, or parameters that have diverged). Check its "
                "parameters and data, or lower the learning rate."
            )


def _per_particle(x: torch.Tensor | float, dim: int | None) -> torch.Tensor:
    """Sum ``x`` over every dim but the particle ``dim``: shape (num_particles,) or (1,)."""
    x = torch.as_tensor(x)
    if dim is None or x.dim() < -dim:
        return x.sum().reshape(1)
    if x.dim() == -dim and x.numel() == x.shape[0]:
        return x.reshape(-1)
    return x.movedim(dim, 0).reshape(x.shape[dim], -1).sum(1)


def _unwrap_forced(fn: torch.distributions.Distribution) -> torch.distributions.Distribution:
    return fn.base_dist if isinstance(fn, EstimatorDistribution) else fn


class _EstimatorELBO(ELBO):
    """Shared machinery: force ``estimator`` on the guide and differentiate the surrogate loss."""

    estimator: str

    def __init__(
        self,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        analytic_kl: bool = False,
        sites: Iterable[str] | None = None,
        baseline: str | float | Baseline | None = None,
        stl: bool = False,
        **kwargs: Any,
    ):
        if not isinstance(num_particles, int) or num_particles < 1:
            raise ValueError(f"num_particles must be a positive integer, got {num_particles!r}")
        check_estimator(self.estimator)
        self.analytic_kl = bool(analytic_kl)
        self.sites = None if sites is None else tuple([sites] if isinstance(sites, str) else sites)
        self.baseline = make_baseline(baseline)
        self.stl = bool(stl)
        if self.baseline is not None and self.baseline.needs_particles and (
            num_particles < 2 or not vectorize_particles
        ):
            raise ValueError(
                f"baseline {self.baseline!r} (leave-one-out) compares particles: it needs "
                f"num_particles >= 2 and vectorize_particles=True, got num_particles={num_particles}, "
                f"vectorize_particles={vectorize_particles}"
            )
        if self.stl and self.analytic_kl:
            raise ValueError(
                "stl=True (sticking the landing) drops the score term of the Monte Carlo log q, and "
                "analytic_kl=True has no such term; use one or the other"
            )
        self._options = dict(
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            analytic_kl=analytic_kl,
            sites=self.sites,
            baseline=self.baseline,
            stl=self.stl,
            **kwargs,
        )
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            **kwargs,
        )

    def with_num_particles(self, num_particles: int) -> _EstimatorELBO:
        """A copy of this ELBO with another ``num_particles`` (all other options kept)."""
        return type(self)(num_particles=num_particles, **self._options)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self._options.items())
        return f"{type(self).__name__}(num_particles={self.num_particles}, {opts})"

    # ----------------------------------------------------------------------------------- traces
    def _get_trace(self, model: Callable, guide: Callable, args: tuple, kwargs: dict):
        forced = ForceEstimatorMessenger(self.estimator, self.sites)

        def forced_guide(*args: Any, **kwargs: Any) -> Any:
            with forced:
                return guide(*args, **kwargs)

        model_trace, guide_trace = get_importance_trace(
            "flat", self.max_plate_nesting, model, forced_guide, args, kwargs
        )
        forced.choices.check_sites_seen()
        if is_validation_enabled():
            check_if_enumerated(guide_trace)
        return model_trace, guide_trace

    def _particle_dim(self) -> int | None:
        if self.vectorize_particles and self.num_particles > 1:
            return -self.max_plate_nesting
        return None

    # ------------------------------------------------------------------------------ loss terms
    def _kl_term(self, name: str, q_site: dict, p_site: dict | None) -> torch.Tensor:
        """Closed-form KL(q || p) at site ``name``, or -H(q) under a flat prior; else ValueError."""
        q = _unwrap_forced(q_site["fn"])
        if p_site is None:
            raise ValueError(
                f"site {name!r}: analytic_kl=True needs the site's prior, but {describe(q)} is a "
                "guide-only (auxiliary) site, as in AutoGuides. Use analytic_kl=False (Monte Carlo)."
            )
        p = p_site["fn"]
        try:
            kl = kl_divergence(q, p)
        except NotImplementedError:
            if not isinstance(leaf_distribution(p), ImproperUniform):
                raise ValueError(
                    f"site {name!r}: analytic_kl=True, but KL({describe(q)} || {describe(p)}) has no "
                    "closed form registered with torch.distributions.kl and the prior is not flat. "
                    "Use analytic_kl=False (Monte Carlo) or register one with "
                    "torch.distributions.kl.register_kl."
                ) from None
            try:
                kl = -q.entropy()
            except NotImplementedError:
                raise ValueError(
                    f"site {name!r}: analytic_kl=True under a flat prior needs the entropy of "
                    f"{describe(q)} in closed form, and it has none. Use analytic_kl=False."
                ) from None
        return scale_and_mask(kl, q_site["scale"], q_site["mask"])

    def _terms(self, model_trace: Trace, guide_trace: Trace) -> list[_Term]:
        """The loss as a list of terms, guide sites in sampling order, then model sites."""
        model_stacks = get_plate_stacks(model_trace)
        guide_stacks = get_plate_stacks(guide_trace)
        terms, closed_form = [], set()
        guide_sites = [s for s in guide_trace.nodes.values() if s["type"] == "sample"]
        for position, site in enumerate(guide_sites):
            name = site["name"]
            if self.analytic_kl and is_guide_latent(site):
                kl = self._kl_term(name, site, model_trace.nodes.get(name))
                terms.append(_Term(name, guide_stacks[name], kl, position, False, kl))
                closed_form.add(name)
            else:
                log_q = site["log_prob"]
                terms.append(_Term(name, guide_stacks[name], log_q, position, True, self._log_q_surrogate(site)))
        for name, site in model_trace.nodes.items():
            if site["type"] == "sample" and name not in closed_form:
                log_p = -site["log_prob"]
                terms.append(_Term(name, model_stacks[name], log_p, math.inf, True, log_p))
        return terms

    def _log_q_surrogate(self, site: dict) -> torch.Tensor | float:
        r"""A guide site's Monte Carlo :math:`\log q` in the surrogate: left out at score-function
        sites (its gradient at fixed z has mean zero; the score term carries the rest); with
        ``stl=True`` at reparameterized sites, only its path derivative (Roeder, Wu and Duvenaud
        2017): :math:`\log q_\phi(z) - \log q_\phi(\bot z) + \bot \log q_\phi(\bot z)`."""
        if _is_score_site(site):
            return 0.0
        if not (self.stl and is_guide_latent(site)):
            return site["log_prob"]
        at_fixed_z = site["fn"].log_prob(site["value"].detach())
        at_fixed_z = scale_and_mask(at_fixed_z, site["scale"], site["mask"])
        return site["log_prob"] - at_fixed_z + at_fixed_z.detach()

    def _score_terms(
        self, terms: list[_Term], guide_trace: Trace, args: tuple, kwargs: dict
    ) -> tuple[torch.Tensor | float, list[tuple[str, torch.Tensor, Context]]]:
        r""":math:`\sum_{s} \log q_s(z_s)\, \bot(c_s - \sigma_s b_s)` over the score-function sites
        ``s``, with :math:`\sigma_s` the site's scale and :math:`b_s` the baseline for the unscaled
        cost :math:`c_s / \sigma_s`; also the unscaled costs, for the baseline's update."""
        total: torch.Tensor | float = 0.0
        costs = []
        guide_sites = [s for s in guide_trace.nodes.values() if s["type"] == "sample"]
        for position, site in enumerate(guide_sites):
            if not _is_score_site(site):
                continue
            frames = [f for f in site["cond_indep_stack"] if f.vectorized]
            cost = MultiFrameTensor(*((t.frames, t.value) for t in terms if t.depends_on(position)))
            cost = torch.as_tensor(cost.sum_to(frames)).detach()
            if self.baseline is not None:
                scale = torch.as_tensor(site["scale"])
                ctx = Context(self._particle_dim(), _averaged_dims(frames, cost), args, kwargs)
                unscaled = cost / scale
                cost = cost - scale * self.baseline.value(site["name"], unscaled, ctx)
                costs.append((site["name"], unscaled, ctx))
            log_q = scale_and_mask(site["unscaled_log_prob"], mask=site["mask"])
            total = total + log_q * cost
        return total, costs

    def _particle_losses(self, model_trace: Trace, guide_trace: Trace, args: tuple, kwargs: dict) -> _Particles:
        """Per-particle loss (-ELBO) and surrogate loss, each of shape (particles in the trace,),
        with the loss terms and the score-function costs."""
        dim = self._particle_dim()
        terms = self._terms(model_trace, guide_trace)
        loss = surrogate = torch.zeros(())
        for term in terms:
            loss = loss + _per_particle(term.value, dim).detach()
            surrogate = surrogate + _per_particle(term.surrogate, dim)
        if not torch.isfinite(loss.sum()):
            _raise_non_finite(terms, guide_trace, model_trace)
        score, costs = self._score_terms(terms, guide_trace, args, kwargs)
        surrogate = surrogate + _per_particle(score, dim)
        n = self.num_particles if dim is not None else 1
        return _Particles(loss.expand(n), surrogate.expand(n), terms, costs)

    def particle_losses(
        self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and surrogate loss of each particle, two tensors of shape ``(num_particles,)``.

        The gradient of ``surrogate[i]`` is particle ``i``'s single-sample gradient estimate; the
        ELBO's estimate is their mean. :func:`~ppl_reparam.pyro.gradient_variance` builds on this.
        """
        pairs = [
            self._particle_losses(*traces, args, kwargs)[:2] for traces in self._get_traces(model, guide, args, kwargs)
        ]
        if len(pairs) == 1:
            return pairs[0]
        losses, surrogates = zip(*pairs)
        return torch.cat(losses), torch.cat(surrogates)

    # ---------------------------------------------------------------------------- public API
    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """An estimate of the loss, -ELBO, from ``num_particles`` samples."""
        with torch.no_grad():
            loss, _ = self.particle_losses(model, guide, *args, **kwargs)
        return loss.mean().item()

    def differentiable_loss(
        self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """The loss estimate, carrying the surrogate's gradient (for custom training loops)."""
        loss, surrogate = self.particle_losses(model, guide, *args, **kwargs)
        surrogate = surrogate.mean()
        return loss.mean() + (surrogate - surrogate.detach())

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """Estimate the loss and accumulate the gradient estimate into the parameters' ``.grad``.

        Raises a ValueError naming the site whose term has a NaN or infinite gradient.
        """
        total = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            loss, surrogate, terms, costs = self._particle_losses(model_trace, guide_trace, args, kwargs)
            total += loss.sum().item() / self.num_particles
            params = _params(model_trace, guide_trace)
            if params and surrogate.requires_grad:
                (surrogate.sum() / self.num_particles).backward(retain_graph=True)
                _check_gradients(params, terms)
            for site, cost, ctx in costs:
                self.baseline.update(site, cost, ctx)
        return total


def _params(*traces: Trace) -> list[torch.Tensor]:
    """The unconstrained leaf tensors of the param sites in ``traces`` (what optimizers update)."""
    found = {}
    for trace in traces:
        for site in trace.nodes.values():
            if site["type"] == "param":
                found[site["name"]] = site["value"].unconstrained()
    return list(found.values())


def _check_gradients(params: list[torch.Tensor], terms: list[_Term]) -> None:
    """Raise a ValueError naming the first site whose loss term gives a non-finite gradient."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or torch.isfinite(torch.nn.utils.get_total_norm(grads)):  # one fused check
        return
    for term in terms:
        if not term.value.requires_grad:
            continue
        grads = torch.autograd.grad(term.value.sum(), params, retain_graph=True, allow_unused=True)
        if any(g is not None and not torch.isfinite(g).all() for g in grads):
            raise ValueError(f"site {term.site!r}: its loss term has a NaN or infinite gradient")
    raise ValueError(
        "NaN or infinite gradient, though no single site's loss term has one (infinities that "
        "cancel in the surrogate?); check the guide's log_prob and the model's factors"
    )


class ScoreFunctionELBO(_EstimatorELBO):
    r"""ELBO whose gradient uses the score-function (REINFORCE) estimator at every guide latent.

    .. math:: \nabla_\phi E_q[f] = E_q[f(z)\, \nabla_\phi \log q_\phi(z)]

    (Williams 1992; Paisley, Blei and Jordan 2012; Ranganath, Gerrish and Blei 2014). Unbiased on
    every site, discrete ones and guide-only (auxiliary) sites included. With ``sites=[...]`` only the
    named sites are forced; a site's own ``infer={"estimator": ...}`` is respected unless named.

    :param int num_particles: samples per gradient estimate.
    :param bool vectorize_particles: draw the particles in one vectorized pass (needs
        ``max_plate_nesting``-aware models, as in Pyro).
    :param max_plate_nesting: as in Pyro; guessed from a first run when not given.
    :param bool analytic_kl: closed-form KL / entropy (estimator B) instead of Monte Carlo
        (estimator A); see :mod:`ppl_reparam.pyro.elbo`.
    :param sites: names of the guide sites to force (default: all).
    """

    estimator = "score"


class PathwiseELBO(_EstimatorELBO):
    r"""ELBO whose gradient uses the pathwise (reparameterization) estimator at every guide latent.

    .. math:: \nabla_\phi E_{q_\phi}[f] = E_{\epsilon}[\nabla_\phi f(g_\phi(\epsilon))],
       \quad z = g_\phi(\epsilon)

    (Kingma and Welling 2014; Rezende, Mohamed and Wierstra 2014; implicit reparameterization for
    Gamma, Beta, Dirichlet: Figurnov, Mohamed and Mnih 2018). A site whose family has no ``rsample``
    (e.g. Bernoulli, Categorical) raises a ValueError naming it; there is no silent fallback to the
    score function. Options as in :class:`ScoreFunctionELBO`.
    """

    estimator = "pathwise"
