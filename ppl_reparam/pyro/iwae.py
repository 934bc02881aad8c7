r"""The importance-weighted bound and three estimators of its gradient.

With :math:`K` samples :math:`z_k \sim q_\phi` and weights :math:`w_k = p_\theta(x, z_k)/q_\phi(z_k)`,
the IWAE bound (Burda, Grosse and Salakhutdinov 2016) is

.. math:: \mathcal L_K = E\Big[\log \frac1K \sum_k w_k\Big] \le \log p_\theta(x),

taken separately for every element of the plates that all sites share (e.g. each data point of a
VAE minibatch), and scaled by their common subsampling scale. With normalized weights
:math:`\tilde w_k = w_k / \sum_j w_j`, the estimators of :math:`\nabla \mathcal L_K` are:

- ``"pathwise"`` (Burda et al.): reparameterized :math:`z_k`,
  :math:`\sum_k \tilde w_k \nabla \log w_k`.
- ``"score"``: VIMCO (Mnih and Rezende 2016), for any guide, discrete ones included:
  :math:`\sum_k \tilde w_k \nabla_{\text{direct}} \log w_k + \sum_k (\hat L - \hat L_{-k})\,
  \nabla \log q_\phi(z_k)`, where :math:`\hat L_{-k}` replaces :math:`\log w_k` by the mean of the
  other :math:`\log w_j` (a leave-one-out control variate for each sample).
- ``"dreg"``: doubly reparameterized (Tucker, Lawson, Gu and Maddison 2019): for the guide's
  parameters :math:`\sum_k \tilde w_k^2\, \partial \log w_k/\partial z_k\, \partial z_k/\partial\phi`,
  for the model's the pathwise :math:`\sum_k \tilde w_k \nabla_\theta \log p_\theta(x, z_k)`; it
  needs reparameterized sites and runs the model a second time on detached samples.

All three are unbiased for :math:`\nabla \mathcal L_K`; ``num_particles`` is :math:`K \ge 2`,
always vectorized.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import MultiFrameTensor, is_validation_enabled
from pyro.poutine import Trace
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_if_enumerated

from .elbo import param_leaves
from .handlers import ForceEstimatorMessenger, is_guide_latent

IWAE_ESTIMATORS = {"pathwise": "pathwise", "score": "score", "dreg": "pathwise"}
"""IWAE gradient estimator -> the estimator forced on the guide's sites."""


def _frames(site: dict) -> frozenset:
    return frozenset(f for f in site["cond_indep_stack"] if f.vectorized)


def _log_density(site: dict) -> torch.Tensor:
    """Unscaled, masked log density of a site."""
    return scale_and_mask(site["unscaled_log_prob"], mask=site["mask"])


class IWAE(ELBO):
    r"""Importance-weighted ELBO :math:`\mathcal L_K` with ``num_particles = K`` samples and the
    gradient ``estimator`` ``"pathwise"``, ``"score"`` (VIMCO) or ``"dreg"``; see
    :mod:`ppl_reparam.pyro.iwae`. Usable as ``SVI(model, guide, optim, loss=IWAE(...))``.
    """

    def __init__(self, num_particles: int = 5, estimator: str = "pathwise", max_plate_nesting: float = float("inf")):
        if estimator not in IWAE_ESTIMATORS:
            raise ValueError(f"unknown IWAE estimator {estimator!r}; expected one of {sorted(IWAE_ESTIMATORS)}")
        if not isinstance(num_particles, int) or num_particles < 2:
            raise ValueError(f"IWAE needs num_particles = K >= 2 importance samples, got {num_particles!r}")
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting, vectorize_particles=True)
        self.estimator = estimator

    def __repr__(self) -> str:
        return f"IWAE(num_particles={self.num_particles}, estimator={self.estimator!r})"

    def _get_trace(self, model: Callable, guide: Callable, args: tuple, kwargs: dict):
        """The model and guide traces, and the guide's unpruned trace (with plate subsample sites),
        which DReG replays the model against."""
        forced = ForceEstimatorMessenger(IWAE_ESTIMATORS[self.estimator])
        full = {}

        def forced_guide(*args: Any, **kwargs: Any) -> Any:
            with forced, poutine.trace() as tracer:
                result = guide(*args, **kwargs)
            full["trace"] = tracer.trace
            return result

        try:
            model_trace, guide_trace = get_importance_trace(
                "flat", self.max_plate_nesting, model, forced_guide, args, kwargs
            )
        except ValueError as e:
            if self.estimator == "dreg" and "needs rsample" in str(e):
                raise ValueError(f"IWAE(estimator='dreg') needs reparameterized guide sites: {e}") from None
            raise
        if is_validation_enabled():
            check_if_enumerated(guide_trace)
        return model_trace, guide_trace, full["trace"]

    # --------------------------------------------------------------------------- log weights
    def _log_weights(
        self, model_trace: Trace, guide_trace: Trace, guide_term: Callable[[dict], torch.Tensor]
    ) -> tuple[torch.Tensor, float, frozenset]:
        """Log weights of shape ``(K, *elements)``, indexed by the particles and the other plates
        that every site shares; the common subsampling scale; those shared frames.
        ``guide_term`` gives each guide site's log q."""
        sites = [
            (trace is model_trace, site)
            for trace in (model_trace, guide_trace)
            for site in trace.nodes.values()
            if site["type"] == "sample"
        ]
        common = frozenset.intersection(*(_frames(site) for _, site in sites))
        log_w = MultiFrameTensor(
            *((s["cond_indep_stack"], _log_density(s) if in_model else -guide_term(s)) for in_model, s in sites)
        )
        log_w = torch.as_tensor(log_w.sum_to(common))
        assert log_w.dim() == self.max_plate_nesting and log_w.shape[0] == self.num_particles
        return log_w, _common_scale(site for _, site in sites), common

    def _bound(self, log_w: torch.Tensor) -> torch.Tensor:
        """:math:`\\log \frac1K \\sum_k w_k` along the particle dim 0."""
        return torch.logsumexp(log_w, 0) - math.log(self.num_particles)

    # ----------------------------------------------------------------------------- surrogates
    def _loss_and_surrogate(self, model, guide, args, kwargs) -> tuple[torch.Tensor, torch.Tensor, list]:
        model_trace, guide_trace, full_guide_trace = next(self._get_traces(model, guide, args, kwargs))
        log_w, scale, common = self._log_weights(model_trace, guide_trace, _log_density)
        bound = self._bound(log_w)
        loss = -scale * bound.sum()
        if not torch.isfinite(loss):
            raise ValueError("IWAE: the log weights are NaN or infinite; check the model's and guide's densities")
        if self.estimator == "pathwise":
            objective = bound
        elif self.estimator == "score":
            objective = bound + self._vimco_term(log_w, guide_trace, common)
        else:
            objective = self._dreg_objective(
                model, model_trace, guide_trace, full_guide_trace, log_w, common, args, kwargs
            )
        return loss, -scale * objective.sum(), param_leaves(model_trace, guide_trace)

    def _vimco_term(self, log_w: torch.Tensor, guide_trace: Trace, common: frozenset) -> torch.Tensor:
        r""":math:`\sum_k \bot(\hat L - \hat L_{-k}) \log q(z_k)`, per shared plate element."""
        signal = vimco_signal(log_w.detach())
        log_q = MultiFrameTensor(
            *((s["cond_indep_stack"], _log_density(s)) for s in guide_trace.nodes.values() if s["type"] == "sample")
        )
        return (signal * torch.as_tensor(log_q.sum_to(common))).sum(0)

    def _dreg_objective(
        self, model, model_trace, guide_trace, full_guide_trace, log_w, common, args, kwargs
    ) -> torch.Tensor:
        r""":math:`\sum_k \bot(\tilde w_k^2) \log w_k^{\text{path}}
        + \sum_k \bot(\tilde w_k - \tilde w_k^2) \log p_\theta(x, \bot z_k)`."""
        weights = torch.softmax(log_w.detach(), 0)
        path_log_w, _, _ = self._log_weights(model_trace, guide_trace, _path_log_q)
        replayed = poutine.replay(self._vectorized_num_particles(model), trace=_detached_copy(full_guide_trace))
        model_bar = prune_subsample_sites(poutine.trace(replayed).get_trace(*args, **kwargs))
        model_bar.compute_log_prob()
        log_p_bar = MultiFrameTensor(
            *((s["cond_indep_stack"], _log_density(s)) for s in model_bar.nodes.values() if s["type"] == "sample")
        )
        log_p_bar = torch.as_tensor(log_p_bar.sum_to(common))
        return (weights**2 * path_log_w + (weights - weights**2) * log_p_bar).sum(0)

    # ------------------------------------------------------------------------------ public API
    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """An estimate of :math:`-\\mathcal L_K`."""
        with torch.no_grad():
            return self._loss_and_surrogate(model, guide, args, kwargs)[0].item()

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The estimate of :math:`-\\mathcal L_K`, carrying the chosen estimator's gradient."""
        loss, surrogate, _ = self._loss_and_surrogate(model, guide, args, kwargs)
        return loss.detach() + (surrogate - surrogate.detach())

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """Estimate :math:`-\\mathcal L_K` and accumulate its gradient estimate into ``.grad``."""
        loss, surrogate, params = self._loss_and_surrogate(model, guide, args, kwargs)
        if params and surrogate.requires_grad:
            surrogate.backward()
        return loss.item()


def vimco_signal(log_w: torch.Tensor) -> torch.Tensor:
    r"""VIMCO's learning signal for each of the K samples along dim 0 (Mnih and Rezende 2016):

    .. math:: \hat L - \hat L_{-k}, \quad \hat L = \log \frac1K \sum_j w_j, \quad
        \hat L_{-k} = \log \frac1K \Big(\sum_{j \ne k} w_j + \exp\big(\tfrac{1}{K-1}\textstyle\sum_{j \ne k}
        \log w_j\big)\Big).
    """
    k = log_w.shape[0]
    others_mean = (log_w.sum(0, keepdim=True) - log_w) / (k - 1)
    # replaced[i, j] = log_w[j], but others_mean[i] where j == i
    eye = torch.eye(k, dtype=torch.bool).reshape((k, k) + (1,) * (log_w.dim() - 1))
    replaced = torch.where(eye, others_mean.unsqueeze(1), log_w.unsqueeze(0))
    return torch.logsumexp(log_w, 0) - torch.logsumexp(replaced, 1)


def _path_log_q(site: dict) -> torch.Tensor:
    r"""Path-derivative-only :math:`\log q`: :math:`\log q_\phi(z) - \log q_\phi(\bot z) + \bot(\cdot)`."""
    log_q = _log_density(site)
    if not is_guide_latent(site):
        return log_q
    fixed = scale_and_mask(site["fn"].log_prob(site["value"].detach()), mask=site["mask"])
    return log_q - fixed + fixed.detach()


def _detached_copy(trace: Trace) -> Trace:
    copy = trace.copy()
    for name, node in trace.nodes.items():
        if node["type"] == "sample":
            copy.nodes[name] = {**node, "value": node["value"].detach()}
    return copy


def _common_scale(sites) -> float:
    """The one subsampling scale shared by every site, else a ValueError."""
    scales = set()
    for site in sites:
        scale = torch.as_tensor(site["scale"])
        scales |= {float(scale.min()), float(scale.max())}
    if len(scales) > 1:
        raise ValueError(f"IWAE needs every site to share one subsampling scale, got {sorted(scales)}")
    return scales.pop()
