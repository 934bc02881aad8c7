"""Per-site choice of the gradient estimator in a NumPyro guide.

A guide site's estimator is decided when it is sampled:

- ``"pathwise"`` (reparameterization trick, Kingma and Welling 2014; Rezende et al. 2014): the value is
  the family's reparameterized sample, so gradients flow through it into the loss.
- ``"score"`` (score function, REINFORCE; Williams 1992, Ranganath et al. 2014): the value is wrapped
  in ``jax.lax.stop_gradient``; the ELBO then differentiates ``log q`` times the cost.
- ``"measure"`` (measure-valued; Pflug 1989, Mohamed et al. 2020, section 6): drawn as for the score
  function; the ELBO reruns guide and model at the two sides of the weak derivative of each parameter
  (:mod:`ppl_reparam.numpyro.measure_valued`).
- ``"rebar"`` (Tucker et al. 2017; Bernoulli sites): the bits are drawn as the sign of a logistic
  relaxation, its uniforms kept as the site's intermediates; the ELBO adds REBAR's control variate
  (:mod:`ppl_reparam.pyro.rebar` has the maths).
- ``"relax"`` (Grathwohl et al. 2018; Bernoulli and Categorical sites): drawn as for REBAR, a category
  as the argmax of a Gumbel perturbation (Gumbel-max) of the logits; the ELBO adds RELAX's learned
  control variate (:mod:`ppl_reparam.numpyro.relax`).

Only this package's ELBOs implement the last three; under another ELBO (NumPyro's ``Trace_ELBO``) the
site's ``log_prob`` raises a ValueError rather than letting a silently biased gradient through.

NumPyro's ``has_rsample`` is a read-only property computed from the family's parameters, and NumPyro
draws reparameterized samples whenever the family can. :func:`force_estimator` therefore wraps the
site's distribution in :class:`EstimatorDistribution`, which carries the choice through ``expand``
(plates) and delegates everything else to the wrapped distribution.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
from jax import random
from jax.scipy.special import ndtri
from numpyro.distributions import (
    Delta,
    Distribution,
    ExpandedDistribution,
    Independent,
    MaskedDistribution,
    Normal,
    TransformedDistribution,
)
from numpyro.primitives import Messenger

from .. import noise as qn
from ..forcing import ForcedGuide, SiteChoices
from ..measure_valued import check_measure_site, check_rebar_site, check_relax_site
from ..surrogate import RELAXED_TERMS, outside_elbo
from . import measure_valued as mv

_WRAPPERS = (Independent, TransformedDistribution, MaskedDistribution, ExpandedDistribution)


def leaf_distribution(fn: Distribution) -> Distribution:
    """The innermost distribution under Independent, Transformed, Masked and Expanded wrappers."""
    while isinstance(fn, (*_WRAPPERS, EstimatorDistribution)):
        fn = fn.base_dist
    return fn


def describe(fn: Distribution) -> str:
    """A short name for a possibly wrapped distribution, e.g. ``Independent(Bernoulli)``."""
    if isinstance(fn, EstimatorDistribution):
        return describe(fn.base_dist)
    if isinstance(fn, _WRAPPERS):
        return f"{type(fn).__name__}({describe(fn.base_dist)})"
    return type(fn).__name__


def can_rsample(fn: Distribution) -> bool:
    """Whether the distribution's family has a reparameterized sampler (whatever a wrapper says)."""
    return bool(leaf_distribution(fn).has_rsample)


def _forced_inside(fn: Distribution) -> bool | None:
    """The choice of an :class:`EstimatorDistribution` nested under other wrappers, if any."""
    while isinstance(fn, _WRAPPERS):
        fn = fn.base_dist
        if isinstance(fn, EstimatorDistribution):
            return fn.reparameterized
    return None


def leaf_path(fn: Distribution) -> tuple[Distribution, list]:
    """``(the innermost distribution, the transforms applied to its draws, innermost first)`` under
    Independent, Masked, Expanded, Transformed and this module's wrappers."""
    transforms: list = []
    while isinstance(fn, (*_WRAPPERS, EstimatorDistribution)):
        if isinstance(fn, TransformedDistribution):
            transforms = list(fn.transforms) + transforms
        fn = fn.base_dist
    return fn, transforms


def _normal_path(fn: Distribution) -> tuple[Normal, list] | None:
    """:func:`leaf_path` if the innermost distribution is a Normal, else None."""
    leaf, transforms = leaf_path(fn)
    return (leaf, transforms) if isinstance(leaf, Normal) else None


def check_rebar(name: str, fn: Distribution) -> None:
    """Raise a ValueError naming the site if ``fn`` is not a Bernoulli under Independent, Masked and
    Expanded wrappers (REBAR relaxes its bits)."""
    leaf, transforms = leaf_path(fn)
    check_rebar_site(name, mv.family_of(leaf), bool(transforms), describe(fn))


def check_relax(name: str, fn: Distribution) -> None:
    """Raise a ValueError naming the site unless ``fn`` is a Bernoulli or Categorical under Independent,
    Masked and Expanded wrappers (RELAX relaxes its draws)."""
    leaf, transforms = leaf_path(fn)
    check_relax_site(name, mv.family_of(leaf), bool(transforms), describe(fn))


def relaxation_shape(leaf: Distribution, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of the relaxation of a draw of ``shape`` from ``leaf``: one more dim, the categories,
    for a Categorical (whose draw is an index)."""
    return tuple(shape) + jnp.shape(leaf.logits)[-1:] if mv.family_of(leaf) == "Categorical" else tuple(shape)


def check_measure(name: str, fn: Distribution) -> None:
    """Raise a ValueError naming the site if ``fn`` has no weak derivative here."""
    leaf, transforms = leaf_path(fn)
    elementwise = not any(t.domain.event_dim or t.codomain.event_dim for t in transforms)
    check_measure_site(name, mv.family_of(leaf), elementwise, describe(fn), mv.FAMILY_NAMES)


@jax.tree_util.register_pytree_node_class
class ParticleNoise:
    """Antithetic or randomized quasi-Monte Carlo noise for the pathwise sites of one particle
    (:mod:`ppl_reparam.noise`). The ELBO maps particles with ``vmap``: particle ``position`` of
    ``num_particles``; antithetic partners (``position`` and ``position + K/2``) share their guide key, so
    their draws mirror each other; QMC points share a digital shift per site, drawn from ``key`` and the
    site's name."""

    def __init__(self, kind: str, num_particles: int, position: jax.Array, key: jax.Array, site: str = ""):
        self.kind, self.num_particles, self.position, self.key, self.site = kind, num_particles, position, key, site

    def tree_flatten(self):
        return (self.position, self.key), (self.kind, self.num_particles, self.site)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(aux[0], aux[1], *children, aux[2])

    def at(self, name: str, fn: Distribution) -> ParticleNoise:
        """This noise for the site ``name``; a ValueError naming it if ``fn`` is not an element-wise
        transform of a Normal."""
        path = _normal_path(fn)
        shape = fn.batch_shape + fn.event_shape
        if path is None or any(t.forward_shape(shape) != shape for t in path[1]):
            raise qn.unsupported(name, self.kind, describe(fn))
        return ParticleNoise(self.kind, self.num_particles, self.position, self.key, name)

    def standard_normal(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """This particle's noise of ``shape``, marginally N(0, 1), coupled across the particles."""
        if self.kind == "antithetic":
            return random.normal(key, shape) * jnp.where(self.position < self.num_particles // 2, 1.0, -1.0)
        points = jnp.asarray(qn.sobol_points(self.num_particles, math.prod(shape)))[self.position]
        site_key = random.fold_in(self.key, zlib.crc32(self.site.encode()))
        bits = jnp.bitwise_xor(points, random.bits(site_key, points.shape, jnp.uint32))
        if jnp.result_type(float) == jnp.float64:
            u = (bits.astype(jnp.float64) + 0.5) / 2.0**32
        else:  # float32 holds 24 bits: the top 24, at their cells' midpoints, stay inside (0, 1)
            u = (jnp.right_shift(bits, 8).astype(jnp.float32) + 0.5) / 2.0**24
        return ndtri(u).reshape(shape)

    def sample(self, fn: Distribution, key: jax.Array, sample_shape: tuple[int, ...]) -> jax.Array:
        """A reparameterized draw of ``fn`` from this particle's noise."""
        normal, transforms = _normal_path(fn)
        x = normal.loc + normal.scale * self.standard_normal(key, tuple(sample_shape) + fn.batch_shape + fn.event_shape)
        for t in transforms:
            x = t(x)
        return x


class EstimatorDistribution(Distribution):
    """Wraps ``base_dist`` and fixes how its samples carry gradients.

    ``reparameterized=True``: samples are ``base_dist``'s own (reparameterized) samples (pathwise), or
    ``noise``'s coupled ones (:class:`ParticleNoise`); ``False``: samples are ``jax.lax.stop_gradient``
    of them, and sampling intermediates are dropped so that ``log_prob`` is recomputed from the value
    (score function, or measure-valued or REBAR with ``elbo_term``: then ``log_prob`` raises a ValueError
    outside this package's ELBOs; REBAR's bits are the signs of a logistic relaxation, whose uniforms
    are the sample's intermediates). ``log_prob``, ``entropy``, support and shapes are those of
    ``base_dist``.
    """

    arg_constraints: dict = {}
    pytree_data_fields = ("base_dist", "noise")
    pytree_aux_fields = ("reparameterized", "elbo_term")

    def __init__(
        self, base_dist: Distribution, reparameterized: bool, noise: ParticleNoise | None = None,
        elbo_term: str | None = None,
    ):
        self.base_dist = base_dist
        self.reparameterized = bool(reparameterized)
        self.noise = noise
        self.elbo_term = elbo_term
        super().__init__(base_dist.batch_shape, base_dist.event_shape, validate_args=False)

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]
        return self.reparameterized

    @property
    def support(self):  # type: ignore[override]
        return self.base_dist.support

    def expand(self, batch_shape) -> EstimatorDistribution:
        return EstimatorDistribution(
            self.base_dist.expand(batch_shape), self.reparameterized, self.noise, self.elbo_term
        )

    @property
    def measure(self) -> bool:
        """Forced to the measure-valued estimator."""
        return self.elbo_term == "measure"

    def sample_with_intermediates(self, key: jax.Array, sample_shape: tuple[int, ...] = ()):
        if self.reparameterized and self.noise is not None:
            return self.noise.sample(self.base_dist, key, sample_shape), []
        if self.reparameterized:
            return self.base_dist.sample_with_intermediates(key, sample_shape)
        if self.elbo_term in RELAXED_TERMS:
            return self._relaxed_draw(key, sample_shape)
        return jax.lax.stop_gradient(self.base_dist.sample(key, sample_shape)), []

    def _relaxed_draw(self, key: jax.Array, sample_shape: tuple[int, ...]) -> tuple[jax.Array, list]:
        r"""A draw as a function of uniforms ``u``, kept as its intermediates: Bernoulli bits as the signs
        of :math:`z = \theta + \log u - \log(1 - u)`, a category as the argmax of :math:`z = \theta -
        \log(-\log u)` (Gumbel-max)."""
        leaf = leaf_path(self.base_dist)[0]
        logits = jax.lax.stop_gradient(leaf.logits)
        shape = relaxation_shape(leaf, tuple(sample_shape) + self.batch_shape + self.event_shape)
        tiny = jnp.finfo(jnp.result_type(float)).eps
        uniforms = jnp.clip(random.uniform(key, shape), tiny, 1 - tiny)
        if mv.family_of(leaf) == "Categorical":
            return jnp.argmax(logits - jnp.log(-jnp.log(uniforms)), -1), [uniforms]
        z = jnp.broadcast_to(logits, shape) + jnp.log(uniforms) - jnp.log1p(-uniforms)
        return (z > 0).astype(jnp.result_type(float)), [uniforms]

    def sample(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        return self.sample_with_intermediates(key, sample_shape)[0]

    def rsample(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        if not self.reparameterized:
            raise RuntimeError("rsample called on a site forced to the score-function estimator")
        return self.sample(key, sample_shape)

    def log_prob(self, value: jax.Array, intermediates: list | None = None) -> jax.Array:
        if self.elbo_term is not None and not mv.ALLOWED.get():
            raise ValueError(outside_elbo(self.elbo_term))
        if intermediates and self.elbo_term not in RELAXED_TERMS:  # (theirs are the uniforms)
            return self.base_dist.log_prob(value, intermediates)
        return self.base_dist.log_prob(value)

    def entropy(self) -> jax.Array:
        return self.base_dist.entropy()

    @property
    def mean(self) -> jax.Array:
        return self.base_dist.mean

    @property
    def variance(self) -> jax.Array:
        return self.base_dist.variance


def is_guide_latent(msg: dict) -> bool:
    """A latent sample site whose estimator can be chosen: not observed, not a ``Delta`` (AutoGuides
    such as AutoDiagonalNormal put a Delta at each latent, driven by an auxiliary site). Plate
    subsample indices are ``plate`` messages in NumPyro, never ``sample`` ones."""
    return msg["type"] == "sample" and not msg["is_observed"] and not isinstance(leaf_distribution(msg["fn"]), Delta)


def apply_estimator(
    name: str, fn: Distribution, estimator: str, noise: ParticleNoise | None = None
) -> EstimatorDistribution:
    """Wrap the site ``name``'s distribution so that it uses ``estimator``; a pathwise request on a
    family without a reparameterized sampler raises a ValueError naming the site and the distribution.
    With ``noise``, pathwise samples come from its coupled draws."""
    if estimator == "pathwise" and not can_rsample(fn):
        raise ValueError(
            f"site {name!r}: the pathwise (reparameterized) estimator needs a reparameterized sampler, "
            f"but {describe(fn)} has none (has_rsample is False). Use the score-function estimator for "
            "this site (ScoreFunctionELBO, or force_estimator(guide, 'score', sites=[...])), or a "
            "continuous relaxation such as RelaxedBernoulliLogits (Concrete / Gumbel-softmax)."
        )
    if isinstance(fn, EstimatorDistribution):
        fn = fn.base_dist
    elif estimator == "pathwise" and _forced_inside(fn) is False:
        raise ValueError(
            f"site {name!r}: {describe(fn)} was forced to the score-function estimator under a mask, "
            "plate or transform applied after forcing; it cannot be made pathwise again from outside. "
            "Force the estimator once, on the innermost guide."
        )
    if estimator == "pathwise" and noise is not None:
        return EstimatorDistribution(fn, True, noise.at(name, fn))
    if estimator in ("measure", "rebar", "relax"):
        {"measure": check_measure, "rebar": check_rebar, "relax": check_relax}[estimator](name, fn)
        return EstimatorDistribution(fn, False, elbo_term=estimator)
    return EstimatorDistribution(fn, reparameterized=estimator == "pathwise")


class ForceEstimatorMessenger(Messenger):
    """Effect handler that sets each guide latent's estimator (see :func:`force_estimator`).

    Precedence at a site: named in ``sites`` > the site's own ``infer={"estimator": ...}`` >
    ``estimator`` when ``sites`` is None > unchanged (the family's native behaviour: pathwise where it
    has a reparameterized sampler; otherwise score function, the value under ``stop_gradient`` as in
    NumPyro's own ELBOs); with ``noise`` every pathwise sample comes from its coupled draws
    (:class:`ParticleNoise`).
    """

    def __init__(self, estimator: str | None, sites: Iterable[str] | None = None, noise: ParticleNoise | None = None):
        super().__init__()
        self.choices = SiteChoices(estimator, sites)
        self.noise = noise

    def process_message(self, msg: dict) -> None:
        if not is_guide_latent(msg):
            return
        estimator = self.choices.choose(msg["name"], msg["infer"], msg["fn"])
        if estimator is None and not can_rsample(msg["fn"]):
            estimator = "score"
        if estimator is None and self.noise is not None:
            estimator = "pathwise"  # the site's own reparameterized sampler, from the coupled noise
        if estimator is not None:
            msg["fn"] = apply_estimator(msg["name"], msg["fn"], estimator, self.noise)
            # Record the choice as the site's own request, so that an enclosing handler (an ELBO's
            # blanket estimator) respects it; only sites named there override it (as in Pyro).
            msg["infer"] = {**msg["infer"], "estimator": estimator}



def force_estimator(guide: Callable, estimator: str, sites: Iterable[str] | None = None) -> ForcedGuide:
    """Return ``guide`` with every latent sample site, or the ``sites`` named, using ``estimator``.

    :param guide: any NumPyro guide: a function or an AutoGuide.
    :param estimator: ``"score"`` (score function / REINFORCE: samples under ``stop_gradient``,
        gradient through ``log q``), ``"pathwise"`` (reparameterized samples; raises a ValueError
        naming the site for a family without a reparameterized sampler, e.g. Bernoulli), ``"measure"``
        (measure-valued), ``"rebar"`` (REBAR, Bernoulli sites), ``"relax"`` (RELAX, Bernoulli and
        Categorical sites; its control's params declared by :meth:`~ppl_reparam.numpyro.RelaxELBO.with_controls`)
        or ``"auto"`` (resolved first by :func:`~ppl_reparam.numpyro.choose_site_estimators`); the last four
        only under this package's ELBOs.
    :param sites: names of the sites to force; these override a site's own
        ``infer={"estimator": ...}``. With ``sites=None`` every latent site gets ``estimator`` except
        those that ask for one with ``infer``. A named site the guide never samples is an error.

    Observed sites, plate subsample indices and ``Delta`` sites are left alone: in AutoDiagonalNormal
    and the other AutoContinuous guides the randomness sits in the auxiliary site (``_auto_latent``),
    which is forced. The estimator only takes effect under an ELBO that builds the score-function term
    for every non-reparameterized site, guide-only ones included: :class:`ScoreFunctionELBO` or
    :class:`PathwiseELBO` of this package (NumPyro's ``Trace_ELBO`` silently drops that term).
    """
    return ForcedGuide(guide, estimator, sites, ForceEstimatorMessenger)
