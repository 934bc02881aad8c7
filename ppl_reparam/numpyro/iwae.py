r"""The importance-weighted bound and its pathwise, VIMCO and DReG gradients (NumPyro backend).

The bound, the estimators and their references are in :mod:`ppl_reparam.iwae`; this module builds the
log weights from NumPyro's traces. The K particles are mapped by ``jax.vmap`` (or ``jax.lax.map`` with
``vectorize_particles=False``), each particle's log densities summed to the plates that every site
shares, and the bound taken across them; they share the minibatch (one draw of each subsampled plate's
indices), since the bound compares them element by element. DReG replays the model on the guide's
samples under ``stop_gradient``, on the same minibatch. ``loss`` returns :math:`-\mathcal L_K`'s
estimate carrying the chosen estimator's gradient, so :class:`IWAE` works with
:class:`numpyro.infer.SVI`, under ``jax.jit`` and with :func:`~ppl_reparam.numpyro.gradient_variance`;
a NaN or infinite estimate is a ValueError only outside JAX transformations, where it is concrete.
"""

from __future__ import annotations

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

from .. import iwae as iw
from .. import surrogate as sg
from .elbo import OPS as ARRAY_OPS
from .elbo import log_density, path_log_density, sample_sites, shared_subsamples, traces
from .handlers import ForceEstimatorMessenger, is_guide_latent

OPS = iw.IWAEOps(ARRAY_OPS, logsumexp=logsumexp, softmax=jax.nn.softmax, eye=lambda k, like: jnp.eye(k, dtype=bool))
""":class:`ppl_reparam.iwae.IWAEOps` for JAX."""


def _frames(site: dict) -> frozenset:
    return frozenset(site["cond_indep_stack"])


def _scale_range(site: dict) -> tuple[float, float]:
    scale = 1.0 if site["scale"] is None else site["scale"]
    if isinstance(scale, jax.core.Tracer):
        raise ValueError("IWAE needs concrete subsampling scales, got a traced one (numpyro.handlers.scale?)")
    scale = np.asarray(scale, dtype=np.float64)
    return float(scale.min()), float(scale.max())


def vimco_signal(log_w: jax.Array) -> jax.Array:
    """:func:`ppl_reparam.iwae.vimco_signal` on JAX: VIMCO's leave-one-out signal of the K samples
    along axis 0."""
    return iw.vimco_signal(log_w, OPS)


class IWAE(ELBO):
    r"""Importance-weighted ELBO :math:`\mathcal L_K` with ``num_particles = K`` samples and the
    gradient ``estimator`` ``"pathwise"``, ``"score"`` (VIMCO) or ``"dreg"``; see
    :mod:`ppl_reparam.iwae`. Usable as ``SVI(model, guide, optim, loss=IWAE(...))``, also under
    ``jax.jit``; ``vectorize_particles=False`` maps the particles with ``jax.lax.map`` (less memory).
    """

    can_infer_discrete = True

    def __init__(self, num_particles: int = 5, estimator: str = "pathwise", vectorize_particles: bool = True):
        iw.check_options(num_particles, estimator)
        super().__init__(num_particles=num_particles, vectorize_particles=vectorize_particles)
        self.estimator = estimator

    def __repr__(self) -> str:
        return f"IWAE(num_particles={self.num_particles}, estimator={self.estimator!r})"

    def __eq__(self, other: object) -> bool:  # equal options: reuse compiled code (see ppl_reparam.numpyro.elbo)
        return type(other) is type(self) and other._config() == self._config()

    def __hash__(self) -> int:
        return hash(self._config())

    def _config(self) -> tuple:
        return type(self), self.num_particles, self.estimator, self.vectorize_particles

    def _particle(self, keys, param_map, model, guide, args, kwargs, info: dict) -> dict[str, jax.Array]:
        """One particle's log weight per shared-plate element, and the terms its estimator needs
        (:func:`ppl_reparam.iwae.surrogate_objective`)."""
        forced = ForceEstimatorMessenger(iw.IWAE_ESTIMATORS[self.estimator])
        try:
            model_trace, guide_trace = traces(keys, param_map, model, guide, args, kwargs, forced, info["plates"])
        except ValueError as e:
            if self.estimator == "dreg" and "reparameterized sampler" in str(e):
                raise iw.dreg_needs_rsample(e) from None
            raise
        model_sites, guide_sites = sample_sites(model_trace), sample_sites(guide_trace)
        common = frozenset.intersection(*(_frames(s) for s in model_sites + guide_sites))
        # One entry per element of the shared plates, dims counted from the right as the plates' (the
        # particle dim is vmap's, outside the trace); 1 for a dim of no shared plate.
        sizes = {f.dim: f.size for f in common}
        shape = tuple(sizes.get(i, 1) for i in range(min(sizes, default=0), 0))
        info["scale"] = iw.common_scale(_scale_range(s) for s in model_sites + guide_sites)

        def total(sites: list[dict], density: Callable[[dict], jax.Array]) -> jax.Array:
            return sum((sg.reduce_to(density(s), shape, ARRAY_OPS) for s in sites), jnp.zeros(shape))

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
        bound = iw.bound(log_w, OPS)
        loss = -scale * jnp.sum(bound)
        if not isinstance(loss, jax.core.Tracer):  # under jit, grad or vmap no value to check
            iw.check_finite(float(loss))
        surrogate = -scale * jnp.sum(iw.surrogate_objective(self.estimator, log_w, bound, out, OPS))
        return stop_gradient(loss) + surrogate - stop_gradient(surrogate)
