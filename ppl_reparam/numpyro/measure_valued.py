r"""The measure-valued estimator at a guide site of a NumPyro ELBO (:mod:`ppl_reparam.measure_valued`).

The same estimator as :mod:`ppl_reparam.pyro.measure_valued` (the maths there): the site's cost is
re-evaluated by running guide and model again with the sites drawn before it substituted, its value
replaced by each side of the weak derivative, and the sites after it drawn from one key shared by both
sides (common random numbers). The reruns are traced into the loss, so under ``jit`` they compile once;
each element outside the site's plates adds a pair of them to the compiled graph.

A parameter that is not a JAX tracer (a constant of the guide) carries no gradient and is skipped.
NumPyro has no OneHotCategorical; the other families are Pyro's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextvars import ContextVar

import jax
import jax.numpy as jnp
from jax import random
from jax.lax import stop_gradient
from numpyro.distributions import Distribution, Exponential, Gamma, Normal, Poisson
from numpyro.distributions.discrete import BernoulliLogits, BernoulliProbs, CategoricalLogits, CategoricalProbs

from ..measure_valued import FAMILIES, check_parameter, weak_pair

SUPPORTED = (
    ("Normal", (Normal,)),
    ("Exponential", (Exponential,)),
    ("Gamma", (Gamma,)),
    ("Poisson", (Poisson,)),
    ("Bernoulli", (BernoulliProbs, BernoulliLogits)),
    ("Categorical", (CategoricalProbs, CategoricalLogits)),
)
"""Leaf families with a weak derivative here (LogNormal and other element-wise transforms of them
included), as ``(name, NumPyro classes)``."""

FAMILY_NAMES = tuple(name for name, _ in SUPPORTED)

ALLOWED: ContextVar[bool] = ContextVar("measure_valued_allowed", default=False)
"""True inside this package's ELBOs, the only ones that implement the measure-valued and REBAR estimators
(a site forced to one of them refuses other ELBOs)."""


def family_of(leaf: Distribution) -> str | None:
    """The name of ``leaf``'s family in :data:`SUPPORTED`, or None."""
    for name, classes in SUPPORTED:
        if isinstance(leaf, classes):
            return name
    return None


class JaxDraws:
    """:class:`ppl_reparam.measure_valued.Draws` of one shape, each from the next split of ``key``."""

    def __init__(self, key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype):
        self.key, self.shape, self.dtype = key, shape, dtype

    def _key(self) -> jax.Array:
        self.key, key = random.split(self.key)
        return key

    def exponential(self) -> jax.Array:
        return random.exponential(self._key(), self.shape, self.dtype)

    def maxwell(self) -> jax.Array:
        chi = jnp.sqrt(jnp.sum(random.normal(self._key(), (3, *self.shape), self.dtype) ** 2, 0))
        return chi * (2.0 * random.bernoulli(self._key(), 0.5, self.shape) - 1.0).astype(self.dtype)

    def uniform(self) -> jax.Array:
        return random.uniform(self._key(), self.shape, self.dtype)

    def normal(self) -> jax.Array:
        return random.normal(self._key(), self.shape, self.dtype)

    def gamma(self, concentration: jax.Array) -> jax.Array:
        return random.gamma(self._key(), jnp.broadcast_to(concentration, self.shape), self.shape, self.dtype)

    def poisson(self, rate: jax.Array) -> jax.Array:
        return random.poisson(self._key(), jnp.broadcast_to(rate, self.shape), self.shape).astype(self.dtype)

    def constant(self, value: float) -> jax.Array:
        return jnp.full(self.shape, value, self.dtype)


def site_term(
    name: str,
    leaf: Distribution,
    transforms: list,
    value: jax.Array,
    event_dim: int,
    plate_dims: frozenset[int],
    cost: Callable[[jax.Array], jax.Array],
    coupling: bool,
    key: jax.Array,
) -> jax.Array:
    r""":math:`\sum_j \theta_j \bot(\hat g_j)` summed over the event dims: the measure-valued surrogate
    of one site, of its batch shape (arguments as :func:`ppl_reparam.pyro.measure_valued.site_term`;
    ``key`` seeds the two sides' draws)."""
    family = family_of(leaf)
    shape = jnp.shape(value)
    free_shape = tuple(1 if i - len(shape) in plate_dims else n for i, n in enumerate(shape))
    term: jax.Array | float = 0.0
    if family == "Categorical":
        term = _categorical_term(leaf, value, free_shape, cost)
        params = {}
    else:
        params = {p: getattr(leaf, p) for p in FAMILIES[family]}
    dtype = jnp.result_type(float)
    detached = {p: stop_gradient(jnp.broadcast_to(x, shape)) for p, x in params.items()}
    for i, (p, theta) in enumerate(params.items()):
        if not isinstance(theta, jax.core.Tracer):
            continue
        check_parameter(family, p, f"site {name!r}")
        draws = JaxDraws(random.fold_in(key, i), shape, dtype)
        c, plus, minus = weak_pair(family, p, detached, draws, coupling, jnp.exp)
        for t in transforms:
            plus, minus = t(plus), t(minus)
        g = jnp.zeros(shape, dtype)
        for mask in _coordinates(free_shape):
            difference = cost(jnp.where(mask, plus, value)) - cost(jnp.where(mask, minus, value))
            g = g + jnp.where(mask, c * difference, 0.0)
        term = term + jnp.broadcast_to(theta, shape) * stop_gradient(g)
    if isinstance(term, float):
        return jnp.zeros((), dtype)
    return jnp.sum(term, tuple(range(-event_dim, 0))) if event_dim else term


def _categorical_term(
    leaf: Distribution, value: jax.Array, free_shape: tuple[int, ...], cost: Callable[[jax.Array], jax.Array]
) -> jax.Array | float:
    r""":math:`\sum_k p_k \bot(c_s(k))` element by element (0.0 where the probabilities carry no gradient)."""
    probs = leaf.probs
    if not isinstance(probs, jax.core.Tracer):
        return 0.0
    k_count = jnp.shape(probs)[-1]
    g = jnp.zeros((*jnp.shape(value), k_count), jnp.result_type(float))
    for mask in _coordinates(free_shape):
        for k in range(k_count):
            g = g.at[..., k].add(jnp.where(mask, cost(jnp.where(mask, k, value)), 0.0))
    return jnp.sum(jnp.broadcast_to(probs, g.shape) * stop_gradient(g), -1)


def _coordinates(free_shape: tuple[int, ...]) -> Iterator[jax.Array]:
    """One boolean mask of ``free_shape`` per element: the coordinates perturbed one at a time."""
    n = math.prod(free_shape)
    for j in range(n):
        yield (jnp.arange(n) == j).reshape(free_shape)
