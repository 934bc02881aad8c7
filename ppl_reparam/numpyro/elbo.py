r"""ELBOs that force one gradient estimator on the guide's latent sites (NumPyro backend).

Both classes estimate :math:`\mathrm{ELBO} = E_q[\log p(x, z) - \log q(z)]` and differentiate the
surrogate loss

.. math::
    \tilde L = \sum_t \ell_t(z)
        + \sum_{s \in S} \log q_s(z_s)\, \bot\big(\textstyle\sum_{t \succeq s} \ell_t(z)\big)

where the :math:`\ell_t` are the loss terms (:math:`\log q_t` of each guide site,
:math:`-\log p_t` of each model site, or closed-form :math:`\mathrm{KL}(q_t \| p_t)` with
``analytic_kl=True``), :math:`\bot` is ``jax.lax.stop_gradient`` and :math:`S` is the set of
score-function sites (Williams 1992; Ranganath, Gerrish and Blei 2014; Schulman et al. 2015).
Reparameterized sites carry gradients through their samples (Kingma and Welling 2014; Rezende, Mohamed
and Wierstra 2014).

The cost of a score-function site ``s`` holds only terms that can depend on its sample
(Rao-Blackwellization as in NumPyro's ``TraceGraph_ELBO``, by trace order and plates rather than by
provenance tracking): every model term, the Monte Carlo :math:`\log q_t` of guide sites sampled at or
after ``s``, every closed-form KL term but its own, and within a shared :func:`numpyro.plate` only the
same plate element. Unlike NumPyro's ``Trace_ELBO``, which silently drops the score-function term,
every non-reparameterized site gets it, discrete and guide-only (auxiliary) sites included, so the
gradient stays unbiased. Subsampling scales the cost, not :math:`\log q_s`. The zero-mean direct term
:math:`\nabla_\phi \log q_s(z_s)` of a score-function site is left out, as in Pyro's and NumPyro's ELBOs.

``analytic_kl=False`` is Kingma and Welling's estimator A (the whole ELBO by Monte Carlo);
``analytic_kl=True`` is their estimator B: :math:`\mathrm{KL}(q_t \| p_t)` in closed form where
:mod:`numpyro.distributions.kl` registers one, :math:`-H(q_t)` where the prior is flat
(``ImproperUniform``), and a ValueError naming the site otherwise (guide-only sites included).

``loss`` returns the loss estimate (-ELBO) whose gradient is the surrogate's, so the classes work with
:class:`numpyro.infer.SVI` and under ``jax.jit``. Outside any JAX transformation a NaN or infinite loss
raises a ValueError naming the site; under ``jit``, ``grad`` or ``vmap`` the values are abstract, so no
check can run and the NaN or inf is returned (SVI's parameters then become NaN): evaluate
``elbo.loss(...)`` once outside ``jit`` to find the site.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from jax import random
from jax.lax import stop_gradient
from numpyro.distributions import Distribution, ImproperUniform
from numpyro.distributions.kl import kl_divergence
from numpyro.handlers import replay, seed, substitute, trace
from numpyro.infer.elbo import ELBO, MultiFrameTensor
from numpyro.util import check_model_guide_match

from .handlers import (
    EstimatorDistribution,
    ForceEstimatorMessenger,
    check_estimator,
    describe,
    is_guide_latent,
    leaf_distribution,
)


@dataclass
class _Term:
    """One additive piece of the loss: a site's scaled log-density or closed-form KL."""

    site: str
    frames: list
    value: jax.Array
    position: float  # guide order of the site; model terms come after every guide site
    own_sample: bool  # whether it depends on the sample of its own site (False for closed forms)
    fn: Distribution  # the distribution it comes from, to name it in errors

    def depends_on(self, position: int) -> bool:
        """Whether this term can depend on the sample of the guide site at ``position``: Monte Carlo
        terms of that site or later ones and every model term; closed forms of every other site (a
        KL term reads the samples of its model parents, wherever the guide draws them)."""
        if self.own_sample:
            return self.position >= position
        return self.position != position


def _sample_sites(tr: dict) -> list[dict]:
    return [site for site in tr.values() if site["type"] == "sample"]


def _is_score_site(site: dict) -> bool:
    """A guide latent drawn without a reparameterized sampler: its gradient needs the score term."""
    return is_guide_latent(site) and not site["fn"].has_rsample


def _log_prob(site: dict) -> jax.Array:
    """The site's unscaled log-density at its value (masks live in the distribution in NumPyro)."""
    if site["intermediates"]:
        return site["fn"].log_prob(site["value"], site["intermediates"])
    return site["fn"].log_prob(site["value"])


def _scaled(site: dict, value: jax.Array) -> jax.Array:
    return value if site["scale"] is None else site["scale"] * value


def _unwrap_forced(fn: Distribution) -> Distribution:
    return fn.base_dist if isinstance(fn, EstimatorDistribution) else fn


def _raise_non_finite(sums: jax.Array, labels: list[tuple[str, str]]) -> None:
    """Raise a ValueError naming the first site whose loss term is NaN or infinite in some particle;
    ``sums`` has shape (particles, terms) and ``labels`` holds each term's site and distribution."""
    bad = [label for label, finite in zip(labels, jnp.all(jnp.isfinite(sums), axis=0).tolist()) if not finite]
    if not bad:
        raise ValueError("the loss is infinite though every site's term is finite (float overflow in the sum)")
    name, fn = bad[0]
    raise ValueError(
        f"site {name!r}: the loss term of {fn} is NaN or infinite (a value outside the support, or "
        "parameters that have diverged). Check its parameters and data, or lower the learning rate."
    )


class _EstimatorELBO(ELBO):
    """Shared machinery: force ``estimator`` on the guide and differentiate the surrogate loss."""

    estimator: str
    can_infer_discrete = True

    def __init__(
        self,
        num_particles: int = 1,
        vectorize_particles: bool | Callable = True,
        analytic_kl: bool = False,
        sites: Iterable[str] | None = None,
    ):
        if isinstance(num_particles, bool) or not isinstance(num_particles, numbers.Integral) or num_particles < 1:
            raise ValueError(f"num_particles must be a positive integer, got {num_particles!r}")
        check_estimator(self.estimator)
        self.analytic_kl = bool(analytic_kl)
        self.sites = None if sites is None else tuple([sites] if isinstance(sites, str) else sites)
        super().__init__(num_particles=int(num_particles), vectorize_particles=vectorize_particles)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_particles={self.num_particles}, "
            f"vectorize_particles={self.vectorize_particles!r}, analytic_kl={self.analytic_kl}, "
            f"sites={self.sites!r})"
        )

    # ----------------------------------------------------------------------------------- traces
    def _traces(
        self,
        keys: tuple[jax.Array, jax.Array],
        param_map: dict,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict,
    ) -> tuple[dict, dict]:
        """Guide and model traces of one particle, seeded with ``keys = (guide_key, model_key)``."""
        forced = ForceEstimatorMessenger(self.estimator, self.sites)

        def forced_guide(*args: Any, **kwargs: Any) -> Any:
            with forced:
                return guide(*args, **kwargs)

        guide_key, model_key = keys
        guide_trace = trace(substitute(seed(forced_guide, guide_key), data=param_map)).get_trace(*args, **kwargs)
        forced.check_sites_seen()
        seeded_model = seed(model, model_key)
        model_trace = trace(substitute(replay(seeded_model, guide_trace), data=param_map)).get_trace(*args, **kwargs)
        check_model_guide_match(model_trace, guide_trace)
        return model_trace, guide_trace

    # ------------------------------------------------------------------------------ loss terms
    def _kl_term(self, name: str, q_site: dict, p_site: dict | None) -> jax.Array:
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
                    "closed form registered with numpyro.distributions.kl and the prior is not flat. "
                    "Use analytic_kl=False (Monte Carlo) or register one with "
                    "@numpyro.distributions.kl.kl_divergence.register."
                ) from None
            try:
                kl = -q.entropy()
            except NotImplementedError:
                raise ValueError(
                    f"site {name!r}: analytic_kl=True under a flat prior needs the entropy of "
                    f"{describe(q)} in closed form, and it has none. Use analytic_kl=False."
                ) from None
        kl = jnp.broadcast_to(kl, jnp.broadcast_shapes(jnp.shape(kl), q.batch_shape))
        return _scaled(q_site, kl)

    def _terms(self, model_trace: dict, guide_trace: dict) -> list[_Term]:
        """The loss as a list of terms, guide sites in sampling order, then model sites."""
        terms, closed_form = [], set()
        for position, site in enumerate(_sample_sites(guide_trace)):
            name, frames = site["name"], site["cond_indep_stack"]
            if self.analytic_kl and is_guide_latent(site):
                kl = self._kl_term(name, site, model_trace.get(name))
                terms.append(_Term(name, frames, kl, position, False, site["fn"]))
                closed_form.add(name)
            else:
                terms.append(_Term(name, frames, _scaled(site, _log_prob(site)), position, True, site["fn"]))
        for site in _sample_sites(model_trace):
            if site["name"] not in closed_form:
                value = -_scaled(site, _log_prob(site))
                terms.append(_Term(site["name"], site["cond_indep_stack"], value, math.inf, True, site["fn"]))
        return terms

    def _score_terms(self, terms: list[_Term], guide_trace: dict) -> jax.Array:
        r""":math:`\sum_{s} \log q_s(z_s) \bot(\mathrm{cost}_s)` over the score-function sites."""
        total = jnp.zeros(())
        for position, site in enumerate(_sample_sites(guide_trace)):
            if not _is_score_site(site):
                continue
            cost = MultiFrameTensor(*((t.frames, t.value) for t in terms if t.depends_on(position)))
            total = total + jnp.sum(_log_prob(site) * stop_gradient(cost.sum_to(site["cond_indep_stack"])))
        return total

    def _particle(
        self,
        keys: tuple[jax.Array, jax.Array],
        param_map: dict,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict,
        labels: list[tuple[str, str]],
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Loss, surrogate loss and the sum of each loss term, for one particle. Fills ``labels`` with
        each term's site and distribution (static, known once traced)."""
        model_trace, guide_trace = self._traces(keys, param_map, model, guide, args, kwargs)
        terms = self._terms(model_trace, guide_trace)
        sums = [jnp.sum(t.value) for t in terms]
        surrogate = self._score_terms(terms, guide_trace)
        for term, value in zip(terms, sums):
            site = guide_trace[term.site] if term.position != math.inf else None
            if site is None or not term.own_sample or not _is_score_site(site):
                surrogate = surrogate + value
        labels[:] = [(t.site, describe(t.fn)) for t in terms]
        return sum(sums, jnp.zeros(())), surrogate, jnp.stack(sums)

    def particle_losses(
        self, rng_key: jax.Array, param_map: dict, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> tuple[jax.Array, jax.Array]:
        """Loss and surrogate loss of each particle, two arrays of shape ``(num_particles,)``.

        The gradient of ``surrogate[i]`` is particle ``i``'s single-sample gradient estimate; the
        ELBO's estimate is their mean. Particles are mapped with ``jax.vmap``
        (``vectorize_particles=True``), ``jax.lax.map`` (False) or the callable given. Raises a
        ValueError naming the site when a loss term is NaN or infinite (outside JAX transformations).
        """
        labels: list[tuple[str, str]] = []

        def particle(keys: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
            return self._particle(keys, param_map, model, guide, args, kwargs, labels)

        # Guide and model keys are split separately, so that XLA drops the model's when the model
        # draws nothing of its own (its latents replayed from the guide): that is most of the cost
        # of many cheap particles.
        guide_key, model_key = random.split(rng_key)
        if self.num_particles == 1:
            losses, surrogates, sums = jax.tree.map(lambda x: x[None], particle((guide_key, model_key)))
        else:
            keys = (random.split(guide_key, self.num_particles), random.split(model_key, self.num_particles))
            losses, surrogates, sums = self.vectorize_particles_fn(particle, keys)
        if not isinstance(losses, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(losses))):
            _raise_non_finite(sums, labels)
        return losses, surrogates

    # ---------------------------------------------------------------------------- public API
    def loss(
        self, rng_key: jax.Array, param_map: dict, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> jax.Array:
        """The loss estimate, -ELBO, from ``num_particles`` samples; its gradient is the surrogate's
        (what :class:`numpyro.infer.SVI` differentiates)."""
        losses, surrogates = self.particle_losses(rng_key, param_map, model, guide, *args, **kwargs)
        surrogate = jnp.mean(surrogates)
        return stop_gradient(jnp.mean(losses)) + surrogate - stop_gradient(surrogate)


class ScoreFunctionELBO(_EstimatorELBO):
    r"""ELBO whose gradient uses the score-function (REINFORCE) estimator at every guide latent.

    .. math:: \nabla_\phi E_q[f] = E_q[f(z)\, \nabla_\phi \log q_\phi(z)]

    (Williams 1992; Paisley, Blei and Jordan 2012; Ranganath, Gerrish and Blei 2014). Unbiased on
    every site, discrete ones and guide-only (auxiliary) sites included. With ``sites=[...]`` only the
    named sites are forced; a site's own ``infer={"estimator": ...}`` is respected unless named.

    :param int num_particles: samples per gradient estimate.
    :param vectorize_particles: map the particles with ``jax.vmap`` (True, NumPyro's default),
        ``jax.lax.map`` (False) or a callable ``(fn, keys) -> outputs``, as in NumPyro's ELBOs.
    :param bool analytic_kl: closed-form KL / entropy (estimator B) instead of Monte Carlo
        (estimator A); see :mod:`ppl_reparam.numpyro.elbo`.
    :param sites: names of the guide sites to force (default: all).
    """

    estimator = "score"


class PathwiseELBO(_EstimatorELBO):
    r"""ELBO whose gradient uses the pathwise (reparameterization) estimator at every guide latent.

    .. math:: \nabla_\phi E_{q_\phi}[f] = E_{\epsilon}[\nabla_\phi f(g_\phi(\epsilon))],
       \quad z = g_\phi(\epsilon)

    (Kingma and Welling 2014; Rezende, Mohamed and Wierstra 2014; implicit reparameterization for
    Gamma, Beta, Dirichlet: Figurnov, Mohamed and Mnih 2018). A site whose family has no
    reparameterized sampler (e.g. Bernoulli, Categorical) raises a ValueError naming it; there is no
    silent fallback to the score function. Options as in :class:`ScoreFunctionELBO`.
    """

    estimator = "pathwise"
