r"""ELBOs that force a gradient estimator on the guide's latent sites (Pyro backend).

The score-function and pathwise classes estimate :math:`\mathrm{ELBO} = E_q[\log p(x, z) - \log q(z)]`
and differentiate the surrogate loss of :mod:`ppl_reparam.surrogate`,

.. math::
    \tilde L = \sum_t g_t + \sum_{s \in S} \log q_s(z_s)\, \bot\big(c_s - \sigma_s b_s\big),

whose score-function sites :math:`s \in S` (guide latents drawn without ``rsample``) have the cost
:math:`c_s` of exactly the terms that depend on their sample, within a plate element by element, as
Pyro's ``TraceGraph_ELBO`` (Schulman et al. 2015; Williams 1992; Ranganath, Gerrish and Blei 2014).
The dependencies come from provenance tracking (:mod:`ppl_reparam.pyro.provenance`), so with every
site forced to the score function the gradient is ``TraceGraph_ELBO``'s on the same draws, AutoGuides'
auxiliary sites included; only score-function samples are tracked, so a pathwise guide pays nothing.
Reparameterized sites carry gradients through their samples (Kingma and Welling 2014; Rezende, Mohamed
and Wierstra 2014).

``analytic_kl=False`` is Kingma and Welling's estimator A (the whole ELBO by Monte Carlo);
``analytic_kl=True`` is their estimator B: :math:`\mathrm{KL}(q_t \| p_t)` in closed form where a KL
is registered, :math:`-H(q_t)` where the prior is flat (``ImproperUniform``), and elsewhere (guide-only
sites, as in AutoGuides; pairs with no registered KL) the Monte Carlo terms, with a warning naming the
site, as Pyro's ``TraceMeanField_ELBO`` does (but for AutoGuides' ``Delta`` sites, whose
``log_density`` Pyro's ``KL(Delta || p)`` drops: they keep their Monte Carlo terms here). As with
Pyro's ``TraceMeanField_ELBO``, the closed form is exact when the guide is mean field (a site's prior
does not depend on latents the guide draws after it): where that dependency runs through
score-function sites (tracked) it is a ValueError naming the site; where it could run through
reparameterized sites (not tracked) a warning says, as Pyro's does, when model and guide sample their
shared sites in different orders.

These ELBOs do not enumerate: a model site marked ``infer={"enumerate": ...}`` that the guide does not
sample raises a ValueError (use Pyro's ``TraceEnum_ELBO``), rather than being drawn from the prior.

A site forced to the measure-valued estimator (:class:`MeasureValuedELBO`, ``"measure"``), to REBAR
(:class:`RebarELBO`, ``"rebar"``) or to RELAX (:class:`RelaxELBO`, ``"relax"``) adds a term of its own
instead of the score term, from reruns of guide and model or a learned control
(:mod:`ppl_reparam.pyro.measure_valued`, :mod:`ppl_reparam.pyro.rebar`, :mod:`ppl_reparam.pyro.relax`);
an ``"auto"`` site is given, at the first step and every ``auto_every`` after, the estimator with the
lowest measured work-normalized variance (:mod:`ppl_reparam.auto`).
"""

from __future__ import annotations

import math
import warnings
import weakref
import zlib
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import pyro.ops.jit
import torch
from pyro import poutine
from pyro.distributions import ImproperUniform
from pyro.distributions.kl import kl_divergence
from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.infer import ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import is_validation_enabled
from pyro.poutine import Trace
from pyro.util import check_if_enumerated

from .. import auto
from .. import surrogate as sg
from ..choice import Choice
from ..forcing import check_estimator, check_named_sites, checking_sites
from ..mc_gradients import check_rebar_options
from ..noise import check_noise
from ..stats import MIN_REPS
from ..study import derived_seed
from . import measure_valued as mv
from . import rebar as rb
from . import relax as rx
from .baselines import Baseline, Context, make_baseline
from .handlers import (
    EstimatorDistribution,
    ForceEstimatorMessenger,
    ParticleNoise,
    can_rsample,
    check_measure,
    describe,
    is_guide_latent,
    leaf_distribution,
    leaf_path,
    relaxation_shape,
)
from .mc_gradients import gumbel_pair, relaxed_pair
from .provenance import deps_of, untrack
from .rng import isolated_rng, seed_torch

_PARTICLE_PLATE = "num_particles_vectorized"  # the name Pyro's ELBO gives its particle plate


class _TorchOps:
    """:class:`ppl_reparam.surrogate.ArrayOps` for torch."""

    @staticmethod
    def sum(x, dims):
        return torch.as_tensor(x).sum(dims, keepdim=True) if dims else x

    @staticmethod
    def total(x):
        return x.sum() if isinstance(x, torch.Tensor) else torch.tensor(x)

    @staticmethod
    def shape(x):
        return tuple(x.shape) if isinstance(x, torch.Tensor) else ()

    @staticmethod
    def reshape(x, shape):
        return torch.as_tensor(x).reshape(shape)

    @staticmethod
    def broadcast_to(x, shape):
        return torch.as_tensor(x).expand(shape)

    @staticmethod
    def stop_gradient(x):
        return x.detach() if isinstance(x, torch.Tensor) else x

    @staticmethod
    def where(condition, x, y):
        return torch.where(condition, x, y)


OPS = _TorchOps()


class _Particles(NamedTuple):
    loss: torch.Tensor
    surrogate: torch.Tensor
    terms: list[sg.Term]
    costs: list[tuple[str, torch.Tensor, Context]]


def _frames(site: dict) -> frozenset:
    return frozenset(f for f in site["cond_indep_stack"] if f.vectorized)


def _averaged_dims(frames: frozenset, cost: torch.Tensor) -> tuple[int, ...]:
    """Dims of ``cost`` a baseline averages over: particles, and plates that are subsampled (their
    elements change from step to step)."""
    return tuple(
        f.dim
        for f in frames
        if -f.dim <= cost.dim() and (f.name == _PARTICLE_PLATE or (f.full_size or f.size) != f.size)
    )


def _raise_non_finite(terms: list[sg.Term], guide_trace: Trace, model_trace: Trace) -> None:
    """Raise a ValueError naming the first site whose loss term is NaN or infinite."""
    for term in terms:
        if not torch.isfinite(torch.as_tensor(term.value)).all():
            site = guide_trace.nodes.get(term.site) or model_trace.nodes[term.site]
            raise ValueError(
                f"site {term.site!r}: the loss term of {describe(site['fn'])} is NaN or infinite "
                "(a value outside the support, or parameters that have diverged). Check its "
                "parameters and data, or lower the learning rate."
            )


def _unwrap_forced(fn: torch.distributions.Distribution) -> torch.distributions.Distribution:
    return fn.base_dist if isinstance(fn, EstimatorDistribution) else fn


def _check_mean_field(model_trace: Trace, guide_trace: Trace) -> None:
    """Warn, as Pyro's ``TraceMeanField_ELBO`` does, when the latent sites shared by model and guide
    come in different orders: the closed-form KL may then be biased (a prior depending on a latent
    that the guide draws after the site)."""
    model_order = [n for n, s in model_trace.nodes.items() if s["type"] == "sample" and n in guide_trace.nodes]
    guide_order = [n for n, s in guide_trace.nodes.items() if s["type"] == "sample" and n in model_trace.nodes]
    if model_order != guide_order:
        warnings.warn(
            "analytic_kl=True: could not verify that the guide is mean field (model and guide sample their "
            f"shared sites in different orders: model {model_order}, guide {guide_order}); the closed-form "
            "KL is biased if a site's prior depends on a latent the guide draws after it. Sample the sites "
            "in the same order, or use analytic_kl=False.",
            stacklevel=4,
        )


class EstimatorELBO(ELBO):
    """Shared machinery: force ``estimator`` on the guide and differentiate the surrogate loss."""

    estimator: str
    compiled = False

    def __init__(
        self,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
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
        auto_every: int | None = None,
        auto_reps: int = 20,
        auto_seed: int = 0,
        **kwargs: Any,
    ):
        check_estimator(self.estimator)
        if auto_every is not None and (type(auto_every) is not int or auto_every < 1):
            raise ValueError(f"auto_every must be a positive number of steps or None, got {auto_every!r}")
        if auto_reps < MIN_REPS:
            raise ValueError(f"auto_reps must be at least {MIN_REPS}, got {auto_reps}")
        self.auto_every, self.auto_reps, self.auto_seed = auto_every, int(auto_reps), int(auto_seed)
        self.auto: dict[str, str] = {}
        self.auto_choices: dict[str, Choice] = {}
        self.auto_log: list[dict[str, Any]] = []
        self._auto_round: int | None = None  # the step of the last choice
        self._auto_fixed = False  # a trial of one resolution: never chooses
        self._steps = 0
        self.reruns = 0  # runs of guide and model the measure-valued sites took in the last trace
        self.baseline = make_baseline(baseline)
        sg.check_own_term_options(type(self).__name__, self.estimator, self.baseline)
        self.sites = sg.check_options(num_particles, sites, self.baseline, stl, analytic_kl, bool(vectorize_particles))
        self.noise = check_noise(antithetic, qmc, num_particles, bool(vectorize_particles), self.baseline)
        self.analytic_kl = bool(analytic_kl)
        self.stl = bool(stl)
        self.coupling = bool(coupling)
        self.rebar_temperature, self.rebar_eta = check_rebar_options(rebar_temperature, rebar_eta)
        if type(relax_hidden) is not int or relax_hidden < 1:
            raise ValueError(f"relax_hidden must be a positive number of hidden units, got {relax_hidden!r}")
        if type(relax_fit) is not int or relax_fit < 0:
            raise ValueError(f"relax_fit must be a number of steps (0 or more), got {relax_fit!r}")
        self.relax_hidden, self.relax_fit = relax_hidden, relax_fit
        self._fitted = not relax_fit  # the RELAX controls were fitted before the first estimate
        self._controls: dict[str, rx.RelaxControl] = {}  # RELAX's control of each site, registered with Pyro
        self._options = dict(
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            analytic_kl=analytic_kl,
            sites=self.sites,
            baseline=self.baseline,
            stl=self.stl,
            **kwargs,
        )
        if not self.coupling:
            self._options["coupling"] = False
        if (rebar_temperature, rebar_eta) != (0.5, 1.0):
            self._options.update(rebar_temperature=rebar_temperature, rebar_eta=rebar_eta)
        if relax_hidden != 32:
            self._options["relax_hidden"] = relax_hidden
        if relax_fit:
            self._options["relax_fit"] = relax_fit
        if auto_every is not None or auto_reps != 20 or auto_seed:
            self._options.update(auto_every=auto_every, auto_reps=auto_reps, auto_seed=auto_seed)
        if self.noise is not None:
            self._options[self.noise] = True
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            **kwargs,
        )

    def with_num_particles(self, num_particles: int) -> EstimatorELBO:
        """A copy of this ELBO with another ``num_particles`` (all other options kept, and the estimators
        chosen for ``"auto"`` sites so far, fixed)."""
        copy = type(self)(num_particles=num_particles, **self._options)
        if self._auto_round is not None or self._auto_fixed:
            copy.auto, copy._auto_fixed = dict(self.auto), True
        copy._fitted = True  # the copy uses the RELAX controls as they are (in Pyro's param store)
        return copy

    # ------------------------------------------------------------------------------- "auto" sites
    @staticmethod
    def _auto_candidates(name: str, fn: torch.distributions.Distribution) -> list[str]:
        """The estimators that apply at a site (:func:`ppl_reparam.auto.candidates`)."""
        return auto.candidates(name, fn, can_rsample, check_measure)

    def _choose_auto(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> None:
        """Choose the estimator of every ``"auto"`` site (:mod:`ppl_reparam.auto`): one run of the guide
        finds them, then each candidate is measured by ``gradient_variance`` on its own seed."""
        gradient_variance = auto.measurement("pyro")
        step = self._steps
        resolution = auto.Resolution(self.auto, discover=lambda name, fn: self._auto_candidates(name, fn)[0])
        with isolated_rng(derived_seed(self.auto_seed, step)), auto.resolving(resolution), checking_sites():
            trace = poutine.trace(self._forced(guide)[0]).get_trace(*args, **kwargs)
        found = {name: self._auto_candidates(name, fn) for name, fn in resolution.found.items()}
        groups = {name: _parameters_of(trace, name) for name in found}
        for name, candidates in found.items():
            self.auto.setdefault(name, candidates[0])

        def measure(resolution: dict[str, str], j: int) -> Any:
            trial = type(self)(num_particles=self.num_particles, **self._options)
            trial.auto, trial._auto_fixed, trial.max_plate_nesting = resolution, True, self.max_plate_nesting
            seed = derived_seed(self.auto_seed, step, j)
            stats = gradient_variance(trial, model, guide, *args, num_reps=self.auto_reps, seed=seed, method="loop",
                                      **kwargs)
            return stats, auto.evaluations(self.num_particles, trial.reruns)

        choices, log = auto.choose_sites(found, self.auto, measure, step, groups)
        self.auto_choices.update(choices)
        self.auto_log.extend(log)
        self._auto_round = step

    def choose_estimators(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> dict[str, str]:
        """Choose the estimator of every ``"auto"`` site of ``guide`` now, at the current parameters (the
        ELBO otherwise does at its first step); returns :attr:`auto` (empty for a guide without such
        sites). The parameters, the optimizer and the caller's random state are left alone."""
        if not self._auto_fixed:
            self._choose_auto(model, guide, args, kwargs)
        return dict(self.auto)

    def _resolved(self, call: Callable[[], Any], model: Callable, guide: Callable, args: tuple, kwargs: dict) -> Any:
        """``call()`` with the ``"auto"`` sites resolved: chosen first where a run meets one without a
        choice, and again every ``auto_every`` training steps; and, the first time, after fitting the
        RELAX controls (``relax_fit``)."""
        self.fit_once(model, guide, *args, **kwargs)
        due = self._auto_round is not None and self.auto and self.auto_every is not None
        if not self._auto_fixed and due and self._steps - self._auto_round >= self.auto_every:
            self._choose_auto(model, guide, args, kwargs)
        try:
            return call()
        except auto.Unchosen as e:
            if self._auto_fixed or self._auto_round == self._steps:
                raise ValueError(
                    f"site {e.name!r} asks for estimator 'auto' but was not sampled when the ELBO chose its sites' "
                    "estimators (a guide whose sites change from call to call): give it an estimator"
                ) from None
        self._choose_auto(model, guide, args, kwargs)
        return self._resolved(call, model, guide, args, kwargs)

    # ----------------------------------------------------------------------------- RELAX sites
    def fit_controls(
        self, model: Callable, guide: Callable, *args: Any, steps: int, lr: float = 1e-3, **kwargs: Any
    ) -> None:
        """Train the RELAX controls of ``guide``'s ``"relax"`` sites for ``steps`` steps of Adam (learning
        rate ``lr``, falling linearly to 0) at the current parameters, as a training step would
        (:mod:`ppl_reparam.pyro.relax`), leaving the model's and guide's parameters, their ``.grad``, any
        optimizer and the caller's random state alone (the draws come from ``auto_seed``). ``relax_fit=N``
        does this for ``N`` steps before the ELBO's first estimate; a guide without such sites is left as
        it is."""
        if type(steps) is not int or steps < 0:
            raise ValueError(f"steps must be a number of steps (0 or more), got {steps!r}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        with isolated_rng(derived_seed(self.auto_seed, 0x7E1A)), torch.enable_grad():
            fit = lambda: self._fit_controls(model, guide, args, kwargs, steps, lr)  # noqa: E731
            self._resolved(fit, model, guide, args, kwargs)

    def fit_once(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> None:
        """Fit the RELAX controls for ``relax_fit`` steps (:meth:`fit_controls`) unless this ELBO did
        already (its first estimate does)."""
        if not self._fitted:
            self._fitted = True
            self.fit_controls(model, guide, *args, steps=self.relax_fit, **kwargs)

    def _fit_controls(self, model: Callable, guide: Callable, args: tuple, kwargs: dict, steps: int, lr: float) -> None:
        optimizer = None
        for _ in range(steps):
            found: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
            for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
                surrogate = self._sums(model_trace, guide_trace, args, kwargs).surrogate
                if not guide_trace.controls:
                    return
                params = param_leaves(model_trace, guide_trace)
                scaled = surrogate / self.num_particles if self.num_particles > 1 else surrogate
                for p, g in zip(guide_trace.controls, self._relax_gradients(scaled, params, guide_trace)[1]):
                    if g is not None:
                        found[id(p)] = (p, g if id(p) not in found else found[id(p)][1] + g)
            if optimizer is None:
                optimizer = torch.optim.Adam([p for p, _ in found.values()], lr=lr)
                # the step falls linearly to 0: the noise of single-sample gradients does not keep the
                # control wandering around its optimum at the end
                schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1 - t / steps)
            saved = {id(p): p.grad for p, _ in found.values()}
            for p, g in found.values():
                if not torch.isfinite(g).all():
                    raise ValueError("RELAX's control got a NaN or infinite gradient while fitting; check the "
                                     "model's factors, or fit with a lower lr")
                p.grad = g
            optimizer.step()
            schedule.step()
            for p, _ in found.values():
                p.grad = saved[id(p)]

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self._options.items())
        return f"{type(self).__name__}(num_particles={self.num_particles}, {opts})"

    # ----------------------------------------------------------------------------------- traces
    def _forced(self, guide: Callable, track: bool = False) -> tuple[Callable, ForceEstimatorMessenger]:
        """``guide`` run under this ELBO's estimator, its score-function samples tracked and its pathwise
        ones drawn from the coupled noise if ``track`` (the ELBO's own traces, not a nesting guess)."""
        noise = None
        if track and self.noise is not None:
            noise = ParticleNoise(self.noise, self.num_particles, self._particle_dim())
        forced = ForceEstimatorMessenger(self.estimator, self.sites, track, noise)

        def forced_guide(*args: Any, **kwargs: Any) -> Any:
            with forced:
                return guide(*args, **kwargs)

        return forced_guide, forced

    def _get_trace(self, model: Callable, guide: Callable, args: tuple, kwargs: dict):
        forced_guide, forced = self._forced(guide, track=True)
        allowed = mv.ALLOWED.set(True)
        try:
            with checking_sites() as nested, auto.resolving(auto.Resolution(self.auto)):
                model_trace, guide_trace = get_importance_trace(
                    "flat", self.max_plate_nesting, model, forced_guide, args, kwargs
                )
        finally:
            mv.ALLOWED.reset(allowed)
        # the sites that add a term of their own (measure-valued, REBAR), and what they rerun
        guide_trace.own_terms = [(n, guide_trace.nodes[n]) for n in dict.fromkeys(forced.own_terms)]
        guide_trace.programs = (model, guide)
        check_named_sites(
            [forced.choices, *nested],
            (n for n, s in model_trace.nodes.items() if s["type"] == "sample"),
            forced.choices.seen,
        )
        sg.check_not_enumerated(
            (
                (name, site["infer"], site["fn"])
                for name, site in model_trace.nodes.items()
                if site["type"] == "sample" and not site["is_observed"]
            ),
            guide_trace.nodes,
            describe,
        )
        if is_validation_enabled():
            check_if_enumerated(guide_trace)
        if self.analytic_kl and any(
            is_guide_latent(site) and site["fn"].has_rsample for site in guide_trace.nodes.values()
        ):
            _check_mean_field(model_trace, guide_trace)  # dependencies on rsample'd sites are not tracked
        return model_trace, guide_trace

    def _guess_max_plate_nesting(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> None:
        """Pyro's guess, from a run of the guide under this ELBO's estimator (so that a score-function
        site's sample never reaches the model with a gradient)."""
        resolution = auto.Resolution(self.auto, discover=lambda name, fn: self._auto_candidates(name, fn)[0])
        with checking_sites(), auto.resolving(resolution):
            super()._guess_max_plate_nesting(model, self._forced(guide)[0], args, kwargs)

    def _particle_dim(self) -> int | None:
        if self.vectorize_particles and self.num_particles > 1:
            return -self.max_plate_nesting
        return None

    # ------------------------------------------------------------------------------ loss terms
    def _closed_form_kl(self, q_site: sg.Site, p_site: sg.Site | None) -> torch.Tensor | None:
        """Closed-form KL(q || p), or -H(q) under a flat prior, scaled and masked as the guide site;
        None where there is none (:func:`ppl_reparam.surrogate.closed_form_kl`)."""
        node = q_site.node
        p = None if p_site is None else p_site.node["fn"]
        kl = sg.closed_form_kl(
            q_site.name,
            _unwrap_forced(node["fn"]),
            p,
            kl_divergence=kl_divergence,
            flat_prior=p is not None and isinstance(leaf_distribution(p), ImproperUniform),
            describe=describe,
            registry="torch.distributions.kl (torch.distributions.kl.register_kl)",
        )
        if kl is None:
            return None
        # a fully masked pair gives the float 0.0
        kl = torch.as_tensor(kl).expand(node["fn"].batch_shape)
        return scale_and_mask(kl, node["scale"], node["mask"])

    def _path_log_prob(self, site: sg.Site) -> torch.Tensor:
        r"""The path derivative of a guide site's :math:`\log q`, value-equal to it:
        :math:`\log q_\phi(z) - \log q_\phi(\bot z) + \bot \log q_\phi(\bot z)` (sticking the landing)."""
        node = site.node
        at_fixed_z = scale_and_mask(node["fn"].log_prob(node["value"].detach()), node["scale"], node["mask"])
        return node["log_prob"] - at_fixed_z + at_fixed_z.detach()

    def _terms(self, model_trace: Trace, guide_trace: Trace) -> tuple[list[sg.Term], list[frozenset], list]:
        """The loss terms (plain tensors), the score-function sites each depends on, and the
        score-function sites (:mod:`ppl_reparam.surrogate`)."""
        guide = []
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample":
                latent = is_guide_latent(site)
                score = latent and not site["fn"].has_rsample
                guide.append(sg.Site(name, _frames(site), site["log_prob"], latent, score, site, site["log_prob_sum"]))
        model = {
            name: sg.Site(name, _frames(site), site["log_prob"], node=site, total=site["log_prob_sum"])
            for name, site in model_trace.nodes.items()
            if site["type"] == "sample"
        }
        terms = sg.loss_terms(
            guide,
            model,
            analytic_kl=self.analytic_kl,
            stl=self.stl,
            closed_form_kl=self._closed_form_kl,
            path_log_prob=self._path_log_prob,
        )
        deps = [deps_of(t.value) for t in terms]
        if any(deps):  # tracked tensors: check the closed forms, and let the surrogate compute on plain ones
            sg.check_closed_forms(terms, deps)
            terms = [
                sg.Term(t.site, t.frames, untrack(t.value), untrack(t.grad), t.closed_form, t.sign, untrack(t.total))
                for t in terms
            ]
        # Pyro's score function is neither scaled nor masked (pyro #555; see ppl_reparam.surrogate). A
        # partially reparameterized site (a rejection sampler) has one beside its path derivative; its
        # sample is not tracked (such samplers may cache it by identity), so its cost holds every term.
        with_score = [s for s in guide if s.latent and not is_identically_zero(s.node["score_parts"].score_function)]
        score_sites = [
            sg.ScoreSite(s.name, s.frames, untrack(s.node["score_parts"].score_function), s.node["scale"])
            for s in with_score
        ]
        untracked = frozenset(s.name for s in with_score if not s.score)
        if untracked:
            deps = [d | untracked for d in deps]
        return terms, deps, score_sites

    def _particle_losses(self, model_trace: Trace, guide_trace: Trace, args: tuple, kwargs: dict) -> _Particles:
        """The loss (-ELBO) and surrogate loss summed per particle (0-d without a particle plate; see
        :meth:`_per_particle`), with the loss terms and the score-function costs a baseline learns from;
        the callers check the loss is finite (:func:`_raise_non_finite`), where they read it anyway."""
        dim = self._particle_dim()
        self.reruns = 0
        guide_trace.controls = []  # the parameters of the RELAX controls this trace's surrogate uses
        guide_trace.relax_weights = []  # and each RELAX site's log q(b) and control c(z~)
        terms, deps, score_sites = self._terms(model_trace, guide_trace)
        loss, surrogate = sg.totals(terms, dim, OPS)
        loss = torch.as_tensor(loss)
        learned = []
        for site, cost in zip(score_sites, sg.site_costs(terms, deps, score_sites, OPS).values()):
            b = None
            if self.baseline is not None:
                ctx = Context(dim, _averaged_dims(site.frames, cost), args, kwargs)
                unscaled = sg.unscaled(cost, site.scale, OPS)
                b = self.baseline.value(site.name, unscaled, ctx)
                learned.append((site.name, unscaled, ctx))
            surrogate = surrogate + sg.per_particle(sg.score_term(site, cost, b, OPS), dim, OPS)
        for name, node in getattr(guide_trace, "own_terms", ()):
            kind = node["fn"].elbo_term
            if kind == "measure":
                term = self._measure_term(name, node, terms, deps, guide_trace, args, kwargs)
                surrogate = surrogate + sg.per_particle(term, dim, OPS)
            else:
                for term in self._relaxed_term(name, node, terms, deps, guide_trace, args, kwargs):
                    surrogate = surrogate + sg.per_particle(term, dim, OPS)
        return _Particles(loss, torch.as_tensor(surrogate), terms, learned)

    # --------------------------------------------------------------- measure-valued and REBAR sites
    def _rerun_cost(
        self, name: str, node: dict, terms: list[sg.Term], deps: list[frozenset], guide_trace: Trace,
        args: tuple, kwargs: dict, grad: bool,
    ) -> tuple[Callable[[torch.Tensor], torch.Tensor], frozenset]:
        """``(cost, plates)``: ``cost(value)`` reruns guide and model with the site ``name`` set to
        ``value`` (:meth:`_rerun`) and sums the terms that depend on its sample, keeping the dims of
        ``plates`` (size 1 elsewhere; one extra size-1 dim per event dim): the plates of the site in which
        every such term lies, so that each element's cost is its own terms. Every call of one ``cost``
        draws the sites after ``name`` from the same random numbers; ``grad`` keeps the gradient."""
        if self.compiled:
            raise ValueError(
                f"site {name!r}: the {sg.OWN_TERM_NAMES[node['fn'].elbo_term]} reruns guide and model, which a "
                f"compiled graph cannot; use {type(self).__name__.removeprefix('Jit')} for it"
            )
        fn = node["fn"]
        frames = _frames(node)
        layout = sg.rerun_layout(name, frames, fn.batch_shape, len(fn.event_shape), terms, deps)
        seed = int(torch.randint(0, 2**62, ()))
        programs = guide_trace.programs

        def cost(value: torch.Tensor) -> torch.Tensor:
            self.reruns += 1
            rerun = self._rerun(programs, guide_trace, name, value, seed, args, kwargs, grad)
            total = torch.as_tensor(sg.rerun_cost(layout, frames, rerun, OPS))
            return total if grad else total.detach()

        return cost, layout.plates

    def _measure_term(
        self, name: str, node: dict, terms: list[sg.Term], deps: list[frozenset], guide_trace: Trace,
        args: tuple, kwargs: dict,
    ) -> torch.Tensor:
        """The surrogate of the measure-valued site ``name`` (:mod:`ppl_reparam.pyro.measure_valued`):
        its cost is the terms that depend on its sample, re-evaluated by :meth:`_rerun`; a plate's
        elements move together where its elements' costs are their own (:meth:`_rerun_cost`)."""
        fn = node["fn"]
        cost, plates = self._rerun_cost(name, node, terms, deps, guide_trace, args, kwargs, grad=False)
        leaf, transforms = leaf_path(fn)
        value = untrack(node["value"])
        plate_dims = frozenset(d - len(fn.event_shape) for d in plates)
        return mv.site_term(name, leaf, transforms, value, len(fn.event_shape), plate_dims, cost, self.coupling)

    def _relaxed_term(
        self, name: str, node: dict, terms: list[sg.Term], deps: list[frozenset], guide_trace: Trace,
        args: tuple, kwargs: dict,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The surrogate's two parts at the REBAR or RELAX site ``name``
        (:func:`ppl_reparam.pyro.rebar.site_terms`): its cost from this trace, the control variate from
        reruns at the relaxed bits (Bernoulli sites) and, for RELAX, its network
        (:mod:`ppl_reparam.pyro.relax`)."""
        fn = node["fn"]
        kind = fn.elbo_term
        frames = _frames(node)
        value = untrack(node["value"])
        leaf = leaf_path(fn)[0]
        shape = relaxation_shape(leaf, value.shape)
        if fn.uniforms is None or fn.uniforms.shape != shape:
            raise ValueError(sg.GIVEN_DRAW.format(name=name, what=sg.OWN_TERM_NAMES[kind]))
        log_q = fn.base_dist.score_parts(value).score_function  # unscaled, as a score-function site's
        site = sg.ScoreSite(name, frames, log_q, node["scale"])
        f = sg.site_costs(terms, deps, [site], OPS)[name]
        bits = isinstance(leaf, torch.distributions.Bernoulli)
        if bits:  # the relaxed bits' cost, from reruns (which draw their seed first)
            cost, plates = self._rerun_cost(name, node, terms, deps, guide_trace, args, kwargs, grad=True)
        elif self.compiled:
            raise ValueError(f"site {name!r}: the RELAX estimator learns its control by a second derivative, which a "
                             f"compiled graph cannot; use {type(self).__name__.removeprefix('Jit')} for it")
        else:
            plates = sg.rerun_layout(name, frames, fn.batch_shape, len(fn.event_shape), terms, deps).plates
        logits = leaf.logits.expand(shape)
        finfo = torch.finfo(logits.dtype)
        v = torch.rand_like(fn.uniforms).clamp(finfo.tiny, 1 - finfo.eps)
        # the draw is the one these uniforms made
        z, z_tilde = relaxed_pair(logits, fn.uniforms, v)[1:3] if bits else gumbel_pair(logits, fn.uniforms, v)[1:]
        event = tuple(range(-len(fn.event_shape), 0))

        def relaxed_cost(x: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
            c = cost(torch.sigmoid(x / temperature))
            return c.sum(event) if event else c

        if kind == "rebar":
            eta, temperature = self.rebar_eta, self.rebar_temperature
            return rb.site_terms(log_q, f, z, z_tilde, lambda x: eta * relaxed_cost(x, temperature))[:2]
        module = self._control(name, fn, z, bits, guide_trace)
        batch = len(fn.batch_shape)
        kept = tuple(n if i - batch in plates else 1 for i, n in enumerate(fn.batch_shape))

        def control(x: torch.Tensor) -> torch.Tensor:
            c = sg.reduce_to(module.network(x, batch), kept, OPS)
            return c + module.eta * relaxed_cost(x, module.log_temperature.exp()) if bits else c

        score, correction, c_tilde = rb.site_terms(log_q, f, z, z_tilde, control)
        guide_trace.relax_weights.append((log_q, c_tilde))
        return score, correction

    def _control(
        self, name: str, fn: torch.distributions.Distribution, z: torch.Tensor, bits: bool, guide_trace: Trace
    ) -> rx.RelaxControl:
        """RELAX's control of the site ``name`` (made at its first draw, ``z`` its relaxation), registered
        with Pyro's param store (:mod:`ppl_reparam.pyro.relax`); its parameters join the trace's
        ``controls``, which :meth:`_loss_and_grads` trains."""
        size = math.prod(z.shape[len(fn.batch_shape):])
        module = self._controls.get(name)
        if module is None:
            start = (self.rebar_temperature, self.rebar_eta) if bits else (None, None)
            with isolated_rng(zlib.crc32(name.encode())):  # its initial weights draw from a stream of their own
                module = rx.RelaxControl(size, self.relax_hidden, *start)
            module = self._controls[name] = module.to(dtype=z.dtype, device=z.device)
        elif module.net[0].in_features != size:
            raise ValueError(
                f"site {name!r}: RELAX's control takes {module.net[0].in_features} numbers per batch element (the "
                f"site's relaxation at its first draw), and this draw has {size}: a site whose event shape "
                "changes from step to step cannot keep one learned control"
            )
        module = pyro.module(rx.PREFIX + name, module, update_module_params=True)
        guide_trace.controls.extend(module.parameters())
        return module

    def _rerun(
        self, programs: tuple[Callable, Callable], guide_trace: Trace, name: str, value: torch.Tensor, seed: int,
        args: tuple, kwargs: dict, grad: bool = False,
    ) -> list[sg.Term]:
        """The loss terms of guide and model run again with the sites before ``name`` replayed, ``name``
        set to ``value`` and the sites after it drawn from torch's generator seeded with ``seed`` (the
        caller's generator is left as it was); with ``grad``, with the gradient through ``value`` and
        without validation (``value`` may be a relaxation of a discrete site's)."""
        model, guide = programs
        replayed = Trace()
        for n, site in guide_trace.nodes.items():
            if site["type"] == "sample":
                replayed.add_node(n, **{**site, "value": value if n == name else untrack(site["value"]).detach()})
            if n == name:
                break
        forced_guide, _ = self._forced(poutine.replay(guide, trace=replayed))
        allowed = mv.ALLOWED.set(True)
        devices = [value.device.index or 0] if value.is_cuda else []
        try:
            with (
                torch.random.fork_rng(devices=devices),
                torch.enable_grad() if grad else torch.no_grad(),
                pyro.validation_enabled(not grad and is_validation_enabled()),
                checking_sites(),
                warnings.catch_warnings(),
                auto.resolving(auto.Resolution(self.auto)),
            ):
                warnings.simplefilter("ignore")  # the first run gave them
                seed_torch(seed)
                model_trace, rerun_trace = get_importance_trace(
                    "flat", self.max_plate_nesting, model, forced_guide, args, kwargs
                )
                return self._terms(model_trace, rerun_trace)[0]
        finally:
            mv.ALLOWED.reset(allowed)

    def _relax_gradients(
        self, surrogate: torch.Tensor, params: list[torch.Tensor], guide_trace: Trace
    ) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
        r"""The gradient estimate :math:`\hat g` of ``params`` (the gradient of ``surrogate``, scaled per
        particle) and the gradient, in the parameters :math:`\phi` of the trace's RELAX controls, of
        :math:`\|\hat g_\theta\|^2`, its part in the guide's parameters :math:`\theta`: the
        single-sample variance up to a constant, which the controls learn to lower
        (:mod:`ppl_reparam.pyro.relax`).

        With :math:`\hat g_\theta = \sum_i (f_i - c_\phi(\tilde z)_i)\, a_i + h_\phi`, :math:`a_i =
        \nabla_\theta \log q_i` and :math:`h_\phi = \nabla_\theta (c_\phi(z) - c_\phi(\tilde z))`, the
        surrogate holds the weights :math:`f_i - c_i` constant (they must not be differentiated in
        :math:`\theta`), so :math:`\nabla_\phi \|\hat g_\theta\|^2 = 2 \hat g_\theta \cdot
        \nabla_\phi h_\phi - 2 \sum_i (\hat g_\theta \cdot a_i) \nabla_\phi c_i`: the first term from
        the graph of :math:`\hat g`, the second from each RELAX site's :math:`\log q` and
        :math:`c(\tilde z)`, with :math:`\hat g_\theta \cdot a_i` from one more backward pass through
        :math:`\log q`."""
        controls = guide_trace.controls
        grads = torch.autograd.grad(surrogate, params, create_graph=True, allow_unused=True)
        guide = {id(p) for p in param_leaves(guide_trace)}
        pairs = [(p, g) for p, g in zip(params, grads) if id(p) in guide and g is not None]
        detached = [None if g is None else g.detach() for g in grads]
        if not pairs:
            return detached, [None] * len(controls)
        theta, g_theta = zip(*pairs)
        objective = torch.stack([(g**2).sum() for g in g_theta]).sum()
        for log_q, c_tilde in guide_trace.relax_weights:
            # ghat . a_i, summed over the elements i that share an element of c_tilde
            x = torch.zeros_like(c_tilde, requires_grad=True)
            a = torch.autograd.grad((log_q * x).sum() / self.num_particles, theta, create_graph=True, allow_unused=True)
            along = sum((ai * gi.detach()).sum() for ai, gi in zip(a, g_theta) if ai is not None)
            if isinstance(along, torch.Tensor) and along.requires_grad:
                (k,) = torch.autograd.grad(along, x)
                objective = objective - 2 * (k * c_tilde).sum()
        if not objective.requires_grad:
            return detached, [None] * len(controls)
        return detached, list(torch.autograd.grad(objective, controls, allow_unused=True))

    def _sums(self, model_trace: Trace, guide_trace: Trace, args: tuple, kwargs: dict) -> _Particles:
        """:meth:`_particle_losses` with the loss and surrogate summed over the trace's particles (0-d)."""
        loss, surrogate, terms, costs = self._particle_losses(model_trace, guide_trace, args, kwargs)
        if loss.dim():  # a particle plate: sum its particles (one particle's 0-d sums are kept as they are)
            loss, surrogate = (x.sum() for x in self._per_particle(loss, surrogate))
        return _Particles(loss, surrogate, terms, costs)

    def _per_particle(self, loss: torch.Tensor, surrogate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The sums of :meth:`_particle_losses` (0-d without a particle plate; along it, where a term
        that does not vary across particles may leave a size-1 dim) as vectors of the trace's particles."""
        n = self.num_particles if self._particle_dim() is not None else 1
        loss, surrogate = loss.reshape(-1), surrogate.reshape(-1)
        if loss.shape[0] != n:  # terms that do not vary across particles
            loss = loss.expand(n)
        if surrogate.shape[0] != n:
            surrogate = surrogate.expand(n)
        return loss, surrogate

    def particle_losses(
        self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and surrogate loss of each particle, two tensors of shape ``(num_particles,)``.

        The gradient of ``surrogate[i]`` is particle ``i``'s single-sample gradient estimate; the
        ELBO's estimate is their mean. :func:`~ppl_reparam.pyro.gradient_variance` builds on this.
        """
        return self._resolved(lambda: self._particle_losses_of(model, guide, args, kwargs), model, guide, args, kwargs)

    def _particle_losses_of(self, model: Callable, guide: Callable, args: tuple, kwargs: dict):
        pairs = []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            loss, surrogate, terms, _ = self._particle_losses(model_trace, guide_trace, args, kwargs)
            if not torch.isfinite(loss.sum()):
                _raise_non_finite(terms, guide_trace, model_trace)
            pairs.append(self._per_particle(loss, surrogate))
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
        total = self._resolved(lambda: self._loss_and_grads(model, guide, args, kwargs), model, guide, args, kwargs)
        self._steps += 1
        return total

    def _loss_and_grads(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> float:
        total = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            loss, surrogate, terms, costs = self._sums(model_trace, guide_trace, args, kwargs)
            value = loss.item()
            if not math.isfinite(value):
                _raise_non_finite(terms, guide_trace, model_trace)
            total += value / self.num_particles
            params = param_leaves(model_trace, guide_trace)
            if params and surrogate.requires_grad:
                scaled = surrogate / self.num_particles if self.num_particles > 1 else surrogate
                if guide_trace.controls:
                    grads, control_grads = self._relax_gradients(scaled, params, guide_trace)
                    _accumulate(params, grads)
                    _accumulate(guide_trace.controls, control_grads)
                else:
                    scaled.backward(retain_graph=True)
                _check_gradients(params, terms)
            for site, cost, ctx in costs:
                self.baseline.update(site, cost, ctx)
        return total


def _accumulate(params: list[torch.Tensor], grads: Iterable[torch.Tensor | None]) -> None:
    """Add ``grads`` to the ``.grad`` of ``params`` (None: nothing), as ``backward`` does."""
    for p, g in zip(params, grads):
        if g is not None:
            p.grad = g if p.grad is None else p.grad + g


def _parameters_of(trace: Trace, name: str) -> list[str]:
    """The param sites of ``trace`` that the distribution of its site ``name`` depends on (through
    autograd: the log density of its value has a gradient in them)."""
    params = {n: site["value"].unconstrained() for n, site in trace.nodes.items() if site["type"] == "param"}
    site = trace.nodes[name]
    log_prob = site["fn"].log_prob(site["value"].detach()).sum()
    if not params or not log_prob.requires_grad:
        return []
    grads = torch.autograd.grad(log_prob, list(params.values()), allow_unused=True, retain_graph=True)
    return [n for n, g in zip(params, grads) if g is not None]


def param_leaves(*traces: Trace) -> list[torch.Tensor]:
    """The unconstrained leaf tensors of the param sites in ``traces`` (what optimizers update)."""
    found = {}
    for trace in traces:
        for site in trace.nodes.values():
            if site["type"] == "param":
                found[site["name"]] = site["value"].unconstrained()
    return list(found.values())


def _check_gradients(params: list[torch.Tensor], terms: list[sg.Term]) -> None:
    """Raise a ValueError naming the first site whose loss term gives a non-finite gradient."""
    grads = [p.grad for p in params if p.grad is not None]
    # a cheap screen (one value, one sync): a NaN or infinity anywhere makes the sum of sums non-finite
    if not grads or torch.isfinite(torch.stack([g.sum() for g in grads]).sum()):
        return
    if all(torch.isfinite(g).all() for g in grads):  # only the screen's sum overflowed
        return
    for term in terms:
        if not isinstance(term.value, torch.Tensor) or not term.value.requires_grad:
            continue
        grads = torch.autograd.grad(term.value.sum(), params, retain_graph=True, allow_unused=True)
        if any(g is not None and not torch.isfinite(g).all() for g in grads):
            raise ValueError(f"site {term.site!r}: its loss term has a NaN or infinite gradient")
    raise ValueError(
        "NaN or infinite gradient, though no single site's loss term has one (infinities that "
        "cancel in the surrogate?); check the guide's log_prob and the model's factors"
    )


class ScoreFunctionELBO(EstimatorELBO):
    r"""A Pyro ELBO whose gradient takes the score-function (REINFORCE) estimator
    :math:`E_q[f(z)\, \nabla_\phi \log q_\phi(z)]` at every guide latent (Williams 1992; Ranganath,
    Gerrish and Blei 2014), Rao-Blackwellized as :mod:`ppl_reparam.surrogate` describes: unbiased on every
    site, discrete and guide-only (auxiliary) ones included, and equal to Pyro's ``TraceGraph_ELBO`` on
    the same draws. ``sites=[...]`` forces the named sites only (a site's own ``infer={"estimator":
    ...}`` holds unless named).

    :param num_particles: samples per gradient estimate; ``vectorize_particles`` draws them in one pass
        of Pyro's particle plate (models must respect ``max_plate_nesting``, guessed from a first run
        when not given).
    :param analytic_kl: closed-form KL or entropy (Kingma and Welling's estimator B), see the module.
    :param baseline: :mod:`ppl_reparam.pyro.baselines` (a name, a number or an instance).
    :param stl: sticking the landing at reparameterized sites.
    :param antithetic: draw the pathwise sites' particles in antithetic pairs; ``qmc``: on a randomized
        Sobol point set (:mod:`ppl_reparam.noise`: Normal sites and element-wise transforms of them,
        vectorized particles, no leave-one-out baseline).
    """

    estimator = "score"


class PathwiseELBO(EstimatorELBO):
    r"""A Pyro ELBO whose gradient takes the pathwise (reparameterization) estimator
    :math:`E_\epsilon[\nabla_\phi f(g_\phi(\epsilon))]` at every guide latent (Kingma and Welling 2014;
    Rezende, Mohamed and Wierstra 2014; implicit reparameterization for Gamma, Beta, Dirichlet:
    Figurnov, Mohamed and Mnih 2018): equal to Pyro's ``Trace_ELBO`` on a reparameterized guide. A site
    whose family has no ``rsample`` (Bernoulli, Categorical, ...) is a ValueError naming it: there is
    no silent fallback to the score function. Options as :class:`ScoreFunctionELBO`'s.
    """

    estimator = "pathwise"


class MeasureValuedELBO(EstimatorELBO):
    r"""A Pyro ELBO whose gradient takes the measure-valued estimator at every guide latent (Pflug 1989;
    Mohamed, Rosca, Figurnov and Mnih 2020, section 6): for each parameter element :math:`\theta_j` of a
    site's distribution, :math:`c_j\,(c_s(z^+_j) - c_s(z^-_j))` with :math:`z^\pm_j` drawn from the two
    sides of the weak derivative and the site's cost :math:`c_s` re-evaluated by rerunning guide and model
    (:mod:`ppl_reparam.pyro.measure_valued`). Unbiased, with no differentiable sampler or model needed,
    at two runs per parameter element outside plates (the cost grows with the parameter dimension).
    Families: Normal (and LogNormal), Exponential, Gamma (rate), Poisson, Bernoulli, Categorical,
    OneHotCategorical; any other is a ValueError naming the site.

    :param coupling: common random numbers for the two sides of each pair (default True).
    Other options as :class:`ScoreFunctionELBO`'s, without baselines (a difference needs none); not
    compiled (``pyro.ops.jit``).
    """

    estimator = "measure"


class RebarELBO(EstimatorELBO):
    r"""A Pyro ELBO whose gradient takes REBAR (Tucker et al. 2017) at every Bernoulli guide latent: the
    score function with the control variate :math:`\eta\, c(\sigma(z/\lambda))`, the site's own cost at
    the relaxed bits, and its reparameterized correction (:mod:`ppl_reparam.pyro.rebar`). Unbiased for
    the discrete ELBO; the model must accept values in (0, 1) at the bits. A site of another family is a
    ValueError naming it (force ``"rebar"`` on the Bernoulli sites only, with ``sites=`` or
    :func:`force_estimator`).

    :param rebar_temperature: :math:`\lambda` (default 0.5); ``rebar_eta``: :math:`\eta` (default 1).
    Other options as :class:`ScoreFunctionELBO`'s, without baselines; not compiled.
    """

    estimator = "rebar"


class RelaxELBO(EstimatorELBO):
    r"""A Pyro ELBO whose gradient takes RELAX (Grathwohl et al. 2018) at every Bernoulli, Categorical and
    OneHotCategorical guide latent: the estimator of :class:`RebarELBO` with a learned control,
    :math:`\eta\, c(\sigma(z/\lambda)) + r_\rho(z)` at Bernoulli sites and :math:`r_\rho(z)` at categorical
    ones (:mod:`ppl_reparam.pyro.relax`). Unbiased for the discrete ELBO whatever the control. Each
    ``loss_and_grads`` (``SVI.step``) also puts into the control's parameters (Pyro params
    ``relax.<site>$$$...``) the gradient of the squared norm of the guide parameters' estimate, whose
    mean is that of its variance, so the optimizer that trains the guide trains the control to lower
    it (at one more backward pass through the estimate); :meth:`differentiable_loss` and
    :func:`~ppl_reparam.pyro.gradient_variance` leave the control as it is. The control is named after
    its site, as Pyro params are: RelaxELBOs on the same guide share it. A site of another family is a
    ValueError naming it.

    :param relax_hidden: hidden units of :math:`r_\rho` (default 32; its output layer starts at zero).
    :param relax_fit: steps of :meth:`fit_controls` (the control alone, at the current parameters) before
        the first estimate (default 0), e.g. to measure RELAX with a fitted control by
        :func:`~ppl_reparam.pyro.gradient_variance`.
    :param rebar_temperature: the starting :math:`\lambda` (default 0.5); ``rebar_eta``: the starting
        :math:`\eta` (default 1): at the start RELAX is REBAR.
    Other options as :class:`ScoreFunctionELBO`'s, without baselines; not compiled.
    """

    estimator = "relax"


class _Compiled:
    """The ``pyro.ops.jit`` counterpart of an ELBO of this package, on the pattern of Pyro's
    ``JitTrace_ELBO``: the mean loss and surrogate of :meth:`EstimatorELBO.particle_losses` are traced
    once by :func:`pyro.ops.jit.trace` (per distinct ``**kwargs`` and model/guide pair) and replayed as a
    TorchScript graph. The dependency tracking runs while tracing, so the graph holds each cost's exact
    terms; the models must have static structure and take their tensors through ``*args``, as for
    ``JitTrace_ELBO``. A baseline that learns (moving average, learned) updates Python state after
    every step, which a compiled graph cannot: use the non-JIT class for those. Where the loss comes out
    NaN or infinite, the step is rerun without JIT to name the site."""

    compiled = True

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.noise is not None:
            raise ValueError(f"{type(self).__name__}: {self.noise}=True is not compiled; use "
                             f"{type(self).__name__.removeprefix('Jit')} for it")
        if self.auto_every is not None:
            raise ValueError(f"{type(self).__name__}: auto_every re-chooses estimators, which a compiled graph "
                             f"cannot follow; use {type(self).__name__.removeprefix('Jit')} for it")
        if self.baseline is not None and type(self.baseline).update is not Baseline.update:
            raise ValueError(
                f"{type(self).__name__}: the baseline {self.baseline!r} learns from every step, which a compiled "
                f"graph cannot do; use {type(self).__name__.removeprefix('Jit')} for it"
            )
        self._compiled: Callable | None = None

    def _losses(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple[torch.Tensor, ...]:
        kwargs = {**kwargs, "_pyro_model_id": id(model), "_pyro_guide_id": id(guide)}
        if self._compiled is None:
            weakself = weakref.ref(self)

            @pyro.ops.jit.trace(ignore_warnings=self.ignore_jit_warnings, jit_options=self.jit_options)
            def losses(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
                kwargs.pop("_pyro_model_id")
                kwargs.pop("_pyro_guide_id")
                elbo = weakself()
                sums = [elbo._sums(*traces, args, kwargs) for traces in elbo._get_traces(model, guide, args, kwargs)]
                loss = sum((s.loss for s in sums[1:]), sums[0].loss)
                surrogate = sum((s.surrogate for s in sums[1:]), sums[0].surrogate)
                if elbo.num_particles > 1:  # the mean over the particles (a non-finite loss is named eagerly)
                    loss, surrogate = loss / elbo.num_particles, surrogate / elbo.num_particles
                return loss, surrogate

            self._compiled = losses
        return self._compiled(*args, **kwargs)

    def _checked(self, loss: float, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> float:
        if not math.isfinite(loss):
            EstimatorELBO.particle_losses(self, model, guide, *args, **kwargs)  # names the site
            raise ValueError("the loss is NaN or infinite (float overflow in the sum?)")
        return loss

    def particle_losses(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any):
        loss, surrogate = self._resolved(lambda: self._losses(model, guide, args, kwargs), model, guide, args, kwargs)
        self._checked(loss.item(), model, guide, args, kwargs)
        return loss.reshape(1), surrogate.reshape(1)

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """Estimate the loss and accumulate the gradient estimate into the parameters' ``.grad``."""
        loss, surrogate = self._resolved(lambda: self._losses(model, guide, args, kwargs), model, guide, args, kwargs)
        surrogate.backward()
        return self._checked(loss.item(), model, guide, args, kwargs)


class JitScoreFunctionELBO(_Compiled, ScoreFunctionELBO):
    """:class:`ScoreFunctionELBO` compiled with ``pyro.ops.jit`` (see :class:`_Compiled`): the same
    gradients, on the same draws."""


class JitPathwiseELBO(_Compiled, PathwiseELBO):
    """:class:`PathwiseELBO` compiled with ``pyro.ops.jit`` (see :class:`_Compiled`): the same gradients,
    on the same draws."""
