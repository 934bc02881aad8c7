r"""Per-sample Monte Carlo gradients of an expectation in JAX/NumPyro: the score-function and pathwise
estimators of :mod:`ppl_reparam.mc_gradients` (maths and references there), one gradient per sample.
NumPyro samples Beta and Dirichlet by normalising ``jax.random.gamma`` draws, so their pathwise
gradient is the Gamma's implicit one pushed through the normalisation.

How per-sample Jacobians come out: ``PRNGKey(seed)`` is split into ``num_samples`` keys, and
``jax.vmap`` maps, over the keys, ``jax.grad`` of the one-sample estimate at ``params`` (P,). So
``dist_builder`` maps the parameter vector ``(P,)`` to one distribution of batch shape ``()`` (e.g.
``lambda p: Normal(p[0], p[1])``), and ``function`` maps one sample ``event_shape`` to a scalar
(e.g. ``lambda x: x**2``, or ``lambda x: (x**2).sum(-1)`` for a Dirichlet). The same seed gives the
same numbers; no global state is read or changed. Imports JAX and NumPyro only (never torch or Pyro).

Each estimator is one ``jax.jit`` program with ``function`` and ``dist_builder`` as static arguments, so
they must be hashable (functions and lambdas are), and repeated calls with the same two objects, ``P``
and ``num_samples`` reuse the compiled program (a new lambda per call recompiles).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
from jax import random
from numpyro.distributions import Distribution

Function = Callable[[jax.Array], jax.Array]
DistBuilder = Callable[[jax.Array], Distribution]


def _params(params: jax.Array, num_samples: int) -> jax.Array:
    """``params`` as a 1-D float array, with it and ``num_samples`` checked."""
    params = jnp.asarray(params)
    if params.ndim != 1:
        raise ValueError(f"params must be a 1-D array of P parameters, got shape {tuple(params.shape)}")
    if not jnp.issubdtype(params.dtype, jnp.floating):
        params = params.astype(jnp.result_type(float))
    if num_samples < 1:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    return params


def _check(dist_builder: DistBuilder, params: jax.Array, num_samples: int) -> tuple[jax.Array, Distribution]:
    """``params`` as a 1-D float array, and the distribution at it, with shapes checked."""
    params = _params(params, num_samples)
    d = dist_builder(params)
    if tuple(d.batch_shape) != ():
        raise ValueError(
            f"dist_builder must map parameters (P,) to a distribution of batch shape (); "
            f"got batch shape {tuple(d.batch_shape)} for params {tuple(params.shape)}"
        )
    return params, d


def _value(function: Function, x: jax.Array) -> jax.Array:
    """``function(x)`` for one sample, checked to be a scalar."""
    value = jnp.asarray(function(x))
    if value.shape != ():
        raise ValueError(f"function must return a scalar per sample, got shape {tuple(value.shape)}")
    return value


def _keys(seed: int, num_samples: int) -> jax.Array:
    return random.split(random.PRNGKey(seed), num_samples)


@partial(jax.jit, static_argnums=(0, 1))
def _score_function(function: Function, dist_builder: DistBuilder, params: jax.Array, keys: jax.Array) -> jax.Array:
    """``jax.vmap`` over ``keys`` of ``jax.grad`` of ``f(x) log q(x; params)``, with ``x`` and ``f(x)`` under
    ``stop_gradient``; compiled once per (function, dist_builder) pair and shapes."""

    def one(key: jax.Array) -> jax.Array:
        def surrogate(p: jax.Array) -> jax.Array:
            d = dist_builder(p)
            x = jax.lax.stop_gradient(d.sample(key))
            return jax.lax.stop_gradient(_value(function, x)) * d.log_prob(x)

        return jax.grad(surrogate)(params)

    return jax.vmap(one)(keys)


@partial(jax.jit, static_argnums=(0, 1))
def _pathwise(function: Function, dist_builder: DistBuilder, params: jax.Array, keys: jax.Array) -> jax.Array:
    """``jax.vmap`` over ``keys`` of ``jax.grad`` of ``f(rsample(key))``; compiled once per (function,
    dist_builder) pair and shapes."""

    def one(key: jax.Array) -> jax.Array:
        return jax.grad(lambda p: _value(function, dist_builder(p).rsample(key)))(params)

    return jax.vmap(one)(keys)


def score_function_jacobians(
    function: Function,
    dist_builder: DistBuilder,
    params: jax.Array,
    num_samples: int,
    *,
    seed: int,
) -> jax.Array:
    r"""Per-sample score-function gradients :math:`f(x_i)\,\nabla_\theta \log q(x_i;\theta)`, shape
    ``(num_samples, P)``; :math:`x_i` is drawn with ``sample()`` under ``jax.lax.stop_gradient``, so no
    gradient flows through it. Unbiased for :math:`\nabla_\theta E_q[f(x)]` whenever ``q`` has a log
    density differentiable in :math:`\theta` (discrete ones included)."""
    params, _ = _check(dist_builder, params, num_samples)
    return _score_function(function, dist_builder, params, _keys(seed, num_samples))


def pathwise_jacobians(
    function: Function,
    dist_builder: DistBuilder,
    params: jax.Array,
    num_samples: int,
    *,
    seed: int,
) -> jax.Array:
    r"""Per-sample pathwise gradients :math:`\nabla_\theta f(x_i(\theta))` with :math:`x_i` from
    ``rsample()``, shape ``(num_samples, P)``. Raises ``ValueError`` naming the distribution when it
    has no ``rsample`` (``has_rsample`` False, e.g. Bernoulli, Poisson): use
    :func:`score_function_jacobians` there.

    Unbiased when ``f`` is differentiable and the sample is a differentiable function of the
    parameters (explicitly, or implicitly for Gamma, Beta and Dirichlet)."""
    params, d = _check(dist_builder, params, num_samples)
    if not d.has_rsample:
        raise ValueError(f"{type(d).__name__} has no rsample, so no pathwise gradient; use score_function_jacobians")
    return _pathwise(function, dist_builder, params, _keys(seed, num_samples))


def relaxed_pair(logits: jax.Array, u: jax.Array, v: jax.Array) -> tuple[jax.Array, ...]:
    """``(b, z, z_tilde, p)``: the bits, their logistic relaxation and its conditional resample given the
    bits (:mod:`ppl_reparam.mc_gradients`), differentiable in ``logits``."""
    p = jax.nn.sigmoid(logits)
    z = logits + jnp.log(u) - jnp.log1p(-u)
    b = jax.lax.stop_gradient((z > 0).astype(logits.dtype))
    v_cond = jnp.where(b > 0, 1 - p + v * p, v * (1 - p))
    z_tilde = logits + jnp.log(v_cond) - jnp.log1p(-v_cond)
    return b, z, z_tilde, p


def gumbel_pair(logits: jax.Array, u: jax.Array, v: jax.Array) -> tuple[jax.Array, ...]:
    """``(b, z, z_tilde)``: the category ``b = argmax z`` of the Gumbel perturbation ``z`` of ``logits``
    (categories along the last dim) and the conditional resample ``z_tilde ~ p(z | b)``
    (:mod:`ppl_reparam.mc_gradients`), differentiable in ``logits``."""
    theta = jax.nn.log_softmax(logits, -1)
    z = theta - jnp.log(-jnp.log(u))
    b = jax.lax.stop_gradient(jnp.argmax(z, -1))
    at_b = jax.nn.one_hot(b, logits.shape[-1], dtype=bool)
    log_e_v = jnp.log(-jnp.log(v))  # log of the Exp(1) variates -log v
    top = -jnp.take_along_axis(log_e_v, b[..., None], -1)  # the max: Gumbel at logsumexp(theta) = 0
    z_tilde = jnp.where(at_b, top, -jnp.logaddexp(log_e_v - theta, -top))
    return b, z, z_tilde


@partial(jax.jit, static_argnums=(0, 1))
def _relax(function: Function, control: Function, logits: jax.Array, keys: jax.Array) -> jax.Array:
    """``jax.vmap`` over ``keys`` of one RELAX estimate; compiled once per (function, control) pair and shapes."""

    def one(key: jax.Array) -> jax.Array:
        tiny = jnp.finfo(logits.dtype).eps
        u, v = jnp.clip(random.uniform(key, (2, *logits.shape), logits.dtype), tiny, 1 - tiny)
        b, _, z_tilde, p = relaxed_pair(logits, u, v)
        weight = jax.lax.stop_gradient(_value(function, b) - _value(control, z_tilde))

        def controls(theta: jax.Array) -> jax.Array:
            _, z, z_tilde, _ = relaxed_pair(theta, u, v)
            return _value(control, z) - _value(control, z_tilde)

        return weight * jax.lax.stop_gradient(b - p) + jax.grad(controls)(logits)

    return jax.vmap(one)(keys)


def relax_jacobians(
    function: Function,
    control: Function,
    logits: jax.Array,
    num_samples: int,
    *,
    seed: int,
) -> jax.Array:
    r"""Per-sample RELAX gradients of :math:`E[f(b)]`, :math:`b_j \sim \mathrm{Bernoulli}(\sigma(\theta_j))`
    independent, in the logits :math:`\theta` (P,), shape ``(num_samples, P)``
    (:mod:`ppl_reparam.mc_gradients`). ``function`` maps one sample's bits (P,) to a scalar; ``control``
    maps its relaxed logits (P,) to a scalar, differentiably. Unbiased for any ``control``; both must
    be hashable (compiled as static arguments)."""
    return _relax(function, control, _params(logits, num_samples), _keys(seed, num_samples))


class _Rebar:
    r"""REBAR's control variate :math:`\eta\, f(\sigma(z/\lambda))`, hashable for the compiled estimator."""

    def __init__(self, function: Function, temperature: float, eta: float):
        self.function, self.temperature, self.eta = function, temperature, eta

    def __call__(self, z: jax.Array) -> jax.Array:
        return self.eta * self.function(jax.nn.sigmoid(z / self.temperature))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Rebar) and (other.function, other.temperature, other.eta) == (
            self.function, self.temperature, self.eta)

    def __hash__(self) -> int:
        return hash((self.function, self.temperature, self.eta))


def rebar_jacobians(
    function: Function,
    logits: jax.Array,
    num_samples: int,
    *,
    seed: int,
    temperature: float = 0.5,
    eta: float = 1.0,
) -> jax.Array:
    r""":func:`relax_jacobians` with REBAR's control variate :math:`\eta\, f(\sigma(z/\lambda))`
    (``function`` must then accept relaxed values in (0, 1) as well as bits)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return relax_jacobians(function, _Rebar(function, float(temperature), float(eta)), logits, num_samples, seed=seed)
