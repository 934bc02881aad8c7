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
gradient stays unbiased. Subsampling scales the cost, not :math:`\log q_s`. Each particle draws its
own subsample, as in NumPyro's ELBOs, except with a leave-one-out baseline, whose particles share one
(as Pyro's vectorized particles do) so that it compares them element by element. The zero-mean direct
term :math:`\nabla_\phi \log q_s(z_s)` of a score-function site is left out, as in Pyro's and NumPyro's
ELBOs.

``analytic_kl=False`` is Kingma and Welling's estimator A (the whole ELBO by Monte Carlo);
``analytic_kl=True`` is their estimator B: :math:`\mathrm{KL}(q_t \| p_t)` in closed form where
:mod:`numpyro.distributions.kl` registers one, :math:`-H(q_t)` where the prior is flat
(``ImproperUniform``), and a ValueError naming the site otherwise (guide-only sites included).

Baselines (``baseline=``, :mod:`ppl_reparam.numpyro.baselines`) replace the cost :math:`c_s` of a
score-function site by :math:`c_s - \sigma_s b_s`, with :math:`\sigma_s` the site's scale and
:math:`b_s` the baseline's prediction of the *unscaled* cost :math:`c_s / \sigma_s`, under
``stop_gradient``. ``stl=True`` (sticking the landing; Roeder, Wu and Duvenaud 2017) keeps only the
path derivative of the Monte Carlo :math:`\log q` of reparameterized sites,
:math:`\log q_\phi(z) - \log q_\phi(\bot z) + \bot \log q_\phi(\bot z)`; it needs
``analytic_kl=False``.

``loss`` returns the loss estimate (-ELBO) whose gradient is the surrogate's, so the classes work with
:class:`numpyro.infer.SVI` and under ``jax.jit``. Outside any JAX transformation a NaN or infinite loss
raises a ValueError naming the site; under ``jit``, ``grad`` or ``vmap`` the values are abstract, so no
check can run and the NaN or inf is returned (SVI's parameters then become NaN): evaluate
``elbo.loss(...)`` once outside ``jit`` to find the site. ``loss_with_mutable_state``, which
:class:`numpyro.infer.SVI` calls when the model or guide has ``numpyro.mutable`` sites, is a training
step: it also returns the stateful baseline's updated state (and other mutable sites' values, from the
first particle); ``loss`` never updates anything.
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

from ..forcing import check_estimator
from .baselines import STATE_PREFIX, Baseline, Context, make_baseline, subsampled_frames
from .handlers import (
    EstimatorDistribution,
    ForceEstimatorMessenger,
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


def _path_log_prob(site: dict) -> jax.Array:
    r"""The path derivative of a site's unscaled log-density, value-equal to it:
    :math:`\log q_\phi(z) - \log q_\phi(\bot z) + \bot \log q_\phi(\bot z)` (sticking the landing)."""
    at_fixed_z = site["fn"].log_prob(stop_gradient(site["value"]))
    return _log_prob(site) - at_fixed_z + stop_gradient(at_fixed_z)


def _reduce_to(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Sum ``x`` over the dims that broadcast against ``shape`` and broadcast it to ``shape``, so that
    ``sum(y * x) == sum(y * _reduce_to(x, shape))`` for ``y`` of that shape."""
    x = jnp.asarray(x)
    extra = x.ndim - len(shape)
    if extra > 0:
        x = x.sum(tuple(range(extra)))
    offset = len(shape) - x.ndim
    axes = tuple(i for i in range(x.ndim) if shape[offset + i] == 1 and x.shape[i] != 1)
    if axes:
        x = x.sum(axes, keepdims=True)
    return jnp.broadcast_to(x, shape)


def traces(
    keys: tuple[jax.Array, jax.Array],
    param_map: dict,
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    forced: ForceEstimatorMessenger,
    plates: dict | None = None,
) -> tuple[dict, dict]:
    """Guide and model traces of one particle, seeded with ``keys = (guide_key, model_key)``, the guide
    run under ``forced``; ``plates`` fixes the subsample indices of the plates it names
    (:func:`shared_subsamples`)."""
    if plates:
        model, guide = substitute(model, data=plates), substitute(guide, data=plates)

    def forced_guide(*args: Any, **kwargs: Any) -> Any:
        with forced:
            return guide(*args, **kwargs)

    guide_key, model_key = keys
    guide_trace = trace(substitute(seed(forced_guide, guide_key), data=param_map)).get_trace(*args, **kwargs)
    forced.choices.check_sites_seen()
    seeded_model = seed(model, model_key)
    model_trace = trace(substitute(replay(seeded_model, guide_trace), data=param_map)).get_trace(*args, **kwargs)
    check_model_guide_match(model_trace, guide_trace)
    return model_trace, guide_trace


def shared_subsamples(
    rng_key: jax.Array, param_map: dict, model: Callable, guide: Callable, args: tuple, kwargs: dict
) -> dict[str, jax.Array]:
    """One draw of the subsample indices of every subsampled plate of the guide and the model, for
    particles that must share a minibatch (an importance-weighted bound, a leave-one-out baseline),
    as Pyro's vectorized particles do; ``{}`` when nothing is subsampled."""
    guide_key, model_key = random.split(rng_key)
    guide_trace = trace(substitute(seed(guide, guide_key), data=param_map)).get_trace(*args, **kwargs)
    model = substitute(replay(seed(model, model_key), guide_trace), data=param_map)
    model_trace = trace(model).get_trace(*args, **kwargs)
    return {
        name: site["value"]
        for tr in (guide_trace, model_trace)
        for name, site in tr.items()
        if name in subsampled_frames(tr)
    }


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
        baseline: str | float | Baseline | None = None,
        stl: bool = False,
    ):
        if isinstance(num_particles, bool) or not isinstance(num_particles, numbers.Integral) or num_particles < 1:
            raise ValueError(f"num_particles must be a positive integer, got {num_particles!r}")
        check_estimator(self.estimator)
        self.analytic_kl = bool(analytic_kl)
        self.sites = None if sites is None else tuple([sites] if isinstance(sites, str) else sites)
        self.baseline = make_baseline(baseline)
        self.stl = bool(stl)
        if self.baseline is not None and self.baseline.needs_particles and num_particles < 2:
            raise ValueError(
                f"baseline {self.baseline!r} (leave-one-out) compares particles: it needs "
                f"num_particles >= 2, got num_particles={num_particles}"
            )
        if self.stl and self.analytic_kl:
            raise ValueError(
                "stl=True (sticking the landing) drops the score term of the Monte Carlo log q, and "
                "analytic_kl=True has no such term; use one or the other"
            )
        super().__init__(num_particles=int(num_particles), vectorize_particles=vectorize_particles)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_particles={self.num_particles}, "
            f"vectorize_particles={self.vectorize_particles!r}, analytic_kl={self.analytic_kl}, "
            f"sites={self.sites!r}, baseline={self.baseline!r}, stl={self.stl})"
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
        plates: dict | None = None,
    ) -> tuple[dict, dict]:
        """Guide and model traces of one particle, seeded with ``keys = (guide_key, model_key)``."""
        forced = ForceEstimatorMessenger(self.estimator, self.sites)
        return traces(keys, param_map, model, guide, args, kwargs, forced, plates)

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

    def _score_parts(self, terms: list[_Term], guide_trace: dict, info: dict) -> dict:
        """For each score-function site: its log q, its unscaled cost per element of log q (under
        ``stop_gradient``) and its scale, each of log q's shape; ``info["score_sites"]`` gets each
        site's name and the dims a baseline averages over (static)."""
        parts, sites = {}, []
        subsampled = subsampled_frames(guide_trace)
        for position, site in enumerate(_sample_sites(guide_trace)):
            if not _is_score_site(site):
                continue
            name, frames = site["name"], site["cond_indep_stack"]
            if self.baseline.stateful and STATE_PREFIX + name not in guide_trace:
                raise ValueError(
                    f"{self.baseline!r} keeps its state in numpyro.mutable sites that the guide declares, "
                    f"and this guide declares none for site {name!r}: train with "
                    "SVI(model, elbo.baseline.with_state(guide), optim, loss=elbo), and measure with "
                    "numpyro.handlers.substitute(that guide, data=svi_state.mutable_state)"
                )
            log_q = _log_prob(site)
            shape = jnp.shape(log_q)
            cost = MultiFrameTensor(*((t.frames, t.value) for t in terms if t.depends_on(position)))
            cost = _reduce_to(stop_gradient(cost.sum_to(frames)), shape)
            scale = jnp.broadcast_to(jnp.asarray(1.0 if site["scale"] is None else site["scale"], cost.dtype), shape)
            unscaled = jnp.where(scale != 0, cost / jnp.where(scale != 0, scale, 1.0), 0.0)
            parts[name] = (log_q, unscaled, stop_gradient(scale))
            reduce = tuple(f.dim for f in frames if f.name in subsampled and -f.dim <= len(shape))
            sites.append((name, (0, *reduce)))
        info["score_sites"] = sites
        return parts

    def _particle(
        self,
        keys: tuple[jax.Array, jax.Array],
        param_map: dict,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict,
        info: dict,
    ) -> dict:
        """One particle: its loss, its surrogate loss (without the score terms of baselined sites),
        the sum of each loss term, the values of the mutable sites and, with a baseline, the parts
        of the score terms. Fills ``info["labels"]`` with each term's site and distribution (static,
        known once traced)."""
        model_trace, guide_trace = self._traces(keys, param_map, model, guide, args, kwargs, info.get("plates"))
        terms = self._terms(model_trace, guide_trace)
        sums = [jnp.sum(t.value) for t in terms]
        surrogate = jnp.zeros(())
        for term, value in zip(terms, sums):
            site = guide_trace[term.site] if term.position != math.inf else None
            if site is not None and term.own_sample and _is_score_site(site):
                continue  # zero-mean direct term of a score-function site, left out
            if site is not None and term.own_sample and self.stl and is_guide_latent(site):
                value = jnp.sum(_scaled(site, _path_log_prob(site)))
            surrogate = surrogate + value
        out = {"loss": sum(sums, jnp.zeros(())), "sums": jnp.stack(sums)}
        if self.baseline is None:
            out["surrogate"] = surrogate + self._score_terms(terms, guide_trace)
        else:
            out["surrogate"] = surrogate
            out["score"] = self._score_parts(terms, guide_trace, info)
        out["mutable"] = {
            name: site["value"]
            for tr in (guide_trace, model_trace)
            for name, site in tr.items()
            if site["type"] == "mutable"
        }
        info["labels"] = [(t.site, describe(t.fn)) for t in terms]
        return out

    def _run(
        self,
        rng_key: jax.Array,
        param_map: dict,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict,
        update: bool,
    ) -> tuple[jax.Array, jax.Array, dict]:
        """Per-particle losses and surrogates, and the mutable state (updated by the baseline when
        ``update``, i.e. in a training step)."""
        info: dict = {}
        if self.num_particles > 1 and self.baseline is not None and self.baseline.needs_particles:
            # leave-one-out compares the particles element by element: they share the minibatch
            rng_key, plate_key = random.split(rng_key)
            info["plates"] = shared_subsamples(plate_key, param_map, model, guide, args, kwargs)

        def particle(keys: tuple[jax.Array, jax.Array]) -> dict:
            return self._particle(keys, param_map, model, guide, args, kwargs, info)

        # Guide and model keys are split separately, so that XLA drops the model's when the model
        # draws nothing of its own (its latents replayed from the guide): that is most of the cost
        # of many cheap particles.
        guide_key, model_key = random.split(rng_key)
        if self.num_particles == 1:
            out = jax.tree.map(lambda x: x[None], particle((guide_key, model_key)))
        else:
            keys = (random.split(guide_key, self.num_particles), random.split(model_key, self.num_particles))
            out = self.vectorize_particles_fn(particle, keys)
        losses, surrogates = out["loss"], out["surrogate"]
        if not isinstance(losses, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(losses))):
            _raise_non_finite(out["sums"], info["labels"])
        state = jax.tree.map(lambda x: x[0], out["mutable"])
        for name, reduce in info.get("score_sites", []):
            log_q, cost, scale = out["score"][name]
            ctx = Context(0, reduce, args, kwargs)
            site_state = state.get(STATE_PREFIX + name)
            b = stop_gradient(self.baseline.value(name, cost, site_state, ctx))
            score = log_q * stop_gradient(scale * (cost - b))
            surrogates = surrogates + score.reshape(score.shape[0], -1).sum(1)
            if update and self.baseline.stateful:
                state[STATE_PREFIX + name] = self.baseline.update(name, cost, site_state, ctx)
        return losses, surrogates, state

    def particle_losses(
        self, rng_key: jax.Array, param_map: dict, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> tuple[jax.Array, jax.Array]:
        """Loss and surrogate loss of each particle, two arrays of shape ``(num_particles,)``.

        The gradient of ``surrogate[i]`` is particle ``i``'s single-sample gradient estimate; the
        ELBO's estimate is their mean. Particles are mapped with ``jax.vmap``
        (``vectorize_particles=True``), ``jax.lax.map`` (False) or the callable given. Raises a
        ValueError naming the site when a loss term is NaN or infinite (outside JAX transformations).
        """
        losses, surrogates, _ = self._run(rng_key, param_map, model, guide, args, kwargs, update=False)
        return losses, surrogates

    # ---------------------------------------------------------------------------- public API
    def loss(
        self, rng_key: jax.Array, param_map: dict, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> jax.Array:
        """The loss estimate, -ELBO, from ``num_particles`` samples; its gradient is the surrogate's
        (what :class:`numpyro.infer.SVI` differentiates). Never updates a baseline."""
        losses, surrogates, _ = self._run(rng_key, param_map, model, guide, args, kwargs, update=False)
        return _with_gradient_of(losses, surrogates)

    def loss_with_mutable_state(
        self, rng_key: jax.Array, param_map: dict, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> dict:
        """A training step's loss, as :meth:`loss`, and the mutable state after it: a stateful
        baseline's state updated from this step's costs, other ``numpyro.mutable`` sites' values from
        the first particle. :class:`numpyro.infer.SVI` calls it when the model or guide declares
        mutable sites (:meth:`~ppl_reparam.numpyro.baselines.Baseline.with_state`)."""
        losses, surrogates, state = self._run(rng_key, param_map, model, guide, args, kwargs, update=True)
        return {"loss": _with_gradient_of(losses, surrogates), "mutable_state": state or None}


def _with_gradient_of(losses: jax.Array, surrogates: jax.Array) -> jax.Array:
    """The mean loss, carrying the mean surrogate's gradient."""
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
    :param baseline: a control variate for the score-function sites: a
        :class:`~ppl_reparam.numpyro.baselines.Baseline`, a number (constant), ``"moving_average"``,
        ``"rloo"`` (needs ``num_particles >= 2``) or ``"learned"``; see
        :mod:`ppl_reparam.numpyro.baselines` (stateful ones need the guide wrapped by ``with_state``).
    :param bool stl: sticking the landing at reparameterized sites (needs ``analytic_kl=False``).
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
