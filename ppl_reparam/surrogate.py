r"""The surrogate loss of this package's ELBOs, written once for both backends (framework-free).

The loss is :math:`L = -\mathrm{ELBO} = \sum_t \ell_t`, a sum of terms over the sites of one
particle's guide and model traces: :math:`\ell_t = \log q_t(z_t)` at a guide site,
:math:`-\log p_t` at a model site, or, with ``analytic_kl=True``, the closed-form
:math:`\mathrm{KL}(q_t \| p_t)` in place of both at a guide latent that has one (elsewhere, as in
``TraceMeanField_ELBO``, the two Monte Carlo terms, with a warning); each scaled and masked as the site
says. Its gradient is that of the surrogate (Schulman, Heess, Weber and Abbeel 2015)

.. math::
    \tilde L = \sum_t g_t
        + \sum_{s \in S} \sum_{i \in s} \log q_s(z_{s,i})\,
          \bot\big(c_{s,i} - \sigma_s b_{s,i}\big),
    \qquad c_s = \Big[\sum_{t:\; s \in D_t} \ell_t\Big]_{\text{summed to the plates of } s}

where :math:`\bot` stops gradients and

- :math:`g_t` is the part of :math:`\ell_t` that carries a gradient at fixed random numbers:
  :math:`\ell_t` itself, but :math:`0` for the Monte Carlo :math:`\log q_s` of a score-function site
  (its gradient at fixed :math:`z_s` has mean zero; the score term carries the rest) and, with
  ``stl=True``, only the path derivative of :math:`\log q_t` at a reparameterized guide latent
  (sticking the landing; Roeder, Wu and Duvenaud 2017);
- :math:`S` holds the score-function sites, guide latents drawn without ``rsample`` (Williams 1992;
  Ranganath, Gerrish and Blei 2014); :math:`i` runs over the elements of site :math:`s`;
- :math:`D_t` is the set of score-function sites whose *sample* the term :math:`\ell_t` depends on,
  found by provenance tracking (Wingate, Goodman, Stuhlmüller and Siskind 2011), as Pyro's and
  NumPyro's ``TraceGraph_ELBO`` do; each backend supplies it. The cost :math:`c_s` therefore holds
  exactly the terms downstream of :math:`z_s` (Rao-Blackwellization), and within a plate of
  :math:`s` only the same element: the other terms have expectation zero against the score;
- :math:`\log q_s` is unscaled and unmasked: a subsampling scale :math:`\sigma_s` multiplies the cost
  once, through its terms, not the score too (pyro #555); a masked element's score still multiplies
  the unmasked terms downstream of it, whose expectation it changes;
- :math:`b_s` is a baseline's prediction of the *unscaled* cost :math:`c_s / \sigma_s` (a control
  variate; zero without one), so it does not change with the batch size.

Each site's score term is summed over its own elements before the sites are added, so sites in
plates of different sizes never broadcast against each other.

A backend builds :class:`Site` records from its traces, calls :func:`loss_terms`, finds each term's
:math:`D_t`, and combines them with :func:`totals`, :func:`site_costs` and :func:`score_term`, passing
an :class:`ArrayOps` for its array library.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Array = Any
"""A torch tensor or a JAX array (or a Python float for an identically zero term)."""


class ArrayOps(Protocol):
    """The few array operations the surrogate needs; each backend supplies one."""

    def sum(self, x: Array, dims: tuple[int, ...]) -> Array:
        """Sum over the (negative) ``dims``, keeping them with size 1."""

    def total(self, x: Array) -> Array:
        """The sum of every element (0-dimensional)."""

    def shape(self, x: Array) -> tuple[int, ...]:
        """The shape of ``x`` (``()`` for a Python number)."""

    def reshape(self, x: Array, shape: tuple[int, ...]) -> Array: ...

    def broadcast_to(self, x: Array, shape: tuple[int, ...]) -> Array: ...

    def stop_gradient(self, x: Array) -> Array: ...

    def where(self, condition: Array, x: Array, y: Array) -> Array: ...


@dataclass(frozen=True)
class Site:
    """One sample site of a guide or model trace, as the surrogate sees it.

    :param frames: the site's vectorized plate frames (objects with a negative ``dim``), the particle
        plate included.
    :param log_prob: the scaled, masked log density of its value, with gradient.
    :param latent: a guide latent whose estimator is chosen (not observed, not a ``Delta``).
    :param score: drawn without ``rsample``: a score-function site.
    :param node: the backend's trace node, handed back to its callbacks.
    :param total: the sum of ``log_prob`` where the backend has it already (Pyro's ``log_prob_sum``),
        used when the particles are not in the arrays.
    """

    name: str
    frames: frozenset
    log_prob: Array
    latent: bool = False
    score: bool = False
    node: Any = None
    total: Array | None = None


@dataclass(frozen=True)
class Term:
    """One additive piece :math:`\\ell_t = \\pm\\,` ``value`` of the loss (``sign`` -1 for a model
    site's log density, so that no array is negated unless a cost needs it) and what it adds to the
    surrogate, ``sign * grad``."""

    site: str
    frames: frozenset
    value: Array
    grad: Array  # value-equal to ``value`` where it carries a gradient; 0.0 where it carries none
    closed_form: bool = False  # a closed-form KL that integrates the site's own sample out
    sign: float = 1.0
    total: Array | None = None  # the sum of ``value``, where the backend has it already

    @property
    def signed(self) -> Array:
        """:math:`\\ell_t`, element by element."""
        return self.value if self.sign > 0 else -self.value


@dataclass(frozen=True)
class ScoreSite:
    """A score-function site: its unscaled, unmasked :math:`\\log q_s(z_s)` (with gradient) and scale."""

    name: str
    frames: frozenset
    log_q: Array
    scale: Array | float


def check_options(
    num_particles: Any,
    sites: Iterable[str] | str | None,
    baseline: Any,
    stl: bool,
    analytic_kl: bool,
    vectorized: bool | None,
) -> tuple[str, ...] | None:
    """Check the options every ELBO of this package takes and return ``sites`` as a tuple (or None).

    ``baseline`` is the backend's baseline object (or None); ``vectorized`` says whether the particles of
    one estimate are side by side where a leave-one-out baseline can compare them (Pyro's
    ``vectorize_particles``; None where the backend always stacks them, as NumPyro does)."""
    if isinstance(num_particles, bool) or not isinstance(num_particles, numbers.Integral) or num_particles < 1:
        raise ValueError(f"num_particles must be a positive integer, got {num_particles!r}")
    if baseline is not None and baseline.needs_particles and (num_particles < 2 or vectorized is False):
        needs = "" if vectorized is None else " and vectorize_particles=True"
        got = "" if vectorized is None else f", vectorize_particles={vectorized}"
        raise ValueError(
            f"baseline {baseline!r} (leave-one-out) compares particles: it needs num_particles >= 2{needs}, "
            f"got num_particles={num_particles}{got}"
        )
    if stl and analytic_kl:
        raise ValueError(
            "stl=True (sticking the landing) drops the score term of the Monte Carlo log q, and "
            "analytic_kl=True has no such term; use one or the other"
        )
    return None if sites is None else tuple([sites] if isinstance(sites, str) else sites)


OWN_TERMS = ("measure", "rebar", "relax")
"""Estimators whose sites add a term of their own to the surrogate (from reruns of guide and model)."""

RELAXED_TERMS = ("rebar", "relax")
"""The estimators of :data:`OWN_TERMS` that draw through a continuous relaxation (given uniforms)."""

OWN_TERM_NAMES = {"measure": "measure-valued estimator", "rebar": "REBAR estimator", "relax": "RELAX estimator"}
"""Each of :data:`OWN_TERMS` as messages name it."""

GIVEN_DRAW = (
    "site {name!r}: the {what} needs the draw its own sampler made (with its relaxation's uniforms), but the "
    "value was given (replayed, substituted or conditioned); use 'score' or 'measure' for this site"
)
"""The error at a REBAR or RELAX site whose value its sampler did not draw (``name``, ``what``)."""


def outside_elbo(term: str) -> str:
    """The error where a site forced to one of :data:`OWN_TERMS` is differentiated by another ELBO."""
    return (
        f"a site forced to the {OWN_TERM_NAMES[term]} is differentiated only by this package's ELBOs "
        "(ScoreFunctionELBO, PathwiseELBO, MeasureValuedELBO, RebarELBO, RelaxELBO); use one of them, or another "
        "estimator for the site"
    )


def check_own_term_options(cls: str, estimator: str, baseline: Any) -> None:
    """Refuse a baseline on an ELBO whose blanket estimator has a control of its own."""
    if estimator in OWN_TERMS and baseline is not None:
        raise ValueError(
            f"{cls}: baselines apply to the score function; the {estimator} estimator has its own control (a "
            "difference of two runs; a relaxation), which a baseline would not add to"
        )


def loss_terms(
    guide: Sequence[Site],
    model: Mapping[str, Site],
    *,
    analytic_kl: bool,
    stl: bool,
    closed_form_kl: Callable[[Site, Site | None], Array],
    path_log_prob: Callable[[Site], Array],
) -> list[Term]:
    """The terms :math:`\\ell_t` with their surrogate parts :math:`g_t`: guide sites in sampling
    order, then the model sites not replaced by a closed-form KL.

    :param closed_form_kl: the backend's scaled :math:`\\mathrm{KL}(q_t \\| p_t)` of a guide latent and
        its model site (None for a guide-only site), or None where it has no closed form: the site then
        keeps its Monte Carlo terms.
    :param path_log_prob: the backend's scaled path derivative of a guide site's :math:`\\log q`.
    """
    terms, closed = [], set()
    for site in guide:
        kl = closed_form_kl(site, model.get(site.name)) if analytic_kl and site.latent else None
        if kl is not None:
            terms.append(Term(site.name, site.frames, kl, kl, closed_form=True))
            closed.add(site.name)
        elif site.score:
            terms.append(Term(site.name, site.frames, site.log_prob, 0.0, total=site.total))
        elif stl and site.latent:
            terms.append(Term(site.name, site.frames, site.log_prob, path_log_prob(site), total=site.total))
        else:
            terms.append(Term(site.name, site.frames, site.log_prob, site.log_prob, total=site.total))
    for name, site in model.items():
        if name not in closed:
            terms.append(Term(name, site.frames, site.log_prob, site.log_prob, sign=-1.0, total=site.total))
    return terms


def check_closed_forms(terms: Sequence[Term], deps: Sequence[frozenset]) -> None:
    """Raise a ValueError for a closed-form KL that depends on its own site's sample: the prior
    :math:`p_t` then reads a site the guide draws after :math:`z_t` from :math:`z_t`, and the closed
    form, which integrates :math:`z_t` out with that site held fixed, is biased (the guide is not mean
    field). ``deps[t]`` must include the site ``t`` wherever its sample was tracked."""
    for term, d in zip(terms, deps):
        if term.closed_form and term.site in d:
            raise ValueError(
                f"site {term.site!r}: analytic_kl=True takes KL(q || p) at this site in closed form, but its "
                f"prior depends on its own sample through sites the guide draws after it ({sorted(d - {term.site})})"
                ", so the closed form is biased (the guide is not mean field). Draw the sites in the model's "
                "order in the guide, or use analytic_kl=False."
            )


def per_particle(x: Array, dim: int | None, ops: ArrayOps) -> Array:
    """Sum ``x`` over every dim but the particle ``dim``: shape ``(particles,)``, or ``()`` when ``x``
    does not vary across particles or ``dim`` is None (particles not in the arrays)."""
    if dim is None:
        return ops.total(x)
    shape = ops.shape(x)
    if len(shape) < -dim:
        return ops.total(x)
    others = tuple(d for d in range(-len(shape), 0) if d != dim)
    return ops.reshape(ops.sum(x, others), (shape[dim],))


def totals(terms: Iterable[Term], dim: int | None, ops: ArrayOps) -> tuple[Array, Array]:
    """Per-particle loss (without gradient) and surrogate without the score terms,
    :math:`\\sum_t \\ell_t` and :math:`\\sum_t g_t`."""
    terms = list(terms)
    # where every term's surrogate part is the term itself (pathwise sites, Monte Carlo KL), the loss is
    # the surrogate's value: one sum instead of two
    separate = any(t.grad is not t.value or isinstance(t.grad, float) for t in terms)
    loss = surrogate = 0.0
    for term in terms:
        value = term.total if dim is None and term.total is not None else per_particle(term.value, dim, ops)
        if separate:
            loss = loss + value if term.sign > 0 else loss - value
            if isinstance(term.grad, float):
                continue
            if term.grad is not term.value:
                value = per_particle(term.grad, dim, ops)
        surrogate = surrogate + value if term.sign > 0 else surrogate - value
    return ops.stop_gradient(loss if separate else surrogate), surrogate


def sum_to(items: Iterable[tuple[frozenset, Array]], target: frozenset, ops: ArrayOps) -> Array:
    """:math:`\\sum` of the arrays, each first summed over its plates that are not in ``target``
    (so an element of a plate in ``target`` gets only the same element of each term)."""
    total = 0.0
    for frames, value in items:
        shape = ops.shape(value)
        dims = tuple(f.dim for f in frames if f not in target and -f.dim <= len(shape) and shape[f.dim] != 1)
        total = total + (ops.sum(value, dims) if dims else value)
    return total


def reduce_to(x: Array, shape: tuple[int, ...], ops: ArrayOps) -> Array:
    """Sum ``x`` over the dims that broadcast against ``shape`` and broadcast it to ``shape``, so
    that ``sum(y * x) == sum(y * reduce_to(x, shape))`` for ``y`` of that shape."""
    x_shape = ops.shape(x)
    extra = len(x_shape) - len(shape)
    dims = tuple(range(-len(x_shape), -len(x_shape) + extra)) if extra > 0 else ()
    dims += tuple(
        -i for i in range(1, min(len(x_shape), len(shape)) + 1) if shape[-i] == 1 and x_shape[-i] != 1
    )
    if dims:
        x = ops.sum(x, dims)
    x_shape = ops.shape(x)
    if extra > 0:
        x = ops.reshape(x, x_shape[extra:])
    return ops.broadcast_to(x, shape)


def site_costs(
    terms: Sequence[Term], deps: Sequence[frozenset], sites: Iterable[ScoreSite], ops: ArrayOps
) -> dict[str, Array]:
    """Each score-function site's cost :math:`c_s` (without gradient), of the shape of its
    :math:`\\log q_s`: the terms that depend on its sample (``deps[t]`` holds the sites term ``t``
    depends on), summed to its plates."""
    costs = {}
    for site in sites:
        items = [(t.frames, t.signed) for t, d in zip(terms, deps) if site.name in d]
        cost = sum_to(items, site.frames, ops)
        costs[site.name] = ops.stop_gradient(reduce_to(cost, ops.shape(site.log_q), ops))
    return costs


@dataclass(frozen=True)
class RerunLayout:
    """How a site whose estimator reruns guide and model (measure-valued, REBAR) reads its cost there.

    :param plates: the (negative) batch dims of the site's plates in which every term that depends on
        its sample lies: their elements' costs are their own terms, so they may move together.
    :param keys: the terms to sum in a rerun, as ``(site, sign, closed_form)``.
    :param shape: the cost's shape: the site's batch shape with size 1 outside ``plates``, then
        ``event_dim`` dims of size 1.
    """

    plates: frozenset
    keys: frozenset
    shape: tuple[int, ...]
    event_dim: int


def rerun_layout(
    name: str, frames: frozenset, batch_shape: tuple[int, ...], event_dim: int,
    terms: Sequence[Term], deps: Sequence[frozenset],
) -> RerunLayout:
    """The :class:`RerunLayout` of the site ``name`` with ``frames`` and shapes, from the loss terms and
    the sites each depends on (:func:`site_costs`'s ``deps``)."""
    downstream = [t for t, d in zip(terms, deps) if name in d]
    plates = frozenset(
        f.dim for f in frames
        if -f.dim <= len(batch_shape) and batch_shape[f.dim] > 1 and all(f in t.frames for t in downstream)
    )
    shape = tuple(n if i - len(batch_shape) in plates else 1 for i, n in enumerate(batch_shape))
    keys = frozenset((t.site, t.sign, t.closed_form) for t in downstream)
    return RerunLayout(plates, keys, shape + (1,) * event_dim, event_dim)


def rerun_cost(layout: RerunLayout, frames: frozenset, terms: Iterable[Term], ops: ArrayOps) -> Array:
    """A rerun's cost of the site with ``frames``: the ``terms`` that ``layout`` keeps, summed to its
    plates, then to ``layout.shape``."""
    total = sum_to(((t.frames, t.signed) for t in terms if (t.site, t.sign, t.closed_form) in layout.keys), frames, ops)
    total = ops.reshape(total, ops.shape(total) + (1,) * layout.event_dim)
    return reduce_to(total, layout.shape, ops)


def unscaled(cost: Array, scale: Array | float, ops: ArrayOps) -> Array:
    """:math:`c_s / \\sigma_s`, what a baseline predicts; 0 where the scale is 0 (a fully masked or
    zero-weight site, whose cost is 0 too)."""
    if isinstance(scale, (int, float)):
        return cost / scale if scale != 0 else 0.0 * cost
    nonzero = scale != 0
    return ops.where(nonzero, cost / ops.where(nonzero, scale, 1.0), 0.0)


def score_term(site: ScoreSite, cost: Array, baseline: Array | None, ops: ArrayOps) -> Array:
    """:math:`\\log q_s(z_s)\\, \\bot(c_s - \\sigma_s b_s)`, element by element (``baseline`` is
    :math:`b_s`, or None for none)."""
    if baseline is not None:
        cost = cost - site.scale * baseline
    return site.log_q * ops.stop_gradient(cost)


def check_not_enumerated(
    model_latents: Iterable[tuple[str, Mapping, Any]], guide_sites: Iterable[str], describe: Callable[[Any], str]
) -> None:
    """Refuse a model latent marked ``infer={"enumerate": ...}`` that the guide does not sample: these
    ELBOs do not enumerate, and would silently draw it from the prior. ``model_latents`` holds each
    unobserved model site's name, ``infer`` dict and distribution."""
    guide_sites = set(guide_sites)
    for name, infer, fn in model_latents:
        if infer.get("enumerate") and name not in guide_sites:
            raise ValueError(
                f"site {name!r}: the model marks {describe(fn)} with infer={{'enumerate': {infer['enumerate']!r}}}, "
                "but this ELBO does not enumerate and would draw it from the prior. Use the framework's "
                "TraceEnum_ELBO for enumerated sites, or sample the site in the guide."
            )


def closed_form_kl(
    name: str,
    q: Any,
    p: Any | None,
    *,
    kl_divergence: Callable[[Any, Any], Array],
    flat_prior: bool,
    describe: Callable[[Any], str],
    registry: str,
) -> Array | None:
    """Closed-form :math:`\\mathrm{KL}(q \\| p)` at site ``name``, or :math:`-H(q)` under a flat prior
    (``flat_prior``: an ``ImproperUniform``); None, with a warning naming the site, the distributions
    and why, where there is none: a guide-only (auxiliary) site (``p`` None, as in AutoGuides), a pair
    with no KL registered (``registry`` says where KLs register), a flat prior over a ``q`` without a
    closed-form entropy. The site's KL is then estimated by Monte Carlo, as Pyro's and NumPyro's
    ``TraceMeanField_ELBO`` do."""
    if p is None:
        reason = f"{describe(q)} is a guide-only (auxiliary) site, with no prior to take the KL against"
    else:
        try:
            return kl_divergence(q, p)
        except NotImplementedError:
            reason = (
                f"KL({describe(q)} || {describe(p)}) has no closed form registered with {registry} (register "
                "one there to use it)"
            )
        if flat_prior:
            try:
                return -q.entropy()
            except NotImplementedError:
                reason = f"the prior is flat and {describe(q)} has no closed-form entropy"
    warnings.warn(
        f"site {name!r}: analytic_kl=True, but {reason}; its KL is estimated by Monte Carlo there (its log q, and "
        "the model's log p where it has one), as TraceMeanField_ELBO does",
        stacklevel=2,
    )
    return None
