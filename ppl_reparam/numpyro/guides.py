r"""A mean-field guide over native families, for any NumPyro model (NumPyro backend).

:class:`MeanField` is the counterpart of :class:`ppl_reparam.pyro.MeanField`: one factor per latent site
in a family with the site's own support (Normal; LogNormal or Gamma; Beta; Dirichlet), the gradient
estimator chosen per site. The rules (families, initialisation, errors, options) are
:mod:`ppl_reparam.meanfield`'s, shared with the Pyro guide; here are NumPyro's pieces.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax import random
from numpyro import handlers
from numpyro.distributions import Distribution, constraints
from numpyro.distributions.util import periodic_repeat
from numpyro.infer.autoguide import AutoGuide
from numpyro.infer.initialization import init_to_median

from ..meanfield import ArrayOps, Family, MeanFieldRules, marginal_quantiles
from .handlers import apply_estimator

__all__ = ["MeanField", "init_to_prior_mean", "support_kind"]


def _is_constant(value: Any, target: float) -> bool:
    return bool(jnp.all(jnp.asarray(value) == target))


def support_kind(support: constraints.Constraint) -> str | None:
    """``"real"``, ``"positive"`` (> 0 or >= 0), ``"unit_interval"`` ([0, 1], open or closed) or
    ``"simplex"`` for a site's support, looking through ``independent``; None for any other (and
    for every discrete support)."""
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    if support.is_discrete:
        return None
    if isinstance(support, type(constraints.real)):
        return "real"
    if isinstance(support, type(constraints.greater_than(0.0))):  # > or >= (a subclass), softplus_positive
        return "positive" if _is_constant(support.lower_bound, 0) else None
    if isinstance(support, type(constraints.interval(0.0, 1.0))):  # closed, open, unit
        unit = _is_constant(support.lower_bound, 0) and _is_constant(support.upper_bound, 1)
        return "unit_interval" if unit else None
    if isinstance(support, type(constraints.simplex)):
        return "simplex"
    return None


def init_to_prior_mean(site: dict | None = None) -> jax.Array | None:
    """NumPyro's ``init_to_mean``, but it also falls back to ``init_to_median`` where the prior mean is
    infinite, e.g. a HalfCauchy, not only where it is undefined. Use as ``init_loc_fn``."""
    if site is None:
        return init_to_prior_mean
    if site["type"] != "sample" or site["is_observed"] or site["fn"].support.is_discrete:
        return None
    if site["value"] is not None:
        return site["value"]
    try:
        mean = site["fn"].mean
    except NotImplementedError:
        return init_to_median(site)
    sample_shape = site["kwargs"].get("sample_shape") or ()
    mean = jnp.broadcast_to(mean, tuple(sample_shape) + site["fn"].shape())
    if isinstance(mean, jax.core.Tracer) or not bool(jnp.all(jnp.isfinite(mean))):
        return jnp.where(jnp.isfinite(mean), mean, init_to_median(site))
    return mean


class _JaxRules(MeanFieldRules):
    """The rules of :mod:`ppl_reparam.meanfield` on JAX arrays and NumPyro constraints."""

    ops = ArrayOps(jnp.log, jnp.log1p, jnp.sqrt, jnp.where, jnp.minimum, lambda x: jnp.mean(x, -1, keepdims=True))
    support_kind = staticmethod(support_kind)
    block = "numpyro.handlers.block"
    enumeration = "config_enumerate with TraceEnum_ELBO, which needs funsor"


class MeanField(AutoGuide):
    r"""The NumPyro twin of :class:`ppl_reparam.pyro.MeanField`, for any NumPyro model: one independent
    factor per latent site, in a family on the site's own support, chosen, initialised and checked by
    the rules of :mod:`ppl_reparam.meanfield` (the same parameter names and initial values).

    Unlike NumPyro's ``AutoNormal``, which samples a Normal on the unconstrained space and transforms
    it, each site is drawn from a family with the site's own support, so the estimators can be
    compared on it: the pathwise gradient of Gamma, Beta and Dirichlet samples is the implicit
    reparameterization gradient (Figurnov, Mohamed and Mnih, NeurIPS 2018). There are no guide-only
    sites.

    Plates and subsampling as in NumPyro's AutoGuides: a site's parameters have the full size of its
    plates, and inside a subsampled plate the guide uses the rows of the subsample's indices
    (``numpyro.param(..., event_dim=...)`` subsamples them).

    Parameters are NumPyro params named ``"{prefix}.params.{site}.{param}"``, the names the Pyro
    guide has in Pyro's param store (``"MeanField.params.mu.loc"`` with the default prefix).

    :param model: the NumPyro model; its latent sites are found by running it once, on the first call.
    :param families: ``{site: family name}``, see :class:`~ppl_reparam.meanfield.MeanFieldRules`.
    :param estimators: ``{site: "score" | "pathwise"}``, see :class:`~ppl_reparam.meanfield.MeanFieldRules`;
        :func:`~ppl_reparam.numpyro.force_estimator` and this package's NumPyro ELBOs respect them.
    :param prefix: first part of the parameters' names.
    :param init_loc_fn: per-site initial mean, a NumPyro init strategy (default: the prior mean,
        :func:`init_to_prior_mean`).
    :param init_scale: see :class:`~ppl_reparam.meanfield.MeanFieldRules`.
    :param create_plates: as for NumPyro's AutoGuides (plates with ``subsample_size=...``).

    Calling the guide returns ``{site: sample}``; :meth:`distribution` gives one site's factor.
    """

    def __init__(
        self,
        model: Callable,
        families: Mapping[str, str] | None = None,
        estimators: Mapping[str, str] | None = None,
        *,
        prefix: str = "MeanField",
        init_loc_fn: Callable = init_to_prior_mean,
        init_scale: float = 0.1,
        create_plates: Callable | None = None,
    ):
        self.rules = _JaxRules(families or {}, estimators or {}, init_scale)
        self._family: dict[str, Family] = {}
        self._init_values: dict[str, tuple[jax.Array, ...]] = {}
        super().__init__(model, prefix=prefix, init_loc_fn=init_loc_fn, create_plates=create_plates)

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        """Run the model once with its latent sites at ``init_loc_fn``'s values; choose each site's
        family and its initial parameters (full size along subsampled plates)."""
        rng_key = numpyro.prng_key()

        def init_loc(site: dict) -> jax.Array | None:
            if site["type"] == "sample" and not site["is_observed"]:
                self.rules.choose_family(site["name"], site["fn"].support)  # fail fast, before drawing anything
            return self.init_loc_fn(site)

        with handlers.block():
            seeded = handlers.seed(self.model, random.PRNGKey(0) if rng_key is None else rng_key)
            initialised = handlers.substitute(seeded, substitute_fn=init_loc)
            self.prototype_trace = handlers.trace(initialised).get_trace(*args, **kwargs)
        self._prototype_frames, self._prototype_frame_full_sizes = {}, {}
        for name, site in self.prototype_trace.items():
            if site["type"] == "plate":
                self._prototype_frame_full_sizes[name] = site["args"][0]
            elif site["type"] == "sample" and not site["is_observed"]:
                for frame in site["cond_indep_stack"]:
                    self._prototype_frames[frame.name] = frame
        latent = self._latent_names()
        self.rules.check_latent(latent)
        for name in latent:
            site = self.prototype_trace[name]
            fn = site["fn"]
            family = self._family[name] = self.rules.choose_family(name, fn.support)
            repeats = tuple(
                (self._prototype_frame_full_sizes[frame.name], frame.dim - fn.event_dim)
                for frame in site["cond_indep_stack"]
                if self._prototype_frame_full_sizes[frame.name] != frame.size
            )

            def initial(fn: Distribution, mean: jax.Array, family: Family = family, repeats: tuple = repeats):
                try:
                    prior_sd = jnp.broadcast_to(jnp.sqrt(fn.variance), jnp.shape(mean))
                except NotImplementedError:
                    prior_sd = jnp.full_like(mean, jnp.nan)
                values = self.rules.initial(family, mean, prior_sd)
                for full_size, dim in repeats:
                    values = [periodic_repeat(v, full_size, dim) for v in values]
                return tuple(values)

            mean = jnp.asarray(site["value"])
            try:  # one compiled computation per site rather than a dozen small eager ones (much faster)
                self._init_values[name] = jax.jit(initial)(fn, mean)
            except (TypeError, NotImplementedError):  # a distribution that is not a pytree
                self._init_values[name] = initial(fn, mean)

    def _latent_names(self) -> list[str]:
        return [
            name for name, site in self.prototype_trace.items() if site["type"] == "sample" and not site["is_observed"]
        ]

    def _param_name(self, site: str, param: str) -> str:
        return f"{self.prefix}.params.{site}.{param}"

    def _factor(self, name: str, params: Mapping[str, jax.Array]) -> Distribution:
        family = self._family[name]
        fn = getattr(dist, family.distribution)(*family.arguments(*(params[param] for param, _ in family.params)))
        extra = self.prototype_trace[name]["fn"].event_dim - family.event_dim
        return fn.to_event(extra) if extra else fn

    def distribution(self, name: str, params: Mapping[str, jax.Array] | None = None) -> Distribution:
        """The factor :math:`q(z_s)` of site ``name``, with full-size parameters (no plates), at the
        constrained ``params`` (as ``svi.get_params(state)`` returns them; default: the initial
        values), e.g. ``guide.distribution("theta", params).mean``. Available after the first call."""
        if name not in self._family:
            raise KeyError(f"MeanField has no site {name!r} (sites: {sorted(self._family)}; call the guide first)")
        return self._factor(name, self._site_params(name, params or {}))

    def _site_params(self, name: str, params: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Site ``name``'s parameters by their short names: from ``params``, else the initial values."""
        return {
            param: params.get(self._param_name(name, param), init)
            for (param, _), init in zip(self._family[name].params, self._init_values[name])
        }

    def quantiles(self, params: Mapping[str, jax.Array], quantiles: Sequence[float]) -> dict[str, jax.Array]:
        """``{site: quantiles}`` at the constrained ``params`` (``svi.get_params(state)``), each of
        shape ``(len(quantiles), *site shape)``: every element's marginal quantiles under its factor
        (:func:`~ppl_reparam.meanfield.marginal_quantiles`), as NumPyro's AutoGuides give them.
        Available after the guide's first call."""
        if self.prototype_trace is None:
            raise ValueError("MeanField has not seen the model yet: call the guide (or svi.init) first")
        result = {}
        for name, family in self._family.items():
            values = self._site_params(name, params)
            arguments = family.arguments(*(values[param] for param, _ in family.params))
            values = marginal_quantiles(family, [np.asarray(a) for a in arguments], quantiles)
            result[name] = jnp.asarray(values, dtype=jnp.result_type(arguments[0]))
        return result

    def median(self, params: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """``{site: median}`` at ``params``: every element's marginal median under its factor (for a
        Dirichlet site, of its Beta marginals, which need not sum to one)."""
        return {name: values[0] for name, values in self.quantiles(params, [0.5]).items()}

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, jax.Array]:
        """Sample every latent site of the model; arguments are the model's. Returns ``{site: value}``."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        estimators = self.rules.estimators
        result = {}
        for name in self._latent_names():
            site = self.prototype_trace[name]
            family = self._family[name]
            with ExitStack() as stack:
                for frame in site["cond_indep_stack"]:
                    stack.enter_context(plates[frame.name])
                params = {
                    param: numpyro.param(
                        self._param_name(name, param),
                        init,
                        constraint=getattr(constraints, kind),
                        event_dim=site["fn"].event_dim,
                    )
                    for (param, kind), init in zip(family.params, self._init_values[name])
                }
                fn, infer = self._factor(name, params), {}
                if name in estimators:
                    fn = apply_estimator(name, fn, estimators[name])
                    infer = {"estimator": estimators[name]}
                result[name] = numpyro.sample(name, fn, infer=infer)
        return result

    def sample_posterior(
        self, rng_key: jax.Array, params: Mapping[str, jax.Array], *args: Any, sample_shape: tuple = (), **kwargs: Any
    ) -> dict[str, jax.Array]:
        """Draws from every factor at ``params``, full size along plates, of shape ``sample_shape``
        plus the site's."""
        if self.prototype_trace is None:
            with handlers.seed(rng_seed=rng_key):
                self._setup_prototype(*args, **kwargs)
        names = self._latent_names()
        keys = random.split(rng_key, len(names))
        return {name: self.distribution(name, params).sample(key, sample_shape) for name, key in zip(names, keys)}
