r"""The importance-weighted bound and its pathwise, VIMCO and DReG gradients (Pyro backend).

The bound, the estimators and their references are in :mod:`ppl_reparam.iwae`; this module builds the
log weights from Pyro's traces. The K particles are Pyro's vectorized particle plate (the leftmost
dim, at ``-max_plate_nesting``), so every particle sees the same subsample of each plate; the log
densities are summed to the plates that every site shares with Pyro's ``MultiFrameTensor``. DReG
replays the model against the guide's unpruned trace (plate subsample sites included, hence the same
minibatch) with detached samples.
"""

from __future__ import annotations

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

from .. import iwae as iw
from .elbo import OPS as ARRAY_OPS
from .elbo import param_leaves
from .handlers import ForceEstimatorMessenger, is_guide_latent

OPS = iw.IWAEOps(
    ARRAY_OPS,
    logsumexp=torch.logsumexp,
    softmax=torch.softmax,
    eye=lambda k, like: torch.eye(k, dtype=torch.bool, device=like.device),
)
""":class:`ppl_reparam.iwae.IWAEOps` for torch."""


def _frames(site: dict) -> frozenset:
    return frozenset(f for f in site["cond_indep_stack"] if f.vectorized)


def _log_density(site: dict) -> torch.Tensor:
    """Unscaled, masked log density of a site."""
    return scale_and_mask(site["unscaled_log_prob"], mask=site["mask"])


def _sum_to(sites: list[dict], density: Callable[[dict], torch.Tensor], common: frozenset) -> torch.Tensor:
    """The sites' ``density`` summed over their plates outside ``common`` and added."""
    return torch.as_tensor(MultiFrameTensor(*((s["cond_indep_stack"], density(s)) for s in sites)).sum_to(common))


def _scale_range(site: dict) -> tuple[float, float]:
    scale = torch.as_tensor(site["scale"])
    return float(scale.min()), float(scale.max())


class IWAE(ELBO):
    r"""Importance-weighted ELBO :math:`\mathcal L_K` with ``num_particles = K`` samples and the
    gradient ``estimator`` ``"pathwise"``, ``"score"`` (VIMCO) or ``"dreg"``; see
    :mod:`ppl_reparam.iwae`. Usable as ``SVI(model, guide, optim, loss=IWAE(...))``;
    ``max_plate_nesting`` counts the model's plates, as in Pyro's ELBOs (guessed when left out).
    """

    def __init__(self, num_particles: int = 5, estimator: str = "pathwise", max_plate_nesting: float = float("inf")):
        iw.check_options(num_particles, estimator)
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting, vectorize_particles=True)
        self.estimator = estimator

    def __repr__(self) -> str:
        return f"IWAE(num_particles={self.num_particles}, estimator={self.estimator!r})"

    def _get_trace(self, model: Callable, guide: Callable, args: tuple, kwargs: dict):
        """The model and guide traces, and the guide's unpruned trace (with plate subsample sites),
        which DReG replays the model against."""
        forced = ForceEstimatorMessenger(iw.IWAE_ESTIMATORS[self.estimator])
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
                raise iw.dreg_needs_rsample(e) from None
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
        if log_w.dim() != self.max_plate_nesting or log_w.shape[0] != self.num_particles:
            # Pyro's shape checks ignore the dims left of max_plate_nesting, and sum_to keeps them.
            wide = sorted({s["name"] for _, s in sites if s["unscaled_log_prob"].dim() > self.max_plate_nesting})
            raise ValueError(
                f"IWAE: the log weights have shape {tuple(log_w.shape)}, not ({self.num_particles}, ...) with "
                f"{self.max_plate_nesting} dims (the particles' dim and max_plate_nesting="
                f"{self.max_plate_nesting - 1} plate dims): the log densities of sites {wide} have batch dims "
                "left of max_plate_nesting that no plate declares. Declare them with pyro.plate (and raise "
                "max_plate_nesting, or leave it out to let Pyro guess it), or move them into the event shape "
                "with .to_event()."
            )
        return log_w, iw.common_scale(_scale_range(site) for _, site in sites), common

    # ----------------------------------------------------------------------------- surrogates
    def _loss_and_surrogate(self, model, guide, args, kwargs) -> tuple[torch.Tensor, torch.Tensor, list]:
        model_trace, guide_trace, full_guide_trace = next(self._get_traces(model, guide, args, kwargs))
        log_w, scale, common = self._log_weights(model_trace, guide_trace, _log_density)
        bound = iw.bound(log_w, OPS)
        loss = -scale * bound.sum()
        iw.check_finite(loss.item())
        terms = self._estimator_terms(model, model_trace, guide_trace, full_guide_trace, common, args, kwargs)
        objective = iw.surrogate_objective(self.estimator, log_w, bound, terms, OPS)
        return loss, -scale * objective.sum(), param_leaves(model_trace, guide_trace)

    def _estimator_terms(
        self, model, model_trace, guide_trace, full_guide_trace, common, args, kwargs
    ) -> dict[str, torch.Tensor]:
        """What :func:`ppl_reparam.iwae.surrogate_objective` needs besides the log weights: ``log_q``
        for VIMCO; ``path_log_w`` and ``log_p_bar``, the model's log density on the detached samples
        (a second run of the model), for DReG."""
        if self.estimator == "score":
            return {"log_q": _sum_to(_sample_sites(guide_trace), _log_density, common)}
        if self.estimator == "dreg":
            path_log_w, _, _ = self._log_weights(model_trace, guide_trace, _path_log_q)
            replayed = poutine.replay(self._vectorized_num_particles(model), trace=_detached_copy(full_guide_trace))
            model_bar = prune_subsample_sites(poutine.trace(replayed).get_trace(*args, **kwargs))
            model_bar.compute_log_prob()
            return {"path_log_w": path_log_w, "log_p_bar": _sum_to(_sample_sites(model_bar), _log_density, common)}
        return {}

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
    """:func:`ppl_reparam.iwae.vimco_signal` on torch: VIMCO's leave-one-out signal of the K samples
    along dim 0."""
    return iw.vimco_signal(log_w, OPS)


def _sample_sites(trace: Trace) -> list[dict]:
    return [site for site in trace.nodes.values() if site["type"] == "sample"]


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
