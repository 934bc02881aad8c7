"""Per-site choice of the gradient estimator in a Pyro guide.

A guide site's estimator is decided when it is sampled:

- ``"pathwise"`` (reparameterization trick, Kingma and Welling 2014; Rezende et al. 2014): the value is
  drawn with ``rsample``, so gradients flow through it into the loss.
- ``"score"`` (score function, REINFORCE; Williams 1992, Ranganath et al. 2014): the value is drawn with
  ``sample`` and detached; the ELBO then differentiates ``log q`` times the cost.
- ``"measure"`` (measure-valued; Pflug 1989, Mohamed et al. 2020, section 6): drawn as for the score
  function; the ELBO reruns guide and model at the two sides of the weak derivative of each parameter
  (:mod:`ppl_reparam.pyro.measure_valued`).
- ``"rebar"`` (Tucker et al. 2017; Bernoulli sites): the bits are drawn as the sign of a logistic
  relaxation ``z``, kept with them; the ELBO adds REBAR's control variate (:mod:`ppl_reparam.pyro.rebar`).
- ``"relax"`` (Grathwohl et al. 2018; Bernoulli, Categorical, OneHotCategorical sites): drawn from a
  logistic or Gumbel relaxation as for REBAR; the ELBO adds a learned control variate
  (:mod:`ppl_reparam.pyro.relax`).

Only this package's ELBOs implement the last three; under another ELBO (Pyro's ``Trace_ELBO``) such a site
raises a ValueError rather than silently taking the score function.

Pyro cannot set ``has_rsample`` on ``Independent``, ``TransformedDistribution`` or masked
distributions, and its plate broadcasting copies the flag onto expanded copies. Instead of setting the
flag, :func:`force_estimator` wraps the site's distribution in :class:`EstimatorDistribution`, which
carries the choice through ``expand`` and delegates everything else to the wrapped distribution.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import pyro.distributions as dist
import torch
from pyro.distributions import Delta, TorchDistribution
from pyro.distributions.score_parts import ScoreParts
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample

from .. import noise as qn
from ..forcing import ForcedGuide, SiteChoices
from ..measure_valued import check_measure_site, check_rebar_site, check_relax_site
from ..surrogate import OWN_TERMS, RELAXED_TERMS, outside_elbo
from . import measure_valued as mv
from .provenance import track

_EMPTY = torch.Size()

_WRAPPERS = (
    torch.distributions.Independent,
    torch.distributions.TransformedDistribution,
    MaskedDistribution,
    ExpandedDistribution,
)
_GENERIC_WRAPPERS = {*_WRAPPERS, dist.Independent, dist.TransformedDistribution}
"""Wrapper classes shown in messages; named subclasses such as LogNormal stand alone."""


def leaf_distribution(fn: torch.distributions.Distribution) -> torch.distributions.Distribution:
    """The innermost distribution under Independent, Transformed, Masked and Expanded wrappers."""
    while isinstance(fn, (*_WRAPPERS, EstimatorDistribution)):
        fn = fn.base_dist
    return fn


def describe(fn: torch.distributions.Distribution) -> str:
    """A short name for a possibly wrapped distribution, e.g. ``Independent(Bernoulli)``."""
    if isinstance(fn, EstimatorDistribution):
        return describe(fn.base_dist)
    if type(fn) in _GENERIC_WRAPPERS:
        return f"{type(fn).__name__}({describe(fn.base_dist)})"
    return type(fn).__name__


def can_rsample(fn: torch.distributions.Distribution) -> bool:
    """Whether the distribution's family implements ``rsample`` (whatever its ``has_rsample`` flag)."""
    return bool(getattr(type(leaf_distribution(fn)), "has_rsample", False))


def leaf_path(fn: torch.distributions.Distribution) -> tuple[torch.distributions.Distribution, list]:
    """``(the innermost distribution, the transforms applied to its draws, innermost first)`` under
    Independent, Masked, Expanded, Transformed and this module's wrappers."""
    transforms: list = []
    while isinstance(fn, (*_WRAPPERS, EstimatorDistribution)):
        if isinstance(fn, torch.distributions.TransformedDistribution):
            transforms = list(fn.transforms) + transforms
        fn = fn.base_dist
    return fn, transforms


def _normal_path(fn: torch.distributions.Distribution) -> tuple[torch.distributions.Normal, list] | None:
    """:func:`leaf_path` if the innermost distribution is a Normal, else None."""
    leaf, transforms = leaf_path(fn)
    return (leaf, transforms) if isinstance(leaf, torch.distributions.Normal) else None


def check_rebar(name: str, fn: torch.distributions.Distribution) -> None:
    """Raise a ValueError naming the site if ``fn`` is not a Bernoulli under Independent, Masked and
    Expanded wrappers (REBAR relaxes its bits)."""
    leaf, transforms = leaf_path(fn)
    check_rebar_site(name, mv.family_of(leaf), bool(transforms), describe(fn))


def check_relax(name: str, fn: torch.distributions.Distribution) -> None:
    """Raise a ValueError naming the site unless ``fn`` is a Bernoulli, Categorical or OneHotCategorical
    under Independent, Masked and Expanded wrappers (RELAX relaxes its draws)."""
    leaf, transforms = leaf_path(fn)
    check_relax_site(name, mv.family_of(leaf), bool(transforms), describe(fn))


def check_measure(name: str, fn: torch.distributions.Distribution) -> None:
    """Raise a ValueError naming the site if ``fn`` has no weak derivative here."""
    leaf, transforms = leaf_path(fn)
    elementwise = not any(t.domain.event_dim or t.codomain.event_dim for t in transforms)
    check_measure_site(name, mv.family_of(leaf), elementwise, describe(fn), [n for n, _ in mv.SUPPORTED])


class ParticleNoise:
    """Antithetic or randomized quasi-Monte Carlo noise for the pathwise sites of one vectorized trace
    (:mod:`ppl_reparam.noise`): the ``num_particles`` particles lie along batch dim ``particle_dim``."""

    def __init__(self, kind: str, num_particles: int, particle_dim: int):
        self.kind, self.num_particles, self.particle_dim = kind, num_particles, particle_dim

    def check(self, name: str, fn: torch.distributions.Distribution) -> None:
        """Raise a ValueError naming the site if ``fn`` is not an element-wise transform of a Normal."""
        path = _normal_path(fn)
        shape = fn.batch_shape + fn.event_shape
        if path is None or any(t.forward_shape(shape) != shape for t in path[1]):
            raise qn.unsupported(name, self.kind, describe(fn))

    def standard_normal(self, shape: torch.Size, axis: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Noise of ``shape``, marginally N(0, 1) everywhere, coupled along the particles' ``axis``."""
        k = self.num_particles
        if self.kind == "antithetic":
            half = torch.randn(shape[:axis] + (k // 2,) + shape[axis + 1 :], dtype=dtype, device=device)
            return torch.cat([half, -half], axis)
        rest = shape[:axis] + shape[axis + 1 :]
        points = torch.from_numpy(qn.sobol_points(k, math.prod(rest)).astype(np.int64))
        shift = torch.randint(0, 2**32, (points.shape[1],), dtype=torch.int64)
        u = (torch.bitwise_xor(points, shift).double() + 0.5) / 2.0**32
        return torch.special.ndtri(u).to(dtype=dtype, device=device).reshape(k, *rest).movedim(0, axis)

    def rsample(self, fn: torch.distributions.Distribution, sample_shape: torch.Size) -> torch.Tensor:
        """A reparameterized draw of ``fn`` (one per particle) from the coupled noise."""
        shape = fn.batch_shape + fn.event_shape
        axis = len(fn.batch_shape) + self.particle_dim
        if sample_shape or axis < 0 or shape[axis] != self.num_particles:
            raise RuntimeError(
                f"{self.kind} draws need the site's particles along batch dim {self.particle_dim}; got batch "
                f"shape {tuple(fn.batch_shape)} and sample shape {tuple(sample_shape)}"
            )
        normal, transforms = _normal_path(fn)
        x = normal.loc + normal.scale * self.standard_normal(shape, axis, normal.loc.dtype, normal.loc.device)
        for t in transforms:
            x = t(x)
        return x


class EstimatorDistribution(TorchDistribution):
    """Wraps ``base_dist`` and fixes how its samples carry gradients.

    ``reparameterized=True``: samples are ``base_dist.rsample()`` (pathwise), or from ``noise``'s coupled
    draws (:class:`ParticleNoise`); ``False``: samples are ``base_dist.sample()``, detached from autograd
    and forward-mode tangents (score function, or measure-valued, REBAR or RELAX with ``elbo_term``; the
    last two draw from a relaxation whose uniforms :attr:`uniforms` keeps), and carry the site
    names ``deps`` for provenance tracking (:mod:`ppl_reparam.pyro.provenance`; the ELBOs set it).
    ``log_prob``, ``entropy``, support and shapes are those of ``base_dist``.
    """

    arg_constraints: dict = {}

    def __init__(
        self,
        base_dist: torch.distributions.Distribution,
        reparameterized: bool,
        deps: frozenset = frozenset(),
        noise: ParticleNoise | None = None,
        elbo_term: str | None = None,
    ):
        self.base_dist = base_dist
        self.has_rsample = reparameterized
        self.deps = deps
        self.noise = noise
        self.elbo_term = elbo_term
        self.uniforms: torch.Tensor | None = None
        super().__init__(base_dist.batch_shape, base_dist.event_shape, validate_args=False)

    @property
    def support(self):  # type: ignore[override]
        return self.base_dist.support

    def expand(self, batch_shape, _instance=None) -> EstimatorDistribution:
        return EstimatorDistribution(
            self.base_dist.expand(batch_shape), self.has_rsample, self.deps, self.noise, self.elbo_term
        )

    @property
    def measure(self) -> bool:
        """Forced to the measure-valued estimator."""
        return self.elbo_term == "measure"

    def sample(self, sample_shape: torch.Size = _EMPTY) -> torch.Tensor:
        with torch.no_grad():
            if self.elbo_term in RELAXED_TERMS:
                value = self._relaxed_draw(torch.Size(sample_shape))
            else:
                value = self.base_dist.sample(sample_shape).detach()
        return track(value, self.deps) if self.deps else value

    def _relaxed_draw(self, sample_shape: torch.Size) -> torch.Tensor:
        r"""A draw as a function of uniforms ``u``, which :attr:`uniforms` keeps: Bernoulli bits as the signs
        of :math:`z = \theta + \log u - \log(1 - u)`, a category as the argmax of :math:`z = \theta -
        \log(-\log u)` (Gumbel-max; one-hot for a OneHotCategorical)."""
        leaf = leaf_path(self.base_dist)[0]
        logits = leaf.logits.detach()
        shape = relaxation_shape(leaf, sample_shape + self.batch_shape + self.event_shape)
        finfo = torch.finfo(logits.dtype)
        self.uniforms = torch.rand(shape, dtype=logits.dtype, device=logits.device).clamp(finfo.tiny, 1 - finfo.eps)
        if isinstance(leaf, torch.distributions.Bernoulli):
            z = logits.expand(shape) + torch.log(self.uniforms) - torch.log1p(-self.uniforms)
            return (z > 0).to(logits.dtype)
        category = (logits - torch.log(-torch.log(self.uniforms))).argmax(-1)
        if isinstance(leaf, torch.distributions.OneHotCategorical):
            return torch.nn.functional.one_hot(category, shape[-1]).to(logits.dtype)
        return category

    def rsample(self, sample_shape: torch.Size = _EMPTY) -> torch.Tensor:
        if not self.has_rsample:
            raise RuntimeError("rsample called on a site forced to the score-function estimator")
        if self.noise is not None:
            return self.noise.rsample(self.base_dist, sample_shape)
        return self.base_dist.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.base_dist.log_prob(value)

    def score_parts(self, value: torch.Tensor):
        """Pathwise: the wrapped family's own parts where it draws with ``rsample`` (a partially
        reparameterized sampler, such as a rejection sampler, keeps its score-function correction), else
        ``log_prob`` as the entropy term and no score; score function: ``log_prob`` as the score and no
        entropy term; measure-valued, REBAR and RELAX: neither (the ELBO adds its own term), and a ValueError
        outside this package's ELBOs."""
        if self.elbo_term is not None:
            if not mv.ALLOWED.get():
                raise ValueError(outside_elbo(self.elbo_term))
            return ScoreParts(log_prob=self.log_prob(value), score_function=0, entropy_term=0)
        if self.has_rsample and self.base_dist.has_rsample:
            return self.base_dist.score_parts(value)
        return super().score_parts(value)

    def entropy(self) -> torch.Tensor:
        return self.base_dist.entropy()

    @property
    def mean(self) -> torch.Tensor:
        return self.base_dist.mean

    @property
    def variance(self) -> torch.Tensor:
        return self.base_dist.variance


def relaxation_shape(leaf: torch.distributions.Distribution, shape: torch.Size) -> torch.Size:
    """The shape of the relaxation of a draw of ``shape`` from ``leaf``: one more dim, the categories,
    for a Categorical (whose draw is an index)."""
    if isinstance(leaf, torch.distributions.Categorical):
        return shape + leaf.logits.shape[-1:]
    return shape


def is_guide_latent(msg: dict) -> bool:
    """A latent sample site whose estimator can be chosen: not observed, not a plate's subsample
    indices, not a ``Delta`` (AutoGuides put a Delta at each latent, driven by an auxiliary site)."""
    return (
        msg["type"] == "sample"
        and not msg["is_observed"]
        and not isinstance(msg["fn"], _Subsample)
        and not isinstance(leaf_distribution(msg["fn"]), Delta)
    )


def apply_estimator(
    name: str, fn: torch.distributions.Distribution, estimator: str, track: bool = False,
    noise: ParticleNoise | None = None,
):
    """Wrap the site ``name``'s distribution so that it uses ``estimator``; a pathwise request on a
    family without ``rsample`` raises a ValueError naming the site and the distribution. With
    ``track``, score-function samples carry the site's name (provenance tracking); with ``noise``,
    pathwise samples come from its coupled draws."""
    if estimator == "pathwise" and not can_rsample(fn):
        raise ValueError(
            f"site {name!r}: the pathwise (reparameterized) estimator needs rsample, but "
            f"{describe(fn)} has none. Use the score-function estimator for this site "
            "(ScoreFunctionELBO, or force_estimator(guide, 'score', sites=[...])), or a continuous "
            "relaxation such as RelaxedBernoulliStraightThrough / RelaxedOneHotCategorical."
        )
    if isinstance(fn, EstimatorDistribution):
        fn = fn.base_dist
    if estimator in OWN_TERMS:
        {"measure": check_measure, "rebar": check_rebar, "relax": check_relax}[estimator](name, fn)
        return EstimatorDistribution(fn, False, frozenset((name,)) if track else frozenset(), elbo_term=estimator)
    pathwise = estimator == "pathwise"
    if pathwise and noise is not None:
        noise.check(name, fn)
        return EstimatorDistribution(fn, True, noise=noise)
    return EstimatorDistribution(fn, pathwise, frozenset((name,)) if track and not pathwise else frozenset())


class ForceEstimatorMessenger(Messenger):
    """Effect handler that sets each guide latent's estimator (see :func:`force_estimator`).

    Precedence at a site: named in ``sites`` > the site's own ``infer={"estimator": ...}`` or the
    choice of a handler nested inside this one > ``estimator`` when ``sites`` is None > unchanged
    (the family's native behaviour). With ``track`` (the ELBOs' handler) every score-function sample,
    forced or native, carries its site's name (:mod:`ppl_reparam.pyro.provenance`); with ``noise`` every
    pathwise sample, forced or native, comes from its coupled draws (:class:`ParticleNoise`).
    """

    def __init__(
        self, estimator: str | None, sites: Iterable[str] | None = None, track: bool = False,
        noise: ParticleNoise | None = None,
    ):
        super().__init__()
        self.choices = SiteChoices(estimator, sites)
        self.track = track
        self.noise = noise
        self.own_terms: list[str] = []  # the sites forced to an estimator that adds a term of its own

    def _pyro_sample(self, msg: dict) -> None:
        if not is_guide_latent(msg):
            return
        estimator = self.choices.choose(msg["name"], msg["infer"], msg["fn"])
        if estimator is None and self.track and not msg["fn"].has_rsample:
            estimator = "score"
        if estimator is None and self.noise is not None:
            estimator = "pathwise"  # the site's own rsample, drawn from the coupled noise
        if estimator is not None:
            if not (estimator == "pathwise" and self.noise is None and msg["fn"].has_rsample):
                # (a site that already draws with rsample is pathwise as it is: no wrapper to pay for)
                msg["fn"] = apply_estimator(msg["name"], msg["fn"], estimator, self.track, self.noise)
                if estimator in OWN_TERMS:
                    self.own_terms.append(msg["name"])
            # Record the choice as the site's own request, so that an enclosing handler (an ELBO's
            # blanket estimator) respects it; only sites named there override it.
            msg["infer"] = {**msg["infer"], "estimator": estimator}



def force_estimator(guide: Callable, estimator: str, sites: Iterable[str] | None = None) -> ForcedGuide:
    """Return ``guide`` with every latent sample site, or the ``sites`` named, using ``estimator``.

    :param guide: any Pyro guide: a function, a ``PyroModule``, an AutoGuide.
    :param estimator: ``"score"`` (score function / REINFORCE: samples detached, gradient through
        ``log q``), ``"pathwise"`` (reparameterized ``rsample``; raises a ValueError naming the site
        for a family without ``rsample``, e.g. Bernoulli), ``"measure"`` (measure-valued), ``"rebar"``
        (REBAR, Bernoulli sites), ``"relax"`` (RELAX, Bernoulli and categorical sites) or ``"auto"``
        (chosen by measurement, :mod:`ppl_reparam.auto`); the last four only under this package's ELBOs.
    :param sites: names of the sites to force; these override a site's own
        ``infer={"estimator": ...}``. With ``sites=None`` every latent site gets ``estimator`` except
        those that ask for one with ``infer``. A named site the guide never samples is an error.

    The choice made here counts as the site's own request for the ELBOs of this package: under
    ``PathwiseELBO()`` a site forced here to ``"score"`` stays score-function (``PathwiseELBO(sites=[...])``
    naming it would override that).

    Observed sites, plate subsample sites and ``Delta`` sites are left alone: in an AutoGuide the
    randomness sits in the auxiliary site (e.g. ``_AutoNormal_..._unconstrained``), which is forced.
    The estimator only takes effect under an ELBO that builds the score-function term for every
    non-reparameterized site, guide-only ones included: :class:`ScoreFunctionELBO` or
    :class:`PathwiseELBO` of this package (Pyro's ``Trace_ELBO`` ignores guide-only sites).
    """
    return ForcedGuide(guide, estimator, sites, ForceEstimatorMessenger)
