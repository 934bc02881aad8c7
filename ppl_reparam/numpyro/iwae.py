r"""The importance-weighted bound and three estimators of its gradient (NumPyro backend).

Same semantics as :mod:`ppl_reparam.pyro.iwae`. With :math:`K` samples :math:`z_k \sim q_\phi` and
weights :math:`w_k = p_\theta(x, z_k)/q_\phi(z_k)`, the IWAE bound (Burda, Grosse and Salakhutdinov 2016)
is

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
  needs reparameterized sites and runs the model a second time on samples under ``stop_gradient``.

All three are unbiased for :math:`\nabla \mathcal L_K`; ``num_particles`` is :math:`K \ge 2`. The K
particles are mapped by ``jax.vmap`` (or ``jax.lax.map`` with ``vectorize_particles=False``), the bound
taken across them; they share the minibatch (one draw of each subsampled plate's indices), since the
bound compares them element by element. ``loss`` returns :math:`-\mathcal L_K`'s estimate carrying the
chosen estimator's gradient, so :class:`IWAE` works with :class:`numpyro.infer.SVI`, under ``jax.jit`` and with
:func:`~ppl_reparam.numpyro.gradient_variance`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import random
from jax.lax import stop_gradient
from jax.scipy.special import logsumexp
from numpyro.handlers import replay, seed, substitute, trace
from numpyro.infer.elbo import ELBO

from .elbo import log_density, path_log_density, sample_sites, shared_subsamples, traces
from .handlers import ForceEstimatorMessenger, is_guide_latent

IWAE_ESTIMATORS = {"pathwise": "pathwise", "score": "score", "dreg": "pathwise"}
"""IWAE gradient estimator -> the estimator forced on the guide's sites."""


def _frames(site: dict) -> frozenset:
    return frozenset(site["cond_indep_stack"])


def _to_elements(value: jax.Array, common: frozenset, shape: tuple[int, ...]) -> jax.Array:
    """Sum ``value`` over every dim but those of the ``common`` plates; result of ``shape`` (one entry
    per element of those plates, dims counted from the right as the plates')."""
    value = jnp.asarray(value)
    keep = {f.dim for f in common}
    axes = tuple(i for i in range(-value.ndim, 0) if i not in keep or -i > len(shape))
    value = value.sum(axes, keepdims=True) if axes else value
    value = value.reshape(value.shape[max(value.ndim - len(shape), 0) :])
    return jnp.broadcast_to(value, shape)


def _common_scale(sites: list[dict]) -> float:
    """The one subsampling scale shared by every site, else a ValueError."""
    scales = set()
    for site in sites:
        scale = 1.0 if site["scale"] is None else site["scale"]
        if isinstance(scale, jax.core.Tracer):
            raise ValueError("IWAE needs concrete subsampling scales, got a traced one (numpyro.handlers.scale?)")
        scale = np.asarray(scale, dtype=np.float64)
        scales |= {float(scale.min()), float(scale.max())}
    if len(scales) > 1:
        raise ValueError(f"IWAE needs every site to share one subsampling scale, got {sorted(scales)}")
    return scales.pop()


def vimco_signal(log_w: jax.Array) -> jax.Array:
    r"""VIMCO's learning signal for each of the K samples along axis 0 (Mnih and Rezende 2016):

    .. math:: \hat L - \hat L_{-k}, \quad \hat L = \log \frac1K \sum_j w_j, \quad
        \hat L_{-k} = \log \frac1K \Big(\sum_{j \ne k} w_j + \exp\big(\tfrac{1}{K-1}\textstyle\sum_{j \ne k}
        \log w_j\big)\Big).
    """
    k = log_w.shape[0]
    others_mean = (jnp.sum(log_w, 0, keepdims=True) - log_w) / (k - 1)
    # replaced[i, j] = log_w[j], but others_mean[i] where j == i
    eye = jnp.eye(k, dtype=bool).reshape((k, k) + (1,) * (log_w.ndim - 1))
    replaced = jnp.where(eye, others_mean[:, None], log_w[None, :])
    return logsumexp(log_w, 0) - logsumexp(replaced, 1)


class IWAE(ELBO):
    r"""Importance-weighted ELBO :math:`\mathcal L_K` with ``num_particles = K`` samples and the
    gradient ``estimator`` ``"pathwise"``, ``"score"`` (VIMCO) or ``"dreg"``; see
    :mod:`ppl_reparam.numpyro.iwae`. Usable as ``SVI(model, guide, optim, loss=IWAE(...))``.
    """

    can_infer_discrete = True

    def __init__(self, num_particles: int = 5, estimator: str = "pathwise", vectorize_particles: bool = True):
        if estimator not in IWAE_ESTIMATORS:
            raise ValueError(f"unknown IWAE estimator {estimator!r}; expected one of {sorted(IWAE_ESTIMATORS)}")
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 2:
            raise ValueError(f"IWAE needs num_particles = K >= 2 importance samples, got {num_particles!r}")
        super().__init__(num_particles=num_particles, vectorize_particles=vectorize_particles)
        self.estimator = estimator

    def __repr__(self) -> str:
        return f"IWAE(num_particles={self.num_particles}, estimator={self.estimator!r})"

    def _particle(self, keys, param_map, model, guide, args, kwargs, info: dict) -> dict[str, jax.Array]:
        """One particle's log weight per shared-plate element, and what its estimator needs."""
        forced = ForceEstimatorMessenger(IWAE_ESTIMATORS[self.estimator])
        try:
            model_trace, guide_trace = traces(keys, param_map, model, guide, args, kwargs, forced, info["plates"])
        except ValueError as e:
            if self.estimator == "dreg" and "reparameterized sampler" in str(e):
                raise ValueError(f"IWAE(estimator='dreg') needs reparameterized guide sites: {e}") from None
            raise
        model_sites, guide_sites = sample_sites(model_trace), sample_sites(guide_trace)
        common = frozenset.intersection(*(_frames(s) for s in model_sites + guide_sites))
        ndim = max((-f.dim for f in common), default=0)
        sizes = {f.dim: f.size for f in common}
        shape = tuple(sizes.get(i, 1) for i in range(-ndim, 0))
        info["scale"] = _common_scale(model_sites + guide_sites)

        def total(sites: list[dict], density: Callable[[dict], jax.Array]) -> jax.Array:
            return sum((_to_elements(density(s), common, shape) for s in sites), jnp.zeros(shape))

        log_p = total(model_sites, log_density)
        out = {"log_w": log_p - total(guide_sites, log_density)}
        if self.estimator == "score":
            out["log_q"] = total(guide_sites, log_density)
        elif self.estimator == "dreg":
            out["path_log_w"] = log_p - total(
                guide_sites, lambda s: path_log_density(s) if is_guide_latent(s) else log_density(s)
            )
            out["log_p_bar"] = total(
                sample_sites(
                    self._model_at_fixed_z(keys, param_map, model, guide_trace, args, kwargs, info["plates"])
                ),
                log_density,
            )
        return out

    @staticmethod
    def _model_at_fixed_z(keys, param_map, model, guide_trace, args, kwargs, plates: dict) -> dict:
        """The model's trace replayed on the guide's samples under ``stop_gradient`` (same plates and
        subsample indices): :math:`\\log p_\\theta(x, \\bot z)` for DReG's model-parameter term."""
        fixed = {
            name: {**site, "value": stop_gradient(site["value"])} if site["type"] == "sample" else site
            for name, site in guide_trace.items()
        }
        if plates:  # the particles' shared minibatch, also for plates of the model only
            model = substitute(model, data=plates)
        replayed = replay(seed(model, keys[1]), fixed)
        return trace(substitute(replayed, data=param_map)).get_trace(*args, **kwargs)

    def loss(
        self, rng_key: jax.Array, param_map: dict, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> jax.Array:
        r"""An estimate of :math:`-\mathcal L_K`, carrying the chosen estimator's gradient."""
        rng_key, plate_key = random.split(rng_key)
        info = {"plates": shared_subsamples(plate_key, param_map, model, guide, args, kwargs)}

        def particle(keys: tuple[jax.Array, jax.Array]) -> dict[str, jax.Array]:
            return self._particle(keys, param_map, model, guide, args, kwargs, info)

        guide_key, model_key = random.split(rng_key)
        keys = (random.split(guide_key, self.num_particles), random.split(model_key, self.num_particles))
        out = self.vectorize_particles_fn(particle, keys)
        log_w, scale = out["log_w"], info["scale"]
        bound = logsumexp(log_w, 0) - math.log(self.num_particles)
        loss = -scale * jnp.sum(bound)
        if not isinstance(loss, jax.core.Tracer) and not bool(jnp.isfinite(loss)):
            raise ValueError("IWAE: the log weights are NaN or infinite; check the model's and guide's densities")
        if self.estimator == "pathwise":
            objective = bound
        elif self.estimator == "score":
            objective = bound + jnp.sum(stop_gradient(vimco_signal(log_w)) * out["log_q"], 0)
        else:
            weights = stop_gradient(jax.nn.softmax(log_w, 0))
            objective = jnp.sum(weights**2 * out["path_log_w"] + (weights - weights**2) * out["log_p_bar"], 0)
        surrogate = -scale * jnp.sum(objective)
        return stop_gradient(loss) + surrogate - stop_gradient(surrogate)
