r"""ELBOs that force a gradient estimator on the guide's latent sites (NumPyro backend).

The score-function and pathwise classes estimate :math:`\mathrm{ELBO} = E_q[\log p(x, z) - \log q(z)]`
and differentiate the surrogate loss of :mod:`ppl_reparam.surrogate`,

.. math::
    \tilde L = \sum_t g_t + \sum_{s \in S} \log q_s(z_s)\, \bot\big(c_s - \sigma_s b_s\big),

whose score-function sites :math:`s \in S` (guide latents drawn without a reparameterized sampler)
have the cost :math:`c_s` of exactly the terms that depend on their sample, within a plate element by
element (Schulman et al. 2015; Williams 1992; Ranganath, Gerrish and Blei 2014). The dependencies come
from provenance tracking on the jaxpr (``numpyro.ops.provenance``, as NumPyro's ``TraceGraph_ELBO``),
evaluated once when the loss is traced, so under ``jit`` they cost nothing at run time. With every site
forced to the score function the gradient is ``TraceGraph_ELBO``'s on the same key, but for two
deliberate differences that keep it unbiased, as in Pyro: under subsampling the scale multiplies the
cost and not :math:`\log q_s` too (pyro #555), and :math:`\log q_s` is unmasked (a masked element's
score still multiplies unmasked terms downstream of it). Unlike NumPyro's ``Trace_ELBO``, which drops
the score-function term, every non-reparameterized site gets it, discrete and guide-only (auxiliary)
sites included. Reparameterized sites carry gradients through their samples (Kingma and Welling 2014;
Rezende, Mohamed and Wierstra 2014). Each particle draws its own subsample, as in NumPyro's ELBOs,
except with a leave-one-out baseline, whose particles share one minibatch (as Pyro's vectorized
particles do) so that it compares them element by element. One particle is seeded exactly as in
NumPyro's ELBOs, so its draws are theirs; several take their guide and model keys from separate splits
(cheaper where the model draws nothing of its own).

``analytic_kl=False`` is Kingma and Welling's estimator A (the whole ELBO by Monte Carlo);
``analytic_kl=True`` is their estimator B: :math:`\mathrm{KL}(q_t \| p_t)` in closed form where
:mod:`numpyro.distributions.kl` registers one, :math:`-H(q_t)` where the prior is flat
(``ImproperUniform``), and elsewhere (guide-only sites, as in AutoGuides; pairs with no registered KL)
the Monte Carlo terms, with a warning naming the site, as NumPyro's ``TraceMeanField_ELBO`` does. The
closed form is exact when the guide is mean field; a site whose prior depends on its own sample through
sites the guide draws after it (found by provenance over every latent) is a ValueError naming it.

Baselines (``baseline=``, :mod:`ppl_reparam.numpyro.baselines`) predict the unscaled cost under
``stop_gradient``. ``stl=True`` (sticking the landing; Roeder, Wu and Duvenaud 2017) keeps only the
path derivative of the Monte Carlo :math:`\log q` of reparameterized sites; it needs
``analytic_kl=False``.

``loss`` returns the loss estimate (-ELBO) whose gradient is the surrogate's, so the classes work with
:class:`numpyro.infer.SVI` and under ``jax.jit``. Outside any JAX transformation a NaN or infinite loss
raises a ValueError naming the site; under ``jit``, ``grad`` or ``vmap`` the values are abstract, so no
check can run and the NaN or inf is returned (SVI's parameters then become NaN): evaluate
``elbo.loss(...)`` once outside ``jit`` to find the site. ``loss_with_mutable_state``, which
:class:`numpyro.infer.SVI` calls when the model or guide has ``numpyro.mutable`` sites, is a training
step: it also returns the stateful baseline's updated state (and other mutable sites' values, from the
first particle); ``loss`` never updates anything.

A site forced to the measure-valued estimator (:class:`MeasureValuedELBO`, ``"measure"``), to REBAR
(:class:`RebarELBO`, ``"rebar"``) or to RELAX (:class:`RelaxELBO`, ``"relax"``) adds a term of its own
instead of the score term, from reruns of guide and model traced into the loss
(:mod:`ppl_reparam.numpyro.measure_valued`; REBAR's maths in :mod:`ppl_reparam.pyro.rebar`, RELAX's
control in :mod:`ppl_reparam.numpyro.relax`); ``"auto"`` sites are resolved before training, by
:func:`ppl_reparam.numpyro.choose_site_estimators`.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any

import jax
import jax.numpy as jnp
import numpyro
from jax import random
from jax.lax import stop_gradient
from numpyro.distributions import (
    Distribution,
    ExpandedDistribution,
    ImproperUniform,
    Independent,
    MaskedDistribution,
    distribution,
)
from numpyro.distributions.distribution import validation_enabled
from numpyro.distributions.kl import kl_divergence
from numpyro.handlers import replay, seed, substitute, trace
from numpyro.infer.elbo import ELBO
from numpyro.ops.provenance import eval_provenance
from numpyro.optim import Adam
from numpyro.primitives import Messenger
from numpyro.util import check_model_guide_match

from .. import surrogate as sg
from ..forcing import check_estimator, check_named_sites, checking_sites
from ..mc_gradients import check_rebar_options
from ..noise import check_noise
from . import measure_valued as mv
from . import relax as rx
from .baselines import STATE_PREFIX, Baseline, Context, make_baseline, subsampled_frames
from .handlers import (
    EstimatorDistribution,
    ForceEstimatorMessenger,
    ParticleNoise,
    describe,
    force_estimator,
    is_guide_latent,
    leaf_distribution,
    leaf_path,
    relaxation_shape,
)
from .mc_gradients import gumbel_pair, relaxed_pair


class _JaxOps:
    """:class:`ppl_reparam.surrogate.ArrayOps` for JAX."""

    @staticmethod
    def sum(x, dims):
        return jnp.sum(x, axis=dims, keepdims=True) if dims else x

    total = staticmethod(jnp.sum)

    shape = staticmethod(jnp.shape)
    reshape = staticmethod(jnp.reshape)
    broadcast_to = staticmethod(jnp.broadcast_to)
    stop_gradient = staticmethod(stop_gradient)
    where = staticmethod(jnp.where)


OPS = _JaxOps()


def sample_sites(tr: dict) -> list[dict]:
    return [site for site in tr.values() if site["type"] == "sample"]


def _is_score_site(site: dict) -> bool:
    """A guide latent drawn without a reparameterized sampler: its gradient needs the score term, or
    the term of its own estimator (:func:`_elbo_term`)."""
    return is_guide_latent(site) and not site["fn"].has_rsample


def _elbo_term(site: dict) -> str | None:
    """``"measure"``, ``"rebar"`` or ``"relax"`` at a guide latent forced to one of them (the ELBO adds its
    term), else None."""
    return getattr(site["fn"], "elbo_term", None) if site["type"] == "sample" else None


def log_density(site: dict) -> jax.Array:
    """The site's unscaled log-density at its value (masks live in the distribution in NumPyro)."""
    if site["intermediates"]:
        return site["fn"].log_prob(site["value"], site["intermediates"])
    return site["fn"].log_prob(site["value"])


def path_log_density(site: dict) -> jax.Array:
    r"""The path derivative of a site's unscaled log-density, value-equal to it:
    :math:`\log q_\phi(z) - \log q_\phi(\bot z) + \bot \log q_\phi(\bot z)` (sticking the landing)."""
    at_fixed_z = site["fn"].log_prob(stop_gradient(site["value"]))
    return log_density(site) - at_fixed_z + stop_gradient(at_fixed_z)


def _unmasked(fn: Distribution) -> Distribution:
    """``fn`` without the masks of ``numpyro.handlers.mask`` and ``.mask()`` (and without forcing)."""
    if isinstance(fn, (MaskedDistribution, EstimatorDistribution)):
        return _unmasked(fn.base_dist)
    if isinstance(fn, ExpandedDistribution):
        return _unmasked(fn.base_dist).expand(fn.batch_shape)
    if isinstance(fn, Independent):
        return Independent(_unmasked(fn.base_dist), fn.reinterpreted_batch_ndims)
    return fn


def traces(
    keys: tuple[jax.Array, jax.Array],
    param_map: dict,
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    forced: ForceEstimatorMessenger,
    plates: dict | None = None,
    substitute_fn: Callable | None = None,
) -> tuple[dict, dict]:
    """Guide and model traces of one particle, seeded with ``keys = (guide_key, model_key)``, the guide
    run under ``forced``; ``plates`` fixes the subsample indices of the plates it names
    (:func:`shared_subsamples`); ``substitute_fn`` substitutes guide values (provenance tracking).
    Checks the sites named for an estimator against the model's sites."""
    if plates:
        model, guide = substitute(model, data=plates), substitute(guide, data=plates)

    def forced_guide(*args: Any, **kwargs: Any) -> Any:
        with forced:
            return guide(*args, **kwargs)

    guide_key, model_key = keys
    seeded_guide = seed(forced_guide, guide_key)
    if substitute_fn is not None:
        seeded_guide = substitute(seeded_guide, substitute_fn=substitute_fn)
    with checking_sites() as nested:
        guide_trace = trace(substitute(seeded_guide, data=param_map)).get_trace(*args, **kwargs)
    seeded_model = seed(model, model_key)
    model_trace = trace(substitute(replay(seeded_model, guide_trace), data=param_map)).get_trace(*args, **kwargs)
    check_named_sites([forced.choices, *nested], (s["name"] for s in sample_sites(model_trace)), forced.choices.seen)
    sg.check_not_enumerated(
        ((s["name"], s["infer"], s["fn"]) for s in sample_sites(model_trace) if not s["is_observed"]),
        guide_trace,
        describe,
    )
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


class EstimatorELBO(ELBO):
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
        antithetic: bool = False,
        qmc: bool = False,
        coupling: bool = True,
        rebar_temperature: float = 0.5,
        rebar_eta: float = 1.0,
        relax_hidden: int = 32,
        relax_fit: int = 0,
    ):
        check_estimator(self.estimator)
        self.baseline = make_baseline(baseline)
        sg.check_own_term_options(type(self).__name__, self.estimator, self.baseline)
        self.sites = sg.check_options(num_particles, sites, self.baseline, stl, analytic_kl, vectorized=None)
        self.noise = check_noise(antithetic, qmc, num_particles, None, self.baseline)
        self.analytic_kl = bool(analytic_kl)
        self.stl = bool(stl)
        self.coupling = bool(coupling)
        self.rebar_temperature, self.rebar_eta = check_rebar_options(rebar_temperature, rebar_eta)
        if type(relax_hidden) is not int or relax_hidden < 1:
            raise ValueError(f"relax_hidden must be a positive number of hidden units, got {relax_hidden!r}")
        if type(relax_fit) is not int or relax_fit < 0:
            raise ValueError(f"relax_fit must be a number of steps (0 or more), got {relax_fit!r}")
        self.relax_hidden, self.relax_fit = relax_hidden, relax_fit
        self.reruns = 0  # runs of guide and model the measure-valued sites took in the last traced particle
        super().__init__(num_particles=int(num_particles), vectorize_particles=vectorize_particles)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_particles={self.num_particles}, "
            f"vectorize_particles={self.vectorize_particles!r}, analytic_kl={self.analytic_kl}, "
            f"sites={self.sites!r}, baseline={self.baseline!r}, stl={self.stl}"
            + (f", {self.noise}=True" if self.noise else "")
            + (", coupling=False" if not self.coupling else "")
            + (f", rebar_temperature={self.rebar_temperature}, rebar_eta={self.rebar_eta}"
               if (self.rebar_temperature, self.rebar_eta) != (0.5, 1.0) else "")
            + (f", relax_hidden={self.relax_hidden}" if self.relax_hidden != 32 else "")
            + (f", relax_fit={self.relax_fit}" if self.relax_fit else "")
            + ")"
        )

    def _config(self) -> tuple:
        return (type(self), self.num_particles, self.vectorize_particles, self.analytic_kl, self.sites,
                self.baseline, self.stl, self.noise, self.coupling, self.rebar_temperature, self.rebar_eta,
                self.relax_hidden, self.relax_fit)

    # Equal options make equal ELBOs: the ELBO is a static argument of the jitted functions
    # (gradient_variance, SVI's update), so a fresh ELBO with the same options reuses their compiled code.
    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._config() == self._config()

    def __hash__(self) -> int:
        return hash(self._config())

    # ----------------------------------------------------------------------------------- traces
    def _traces(self, keys: tuple, *run: Any, **options: Any) -> tuple[dict, dict]:
        """:func:`traces` of one particle with this ELBO's estimator; ``keys`` is ``(guide_key, model_key)``
        and, with antithetic or QMC draws, the particle's :class:`ParticleNoise`; ``run`` is ``(param_map,
        model, guide, args, kwargs)``, ``options`` are ``plates`` and ``substitute_fn``."""
        forced = ForceEstimatorMessenger(self.estimator, self.sites, keys[2] if len(keys) > 2 else None)
        return traces(keys[:2], *run, forced, **options)

    # ------------------------------------------------------------------------------ loss terms
    def _closed_form_kl(self, q_site: sg.Site, p_site: sg.Site | None) -> jax.Array | None:
        """Closed-form KL(q || p), or -H(q) under a flat prior, scaled as the guide site; None where
        there is none (:func:`ppl_reparam.surrogate.closed_form_kl`)."""
        node = q_site.node
        q = node["fn"].base_dist if isinstance(node["fn"], EstimatorDistribution) else node["fn"]
        p = None if p_site is None else p_site.node["fn"]
        kl = sg.closed_form_kl(
            q_site.name,
            q,
            p,
            kl_divergence=kl_divergence,
            flat_prior=p is not None and isinstance(leaf_distribution(p), ImproperUniform),
            describe=describe,
            registry="numpyro.distributions.kl (@numpyro.distributions.kl.kl_divergence.register)",
        )
        if kl is None:
            return None
        return _scaled(node, jnp.broadcast_to(kl, jnp.broadcast_shapes(jnp.shape(kl), q.batch_shape)))

    def _terms(self, model_trace: dict, guide_trace: dict) -> tuple[list[sg.Term], list[sg.ScoreSite]]:
        """The loss terms and the score-function sites (:mod:`ppl_reparam.surrogate`)."""
        guide = [
            sg.Site(
                site["name"],
                frozenset(site["cond_indep_stack"]),
                _scaled(site, log_density(site)),
                latent=is_guide_latent(site),
                score=_is_score_site(site),
                node=site,
            )
            for site in sample_sites(guide_trace)
        ]
        model = {
            site["name"]: sg.Site(
                site["name"], frozenset(site["cond_indep_stack"]), _scaled(site, log_density(site)), node=site
            )
            for site in sample_sites(model_trace)
        }
        terms = sg.loss_terms(
            guide,
            model,
            analytic_kl=self.analytic_kl,
            stl=self.stl,
            closed_form_kl=self._closed_form_kl,
            path_log_prob=lambda s: _scaled(s.node, path_log_density(s.node)),
        )
        score_sites = [
            sg.ScoreSite(
                s.name,
                s.frames,
                _unmasked(s.node["fn"]).log_prob(s.node["value"]),
                1.0 if s.node["scale"] is None else s.node["scale"],
            )
            for s in guide
            if s.score and _elbo_term(s.node) is None
        ]
        return terms, score_sites

    def _dependencies(
        self,
        keys: tuple[jax.Array, jax.Array],
        param_map: dict,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict,
        score_sites: list[sg.ScoreSite],
        guide_trace: dict,
        plates: dict | None,
    ) -> list[frozenset]:
        """:math:`D_t` of each loss term: the score-function sites whose sample it depends on, by
        provenance tracking on the jaxpr of the traces (an abstract evaluation: no array is computed).
        Each score-function sample is replaced by ``0 * sample + input``, so that it depends on its
        own input and on what its distribution's parameters depend on, as in NumPyro's
        ``TraceGraph_ELBO``."""
        names = [s.name for s in score_sites] + [s["name"] for s in sample_sites(guide_trace) if _elbo_term(s)]
        if self.analytic_kl:  # every latent, so that check_closed_forms sees every dependency
            names = [site["name"] for site in sample_sites(guide_trace) if is_guide_latent(site)]
        values = {name: guide_trace[name]["value"] for name in names}
        shapes = {name: jax.ShapeDtypeStruct(jnp.shape(v), jnp.result_type(v)) for name, v in values.items()}

        def terms_of(**latents: jax.Array) -> list[jax.Array]:
            def replace(msg: dict) -> jax.Array | None:
                if msg["name"] not in latents or not is_guide_latent(msg):
                    return None
                if msg["value"] is not None:  # substituted inside the guide: depends on nothing drawn
                    return 0 * msg["value"] + latents[msg["name"]]
                return 0 * msg["fn"](*msg["args"], **msg["kwargs"]) + latents[msg["name"]]

            model_trace, guide_trace = self._traces(
                keys, param_map, model, guide, args, kwargs, plates=plates, substitute_fn=replace
            )
            return [t.value for t in self._terms(model_trace, guide_trace)[0]]

        return eval_provenance(terms_of, **shapes)

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
        """One particle: its loss, its surrogate loss (without the score terms when there is a
        baseline), the sum of each loss term, the values of the mutable sites and, with a baseline,
        each score-function site's log q, unscaled cost and scale. Fills ``info`` (static, known once
        traced) with each term's site and distribution and, with a baseline, each score-function
        site's name and the axes the baseline averages over."""
        model_trace, guide_trace = self._traces(keys, param_map, model, guide, args, kwargs, plates=info.get("plates"))
        terms, score_sites = self._terms(model_trace, guide_trace)
        loss, surrogate = sg.totals(terms, None, OPS)
        sums = [jnp.sum(t.value) for t in terms]
        out = {"loss": jnp.sum(loss), "sums": jnp.stack(sums) if sums else jnp.zeros(0)}
        info["labels"] = [(t.site, describe((guide_trace.get(t.site) or model_trace[t.site])["fn"])) for t in terms]
        deps = []
        self.reruns = 0  # (at trace time: the reruns in the compiled graph, per particle)
        measured = [site for site in sample_sites(guide_trace) if _elbo_term(site)]
        if score_sites or measured or self.analytic_kl:
            args_ = (keys, param_map, model, guide, args, kwargs, score_sites, guide_trace, info.get("plates"))
            deps = self._dependencies(*args_)
            sg.check_closed_forms(terms, deps)
        costs = sg.site_costs(terms, deps, score_sites, OPS)
        if self.baseline is None:
            for site in score_sites:
                surrogate = surrogate + jnp.sum(sg.score_term(site, costs[site.name], None, OPS))
        else:
            out["score"] = self._score_parts(score_sites, costs, guide_trace, info)
        relax = {}
        for site in measured:
            traced = (model_trace, guide_trace, keys, param_map, model, guide, args, kwargs, info.get("plates"))
            if _elbo_term(site) == "measure":
                surrogate = surrogate + jnp.sum(self._measure_term(site, terms, deps, *traced))
            else:
                term, relax_parts = self._relaxed_term(site, terms, deps, *traced)
                surrogate = surrogate + term
                if relax_parts is not None:
                    relax[site["name"]] = relax_parts
        out["surrogate"] = jnp.sum(surrogate)
        out["relax"] = relax
        info["guide_params"] = [n for n, s in guide_trace.items() if s["type"] == "param" and not rx.is_control(n)]
        out["mutable"] = {
            name: site["value"]
            for tr in (guide_trace, model_trace)
            for name, site in tr.items()
            if site["type"] == "mutable"
        }
        return out

    # --------------------------------------------------------------- measure-valued and REBAR sites
    def _rerun_cost(
        self, site: dict, terms: list[sg.Term], deps: list[frozenset], model_trace: dict, guide_trace: dict,
        keys: tuple, param_map: dict, model: Callable, guide: Callable, args: tuple, kwargs: dict,
        plates: dict | None, grad: bool,
    ) -> tuple[Callable[[jax.Array], jax.Array], frozenset, jax.Array]:
        """``(cost, plates, key)``: ``cost(value)`` reruns guide and model with the site set to ``value``
        (the sites before it substituted, those after it drawn from one key for every call) and sums the
        terms that depend on its sample, keeping the dims of ``plates`` (size 1 elsewhere; one extra
        size-1 dim per event dim): the plates of the site in which every such term lies, so that each
        element's cost is its own terms; ``grad`` keeps the gradient; ``key`` is the site's own for
        other draws. As :meth:`ppl_reparam.pyro.elbo.EstimatorELBO._rerun_cost`."""
        name, fn = site["name"], site["fn"]
        frames = frozenset(site["cond_indep_stack"])
        layout = sg.rerun_layout(name, frames, fn.batch_shape, len(fn.event_shape), terms, deps)
        data = {}
        for n, s in guide_trace.items():
            if s["type"] == "sample":
                data[n] = stop_gradient(s["value"])
            if n == name:
                break
        subsamples = {
            n: s["value"] for tr in (guide_trace, model_trace) for n, s in tr.items() if s["type"] == "plate"
        }
        subsamples.update(plates or {})
        site_key, guide_key, model_key = random.split(random.fold_in(keys[0], zlib.crc32(name.encode())), 3)

        def cost(value: jax.Array) -> jax.Array:
            self.reruns += 1
            values = {**data, name: value}

            def replace(msg: dict) -> jax.Array | None:
                return values.get(msg["name"]) if msg["type"] == "sample" else None

            # (relaxed values of a discrete site are outside its support: no validation for REBAR's reruns)
            with validation_enabled(not grad and distribution._VALIDATION_ENABLED):
                rerun = self._traces(
                    (guide_key, model_key), param_map, model, guide, args, kwargs, plates=subsamples,
                    substitute_fn=replace,
                )
                rerun_terms = self._terms(*rerun)[0]
            total = sg.rerun_cost(layout, frames, rerun_terms, OPS)
            return total if grad else stop_gradient(total)

        return cost, layout.plates, site_key

    def _measure_term(self, site: dict, terms: list[sg.Term], deps: list[frozenset], *traced: Any) -> jax.Array:
        """The surrogate of a measure-valued site (:mod:`ppl_reparam.numpyro.measure_valued`); ``traced``
        as :meth:`_rerun_cost` takes them."""
        fn = site["fn"]
        cost, plate_set, key = self._rerun_cost(site, terms, deps, *traced, grad=False)
        event_dim = len(fn.event_shape)
        leaf, transforms = leaf_path(fn)
        plate_dims = frozenset(d - event_dim for d in plate_set)
        value = stop_gradient(site["value"])
        return mv.site_term(site["name"], leaf, transforms, value, event_dim, plate_dims, cost, self.coupling, key)

    def _relaxed_term(
        self, site: dict, terms: list[sg.Term], deps: list[frozenset], *traced: Any
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """The surrogate of a REBAR or RELAX site, summed (:mod:`ppl_reparam.pyro.rebar` has the maths): its
        cost from this trace, the control variate from reruns at the relaxed bits (Bernoulli sites) and, for
        RELAX, its network (:mod:`ppl_reparam.numpyro.relax`); and for RELAX, ``(log q(b), c(z~))``, which
        :meth:`_control_objective` takes (None for REBAR)."""
        name, fn = site["name"], site["fn"]
        kind = fn.elbo_term
        frames = frozenset(site["cond_indep_stack"])
        value = stop_gradient(site["value"])
        leaf = leaf_path(fn)[0]
        shape = relaxation_shape(leaf, jnp.shape(value))
        if len(site["intermediates"]) != 1 or jnp.shape(site["intermediates"][0]) != shape:
            raise ValueError(sg.GIVEN_DRAW.format(name=name, what=sg.OWN_TERM_NAMES[kind]))
        log_q = _unmasked(fn).log_prob(value)
        score = sg.ScoreSite(name, frames, log_q, 1.0 if site["scale"] is None else site["scale"])
        f = sg.site_costs(terms, deps, [score], OPS)[name]
        bits = mv.family_of(leaf) == "Bernoulli"
        if bits:
            cost, plates, key = self._rerun_cost(site, terms, deps, *traced, grad=True)
        else:
            plates = sg.rerun_layout(name, frames, fn.batch_shape, len(fn.event_shape), terms, deps).plates
            key = random.split(random.fold_in(traced[2][0], zlib.crc32(name.encode())), 3)[0]
        logits = jnp.broadcast_to(leaf.logits, shape)
        (uniforms,) = site["intermediates"]
        tiny = jnp.finfo(jnp.result_type(float)).eps
        v = jnp.clip(random.uniform(key, shape), tiny, 1 - tiny)
        # the draw is the one these uniforms made
        z, z_tilde = relaxed_pair(logits, uniforms, v)[1:3] if bits else gumbel_pair(logits, uniforms, v)[1:]
        event = tuple(range(-len(fn.event_shape), 0))

        def relaxed_cost(x: jax.Array, temperature: jax.Array | float) -> jax.Array:
            c = cost(jax.nn.sigmoid(x / temperature))
            return jnp.sum(c, event) if event else c

        if kind == "rebar":
            c_z, c_tilde = relaxed_cost(z, self.rebar_temperature), relaxed_cost(z_tilde, self.rebar_temperature)
            weight = stop_gradient(f - self.rebar_eta * c_tilde)
            return jnp.sum(log_q * weight) + self.rebar_eta * jnp.sum(c_z - c_tilde), None
        params = self._control_params(name, traced[1], z, len(fn.batch_shape), bits)
        batch = len(fn.batch_shape)
        kept = tuple(n if i - batch in plates else 1 for i, n in enumerate(fn.batch_shape))

        def control(x: jax.Array) -> jax.Array:
            c = sg.reduce_to(rx.network(params, name, x, batch), kept, OPS)
            if bits:
                eta, log_temperature = (params[rx.param_name(name, part)] for part in rx.RELAXED)
                c = c + eta * relaxed_cost(x, jnp.exp(log_temperature))
            return c

        c_z, c_tilde = control(z), control(z_tilde)
        return jnp.sum(log_q * stop_gradient(f - c_tilde)) + jnp.sum(c_z - c_tilde), (log_q, c_tilde)

    def _control_params(
        self, name: str, guide_trace: dict, z: jax.Array, batch_dims: int, bits: bool
    ) -> dict[str, jax.Array]:
        """The params of RELAX's control of the site ``name`` (``z`` its relaxation), as the guide declares
        them (:meth:`with_controls`) in ``guide_trace``; a ValueError naming the site where they are missing
        or made for another size of relaxation."""
        names = [rx.param_name(name, part) for part in rx.PARTS + (rx.RELAXED if bits else ())]
        if any(guide_trace.get(n, {}).get("type") != "param" for n in names):
            raise ValueError(
                f"site {name!r}: RELAX's control lives in NumPyro params that the guide declares ({names[0]}, ...), "
                "and this guide declares none: train with SVI(model, elbo.with_controls(guide), optim, loss=elbo), "
                "and measure with that guide and its params"
            )
        params = {n: guide_trace[n]["value"] for n in names}
        size = int(math.prod(jnp.shape(z)[batch_dims:]))
        declared = jnp.shape(params[names[0]])[0]
        if declared != size:
            raise ValueError(
                f"site {name!r}: RELAX's control takes {declared} numbers per batch element (the site's relaxation "
                f"when the guide declared it), and this draw has {size}: a site whose event shape changes cannot "
                "keep one learned control"
            )
        return params

    def _score_parts(self, score_sites: list[sg.ScoreSite], costs: dict, guide_trace: dict, info: dict) -> dict:
        """For each score-function site: its log q, its unscaled cost and its scale, each of log q's
        shape; ``info["score_sites"]`` gets each site's name and the dims a baseline averages over."""
        parts, reduce_dims = {}, []
        subsampled = subsampled_frames(guide_trace)
        for site in score_sites:
            if self.baseline.stateful and STATE_PREFIX + site.name not in guide_trace:
                raise ValueError(
                    f"{self.baseline!r} keeps its state in numpyro.mutable sites that the guide declares, "
                    f"and this guide declares none for site {site.name!r}: train with "
                    "SVI(model, elbo.baseline.with_state(guide), optim, loss=elbo), and measure with "
                    "numpyro.handlers.substitute(that guide, data=svi_state.mutable_state)"
                )
            shape = jnp.shape(site.log_q)
            scale = stop_gradient(jnp.broadcast_to(jnp.asarray(site.scale, costs[site.name].dtype), shape))
            parts[site.name] = (site.log_q, sg.unscaled(costs[site.name], scale, OPS), scale)
            reduce = tuple(f.dim for f in site.frames if f.name in subsampled and -f.dim <= len(shape))
            reduce_dims.append((site.name, (0, *reduce)))
        info["score_sites"] = reduce_dims
        return parts

    def _run(
        self,
        rng_key: jax.Array,
        param_map: dict,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict,
        update: bool,
    ) -> tuple[jax.Array, jax.Array, dict, dict, list[str]]:
        """Per-particle losses and surrogates, the mutable state (updated by the baseline when ``update``,
        i.e. in a training step), each RELAX site's per-particle ``(log q(b), c(z~))`` and the names of the
        guide's params (RELAX's controls aside)."""
        allowed = mv.ALLOWED.set(True)
        try:
            return self._run_allowed(rng_key, param_map, model, guide, args, kwargs, update)
        finally:
            mv.ALLOWED.reset(allowed)

    def _run_allowed(
        self, rng_key: jax.Array, param_map: dict, model: Callable, guide: Callable, args: tuple, kwargs: dict,
        update: bool,
    ) -> tuple[jax.Array, jax.Array, dict, dict, list[str]]:
        # ``info`` is a side channel out of ``vmap``: the particle function fills it with static facts
        # (each term's site and distribution, each score site's name and reduced dims), known once
        # traced and the same for every particle, which cannot be returned as arrays through vmap.
        info: dict = {}
        if self.num_particles > 1 and self.baseline is not None and self.baseline.needs_particles:
            # leave-one-out compares the particles element by element: they share the minibatch
            rng_key, plate_key = random.split(rng_key)
            info["plates"] = shared_subsamples(plate_key, param_map, model, guide, args, kwargs)

        def particle(keys: tuple[jax.Array, jax.Array]) -> dict:
            return self._particle(keys, param_map, model, guide, args, kwargs, info)

        # One particle is seeded as in NumPyro's own ELBOs (model key, then guide key), so that its draws
        # are theirs (tests/test_tracegraph_equality.py). Several particles take their guide and model keys
        # from two separate splits, so that XLA drops the model's when the model draws nothing of its own
        # (its latents replayed from the guide): most of the cost of many cheap particles.
        if self.num_particles == 1:
            model_key, guide_key = random.split(rng_key)
            out = jax.tree.map(lambda x: x[None], particle((guide_key, model_key)))
        else:
            guide_key, model_key = random.split(rng_key)
            k = self.num_particles
            guide_keys = random.split(guide_key, k)
            if self.noise == "antithetic":  # partners j and j + K/2 share their guide key: mirrored draws
                guide_keys = jnp.concatenate([guide_keys[: k // 2]] * 2)
            keys = (guide_keys, random.split(model_key, k))
            if self.noise is None:
                out = self.vectorize_particles_fn(particle, keys)
            else:
                noise_key = random.fold_in(guide_key, k)

                def coupled(keys: tuple[jax.Array, jax.Array, jax.Array]) -> dict:
                    guide_k, model_k, position = keys
                    return particle((guide_k, model_k, ParticleNoise(self.noise, k, position, noise_key)))

                out = self.vectorize_particles_fn(coupled, (*keys, jnp.arange(k)))
        losses, surrogates = out["loss"], out["surrogate"]
        if not isinstance(losses, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(losses))):
            _raise_non_finite(out["sums"], info["labels"])
        state = jax.tree.map(lambda x: x[0], out["mutable"])
        for name, reduce in info.get("score_sites", []):
            log_q, cost, scale = out["score"][name]
            ctx = Context(0, reduce, args, kwargs)
            site_state = state.get(STATE_PREFIX + name)
            b = stop_gradient(self.baseline.value(name, cost, site_state, ctx))
            score = sg.score_term(sg.ScoreSite(name, frozenset(), log_q, scale), cost * scale, b, OPS)
            surrogates = surrogates + score.reshape(score.shape[0], -1).sum(1)
            if update and self.baseline.stateful:
                state[STATE_PREFIX + name] = self.baseline.update(name, cost, site_state, ctx)
        return losses, surrogates, state, out["relax"], info["guide_params"]

    def particle_losses(
        self, rng_key: jax.Array, param_map: dict, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> tuple[jax.Array, jax.Array]:
        """Loss and surrogate loss of each particle, two arrays of shape ``(num_particles,)``.

        The gradient of ``surrogate[i]`` is particle ``i``'s single-sample gradient estimate; the
        ELBO's estimate is their mean. Particles are mapped with ``jax.vmap``
        (``vectorize_particles=True``), ``jax.lax.map`` (False) or the callable given. Raises a
        ValueError naming the site when a loss term is NaN or infinite (outside JAX transformations).
        """
        losses, surrogates = self._run(rng_key, param_map, model, guide, args, kwargs, update=False)[:2]
        return losses, surrogates

    # ---------------------------------------------------------------------------- public API
    def loss(
        self, rng_key: jax.Array, param_map: dict, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> jax.Array:
        """The loss estimate, -ELBO, from ``num_particles`` samples; its gradient is the surrogate's
        (what :class:`numpyro.infer.SVI` differentiates), and in the params of RELAX's controls that of
        :meth:`_control_objective`. Never updates a baseline."""
        return self._loss(rng_key, param_map, model, guide, args, kwargs, update=False)[0]

    def loss_with_mutable_state(
        self, rng_key: jax.Array, param_map: dict, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> dict:
        """A training step's loss, as :meth:`loss`, and the mutable state after it: a stateful
        baseline's state updated from this step's costs, other ``numpyro.mutable`` sites' values from
        the first particle. :class:`numpyro.infer.SVI` calls it when the model or guide declares
        mutable sites (:meth:`~ppl_reparam.numpyro.baselines.Baseline.with_state`)."""
        loss, state = self._loss(rng_key, param_map, model, guide, args, kwargs, update=True)
        return {"loss": loss, "mutable_state": state or None}

    def _loss(
        self, rng_key: jax.Array, param_map: dict, model: Callable, guide: Callable, args: tuple, kwargs: dict,
        update: bool,
    ) -> tuple[jax.Array, dict]:
        """The loss of :meth:`loss` and the mutable state of :meth:`_run`. The estimate is taken with
        RELAX's controls held (their gradient there would be noise of mean zero); where there are RELAX
        sites, :meth:`_control_objective` adds their gradient, at no cost to the loss's value."""
        held = {k: stop_gradient(v) if rx.is_control(k) else v for k, v in param_map.items()}
        losses, surrogates, state, relax, guide_params = self._run(rng_key, held, model, guide, args, kwargs, update)
        loss = _with_gradient_of(losses, surrogates)
        if relax:
            objective = self._control_objective(rng_key, param_map, model, guide, args, kwargs, guide_params)
            loss = loss + objective - stop_gradient(objective)
        return loss, state

    def _control_objective(
        self, rng_key: jax.Array, param_map: dict, model: Callable, guide: Callable, args: tuple, kwargs: dict,
        guide_params: list[str],
    ) -> jax.Array:
        r""":math:`\|\hat g_\theta\|^2` as a function of the params :math:`\phi` of RELAX's controls (every
        other param held), :math:`\hat g_\theta` the estimate of the guide's params :math:`\theta` on the
        draws of ``rng_key``: its gradient in :math:`\phi` is that of the single-sample variance, which the
        controls learn to lower (:mod:`ppl_reparam.pyro.relax`).

        With :math:`\hat g_\theta = \frac1N \sum_i (f_i - c_\phi(\tilde z)_i)\, a_i + h_\phi`,
        :math:`a_i = \nabla_\theta \log q_i`, the surrogate holds the weights :math:`f_i - c_i`, so the
        gradient through them is added: :math:`\nabla_\phi \|\hat g_\theta\|^2 = \nabla_\phi
        \|\hat g_\theta\|^2\big|_{\text{weights held}} - \frac2N \sum_i (\hat g_\theta \cdot a_i)
        \nabla_\phi c_i`, with :math:`\hat g_\theta \cdot a_i` the derivative of :math:`\log q_i` along
        :math:`\hat g_\theta` (one forward-mode pass)."""
        controls = {k: v for k, v in param_map.items() if rx.is_control(k)}
        fixed = {k: stop_gradient(v) for k, v in param_map.items() if k not in controls}
        theta = {k: fixed[k] for k in guide_params if k in fixed}

        def run(theta: dict, controls: dict) -> tuple[jax.Array, dict]:
            out = self._run(rng_key, {**fixed, **theta, **controls}, model, guide, args, kwargs, update=False)
            return jnp.mean(out[1]), out[3]

        g, relax = jax.grad(run, has_aux=True)(theta, controls)
        held = stop_gradient(controls)
        along = jax.jvp(lambda t: {n: parts[0] for n, parts in run(t, held)[1].items()}, (theta,),
                        (stop_gradient(g),))[1]
        objective = sum(jnp.sum(x**2) for x in jax.tree.leaves(g))
        for name, (_, c_tilde) in relax.items():
            objective = objective - 2 / self.num_particles * jnp.sum(stop_gradient(along[name]) * c_tilde)
        return objective

    def with_controls(self, guide: Callable) -> Callable:
        """``guide`` declaring, after it runs, the params of RELAX's control of each of its sites forced
        to ``"relax"`` (:mod:`ppl_reparam.numpyro.relax`: named ``relax.<site>.<part>``, initial values
        from the site's name, so that RELAX starts as REBAR), for ``SVI(model, elbo.with_controls(guide),
        optim, loss=elbo)`` to train them beside the guide, and for ``gradient_variance`` to find them. The
        guide runs forced as this ELBO forces it (``estimator``, ``sites``; a site's own ``infer`` holds
        where it does), so that ``SVI.init`` finds the sites too. The same object for equal ELBOs and the
        same guide (compiled code is shared); a guide this made is returned as it is."""
        return guide if getattr(guide, "relax_controls", False) else _controlled(self, guide)

    def fit_controls(
        self, rng_key: jax.Array, params: dict, model: Callable, guide: Callable, *args: Any, steps: int,
        lr: float = 1e-3, **kwargs: Any,
    ) -> dict:
        """``params`` with RELAX's controls trained for ``steps`` steps of Adam (learning rate ``lr``,
        decaying linearly to 0) on the gradient :meth:`loss` gives them (:meth:`_control_objective`), every
        other param held; one compiled loop, its draws from ``rng_key``. ``params`` are constrained values
        holding the controls (``guide`` declares them: :meth:`with_controls`); a ValueError if it holds none
        or fitting gives a NaN or infinite value. As Pyro's :meth:`ppl_reparam.pyro.RelaxELBO.fit_controls`."""
        if type(steps) is not int or steps < 0:
            raise ValueError(f"steps must be a number of steps (0 or more), got {steps!r}")
        controls = {k: v for k, v in params.items() if rx.is_control(k)}
        if not controls:
            raise ValueError("fit_controls: params hold no RELAX control (relax.<site>.<part>); take them from a "
                             "guide made by elbo.with_controls(guide)")
        if not steps:
            return dict(params)
        others = {k: v for k, v in params.items() if k not in controls}
        optim = Adam(lambda i: lr * (1 - i / steps))

        def step(state: Any, key: jax.Array) -> tuple[Any, None]:
            grads = jax.grad(lambda c: self.loss(key, {**others, **c}, model, guide, *args, **kwargs))(
                optim.get_params(state)
            )
            return optim.update(grads, state), None

        state, _ = jax.jit(lambda s, keys: jax.lax.scan(step, s, keys))(optim.init(controls),
                                                                         random.split(rng_key, steps))
        fitted = optim.get_params(state)
        if not all(bool(jnp.all(jnp.isfinite(v))) for v in fitted.values()):
            raise ValueError("RELAX's control got a NaN or infinite value while fitting; check the model's factors, "
                             "or fit with a lower lr")
        return {**params, **fitted}


@lru_cache(maxsize=64)
def _controlled(elbo: EstimatorELBO, guide: Callable) -> Callable:
    """:meth:`EstimatorELBO.with_controls`, one object per (equal ELBO, guide)."""
    hidden, start = elbo.relax_hidden, (elbo.rebar_temperature, elbo.rebar_eta)
    forced = force_estimator(guide, elbo.estimator, elbo.sites)  # as the ELBO forces it, also in SVI.init

    def controlled(*args: Any, **kwargs: Any) -> Any:
        sites = _RelaxSites()
        with sites:
            result = forced(*args, **kwargs)
        for name, (size, bits) in sites.found.items():
            for param, value in rx.initial(name, size, hidden, *(start if bits else (None, None))).items():
                numpyro.param(param, value)
        return result

    controlled.relax_controls = True
    return controlled


class _RelaxSites(Messenger):
    """Records each sample site forced to ``"relax"`` with the size of its relaxation per batch element
    and whether it is a Bernoulli site (:meth:`EstimatorELBO.with_controls`)."""

    def __init__(self):
        super().__init__()
        self.found: dict[str, tuple[int, bool]] = {}

    def postprocess_message(self, msg: dict) -> None:
        fn = msg.get("fn")
        if msg["type"] == "sample" and getattr(fn, "elbo_term", None) == "relax":
            leaf = leaf_path(fn)[0]
            shape = relaxation_shape(leaf, jnp.shape(msg["value"]))
            self.found[msg["name"]] = (int(math.prod(shape[len(fn.batch_shape):])), mv.family_of(leaf) == "Bernoulli")


def _with_gradient_of(losses: jax.Array, surrogates: jax.Array) -> jax.Array:
    """The mean loss, carrying the mean surrogate's gradient."""
    surrogate = jnp.mean(surrogates)
    return stop_gradient(jnp.mean(losses)) + surrogate - stop_gradient(surrogate)


class ScoreFunctionELBO(EstimatorELBO):
    r"""A NumPyro ELBO whose gradient takes the score-function estimator at every guide latent, with
    the surrogate of :mod:`ppl_reparam.surrogate` (maths and references there): unbiased on every
    site, discrete and guide-only ones included, where NumPyro's ``Trace_ELBO`` drops the term; the
    gradient of NumPyro's ``TraceGraph_ELBO`` on the same key but for the scale and mask of a site's
    score (see the module). Usable with :class:`numpyro.infer.SVI` and under ``jax.jit``.

    :param num_particles: samples per estimate, mapped by ``jax.vmap`` (``vectorize_particles=True``,
        NumPyro's default), ``jax.lax.map`` (False) or a callable ``(fn, keys) -> outputs``.
    :param analytic_kl: closed-form KL or entropy (Kingma and Welling's estimator B), see the module.
    :param sites: the guide sites to force (default: all); a site's own ``infer={"estimator": ...}``
        holds unless named.
    :param baseline: :mod:`ppl_reparam.numpyro.baselines` (stateful ones keep their state in NumPyro's
        mutable state: wrap the guide with ``baseline.with_state``).
    :param stl: sticking the landing at reparameterized sites.
    :param antithetic: draw the pathwise sites' particles in antithetic pairs; ``qmc``: on a randomized
        Sobol point set (:mod:`ppl_reparam.noise`: Normal sites and element-wise transforms of them, no
        leave-one-out baseline). Antithetic partners share the guide's key, so the guide's other draws
        (score-function sites) are the same for both.
    """

    estimator = "score"


class MeasureValuedELBO(EstimatorELBO):
    r"""A NumPyro ELBO whose gradient takes the measure-valued estimator at every guide latent (Pflug
    1989; Mohamed, Rosca, Figurnov and Mnih 2020, section 6), as Pyro's
    :class:`ppl_reparam.pyro.MeasureValuedELBO` (the maths there; :mod:`ppl_reparam.numpyro.measure_valued`):
    per parameter element outside plates a pair of reruns of guide and model, traced into the loss.

    :param coupling: common random numbers for the two sides of each pair (default True).
    Other options as :class:`ScoreFunctionELBO`'s, without baselines (a difference needs none).
    """

    estimator = "measure"


class RebarELBO(EstimatorELBO):
    r"""A NumPyro ELBO whose gradient takes REBAR (Tucker et al. 2017) at every Bernoulli guide latent, as
    Pyro's :class:`ppl_reparam.pyro.RebarELBO` (the maths in :mod:`ppl_reparam.pyro.rebar`): the control
    variate is the site's own cost at the relaxed bits, from reruns traced into the loss.

    :param rebar_temperature: :math:`\lambda` (default 0.5); ``rebar_eta``: :math:`\eta` (default 1).
    Other options as :class:`ScoreFunctionELBO`'s, without baselines.
    """

    estimator = "rebar"


class RelaxELBO(EstimatorELBO):
    r"""A NumPyro ELBO whose gradient takes RELAX (Grathwohl et al. 2018) at every Bernoulli and Categorical
    guide latent, as Pyro's :class:`ppl_reparam.pyro.RelaxELBO`: the estimator of :class:`RebarELBO` with a
    learned control, :math:`\eta\, c(\sigma(z/\lambda)) + r_\rho(z)` at Bernoulli sites and
    :math:`r_\rho(z)` at Categorical ones (:mod:`ppl_reparam.numpyro.relax`). Unbiased for the discrete
    ELBO whatever the control. The control's params are NumPyro params that the guide declares: train
    with ``SVI(model, elbo.with_controls(guide), optim, loss=elbo)``; the loss's gradient in them is that
    of the squared norm of the guide parameters' estimate (:meth:`_control_objective`), whose mean is
    that of its variance, so SVI's optimizer trains the control to lower it.
    :func:`~ppl_reparam.numpyro.gradient_variance` measures the other params' gradients with the control
    as it is in ``params``. A site of another family is a ValueError naming it.

    :param relax_hidden: hidden units of :math:`r_\rho` (default 32; its output layer starts at zero).
    :param rebar_temperature: the starting :math:`\lambda` (default 0.5); ``rebar_eta``: the starting
        :math:`\eta` (default 1): at the start RELAX is REBAR.
    Other options as :class:`ScoreFunctionELBO`'s, without baselines.
    """

    estimator = "relax"


class PathwiseELBO(EstimatorELBO):
    r"""A NumPyro ELBO whose gradient takes the pathwise (reparameterization) estimator at every guide
    latent (implicit reparameterization for Gamma, Beta, Dirichlet through ``jax.random.gamma``): the
    gradient of NumPyro's ``Trace_ELBO`` on a reparameterized guide and the same key. A site without a
    reparameterized sampler is a ValueError naming it, never a silent fallback to the score function.
    Options as :class:`ScoreFunctionELBO`'s.
    """

    estimator = "pathwise"
