r"""Baselines (control variates) for the score-function estimator (NumPyro backend).

Same classes and semantics as :mod:`ppl_reparam.pyro.baselines`. A baseline :math:`b` that does not
depend on the sample :math:`z_s` leaves the score-function gradient unbiased, since
:math:`E[b\, \nabla_\phi \log q_\phi(z_s)] = 0`, and lowers its variance when it tracks the cost:

.. math:: \hat g = \nabla_\phi \log q_\phi(z_s)\, (c(z) - b).

A baseline predicts the *unscaled* cost of a site, the cost divided by the site's subsampling scale;
the ELBO multiplies it back (pyro #555), so it does not change with the batch size. Its value is
always under ``jax.lax.stop_gradient``, so the ELBO's gradient with respect to the model's and guide's
parameters is the unbiased estimate above, whatever the baseline's state.

- :class:`ConstantBaseline`: a fixed :math:`b`. On the toy problem the variance-optimal constant is
  :math:`b = \theta^2 + 3` (per-sample variance :math:`8\theta^2 + 6`, 38 at theta = 2, against 87).
- :class:`MovingAverageBaseline`: :math:`b \leftarrow \beta b + (1 - \beta) \bar c` per site, starting
  at 0, averaged over particles and over subsampled plates (whose elements change from step to step).
- :class:`LeaveOneOutBaseline` (RLOO; Kool, van Hoof and Welling 2019): particle :math:`i`'s baseline
  is the mean cost of the other particles; needs ``num_particles >= 2``. NumPyro stacks the particles
  whether they are mapped by ``jax.vmap`` or ``jax.lax.map``, so any ``vectorize_particles`` works;
  the particles then share one minibatch of each subsampled plate, so that element ``j`` of every
  particle is the same data point.
- :class:`LearnedBaseline`: a small network :math:`b_\psi(x)` of per-element features (or a learned
  constant), fit by squared error :math:`(b_\psi - c)^2` with its own Adam optimizer (Mnih and Gregor
  2014).

State in JAX
------------
Constant and leave-one-out baselines are stateless. The moving average and the learned baseline keep
their state (the averages; the network's parameters with their Adam moments) in
``numpyro.mutable`` sites named ``"_baseline.<site>"`` (:data:`STATE_PREFIX`), one per guide latent,
which the guide declares when wrapped by :meth:`Baseline.with_state`::

    baseline = MovingAverageBaseline(beta=0.9)
    elbo = ScoreFunctionELBO(num_particles=8, baseline=baseline)
    guide = baseline.with_state(guide)
    svi = SVI(model, guide, optim, loss=elbo)          # the state lives in svi_state.mutable_state
    state = svi.init(rng_key, *args)
    state, loss = jax.jit(svi.update)(state, *args)    # trains the baseline

:class:`numpyro.infer.SVI` threads mutable state through ``svi_state.mutable_state`` and calls the
ELBO's ``loss_with_mutable_state``, which returns the updated state: that is a training step, the
only place the state changes (the counterpart of Pyro's ``loss_and_grads``). ``loss``, which
:func:`~ppl_reparam.numpyro.gradient_variance` differentiates, reads the state and never updates it,
so a measurement cannot change the baseline. The state is not a ``param``: SVI's optimizer never sees
it and the gradients with respect to the model's and guide's parameters are exactly those of the
estimator above. To measure with a trained baseline, substitute its state into the guide, as NumPyro
does for any mutable site::

    gradient_variance(elbo, model, numpyro.handlers.substitute(guide, data=state.mutable_state),
                      params=svi.get_params(state))

A stateful baseline with a guide that does not declare its state raises a ValueError (a silently
untrained baseline would be easy to miss).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from jax import random
from jax.lax import stop_gradient
from numpyro.handlers import trace
from numpyro.primitives import mutable

from .. import specs
from .handlers import is_guide_latent

STATE_PREFIX = "_baseline."
"""Names of the ``numpyro.mutable`` sites that hold a stateful baseline's state: prefix + site name."""


@dataclass(frozen=True)
class Context:
    """Where a cost comes from. Costs carry the particles on their leading axis (``particle_dim``
    0); ``reduce`` are the axes to average over (the particles and the dims of subsampled plates,
    negative); ``args`` and ``kwargs`` are the model's arguments."""

    particle_dim: int
    reduce: tuple[int, ...]
    args: tuple
    kwargs: dict


class Baseline:
    """The interface the ELBOs call: ``value`` for a gradient; ``update`` in a training step (stateful
    baselines only). ``cost`` is the unscaled cost, under ``stop_gradient``, of shape
    ``(num_particles, *site_batch_shape)``."""

    needs_particles = False
    stateful = False

    # A baseline holds options only (its state lives in NumPyro's mutable state), so equal options make
    # equal baselines, and equal ELBOs (ppl_reparam.numpyro.elbo) reuse compiled code.
    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    def __hash__(self) -> int:
        return hash((type(self), *sorted(vars(self).items())))

    def value(self, site: str, cost: jax.Array, state: Any, ctx: Context) -> jax.Array:
        """The baseline for ``cost``, broadcastable to it."""
        raise NotImplementedError

    def init_state(self, site: str, shape: tuple[int, ...], args: tuple, kwargs: dict) -> Any:
        """Initial state (a pytree) of a site whose per-particle cost has ``shape``, subsampled dims
        set to 1 (stateful baselines)."""
        return None

    def update(self, site: str, cost: jax.Array, state: Any, ctx: Context) -> Any:
        """The state after learning from the ``cost`` of a training step (default: unchanged)."""
        return state

    def with_state(self, guide: Callable) -> Callable:
        """``guide``, declaring this baseline's state as ``numpyro.mutable`` sites (see the module
        docstring); a stateless baseline returns ``guide`` itself."""
        return BaselineStateGuide(guide, self) if self.stateful else guide


class ConstantBaseline(Baseline):
    """A fixed baseline ``b``."""

    def __init__(self, b: float):
        self.b = float(b)

    def value(self, site, cost, state, ctx):
        return jnp.full_like(cost, self.b)

    def __repr__(self) -> str:
        return f"ConstantBaseline({self.b})"


class MovingAverageBaseline(Baseline):
    r"""Decaying average of each site's cost, :math:`b \leftarrow \beta b + (1-\beta)\bar c`,
    starting from 0, as Pyro's ``use_decaying_avg_baseline`` (default :math:`\beta = 0.9`). Its state
    is the per-element average (subsampled plates averaged), shape fixed when the guide is first traced."""

    stateful = True

    def __init__(self, beta: float = 0.9):
        if not 0 <= beta < 1:
            raise ValueError(f"beta must lie in [0, 1), got {beta}")
        self.beta = beta

    def init_state(self, site, shape, args, kwargs):
        return jnp.zeros(shape)

    def value(self, site, cost, state, ctx):
        return state

    def update(self, site, cost, state, ctx):
        mean = jnp.mean(cost, axis=ctx.reduce, keepdims=True)[0]
        return self.beta * state + (1 - self.beta) * mean

    def __repr__(self) -> str:
        return f"MovingAverageBaseline(beta={self.beta})"


class LeaveOneOutBaseline(Baseline):
    r"""RLOO: :math:`b_i = \frac{1}{P-1}\sum_{j \ne i} c_j` over the particles."""

    needs_particles = True

    def value(self, site, cost, state, ctx):
        n = cost.shape[0]
        return (jnp.sum(cost, axis=0, keepdims=True) - cost) / (n - 1)

    def __repr__(self) -> str:
        return "LeaveOneOutBaseline()"


class LearnedBaseline(Baseline):
    """A per-site network ``b(features(*args, **kwargs))`` fit by squared error, or a learned
    constant per site when ``features`` is None.

    :param features: maps the model's arguments to per-element features of shape ``(..., F)``
        whose batch dims line up with the site's plates (for a VAE: the minibatch ``x``).
    :param hidden: width of the one hidden layer (ReLU).
    :param lr: learning rate of the baseline's own Adam optimizer (betas 0.9, 0.999, as torch's).
    :param seed: seeds the network's initial weights (PyTorch's ``nn.Linear`` initialisation), folded
        with the site's name; the guide's random stream is not touched.

    Each training step takes one Adam step on the mean squared error over particles and elements;
    the state, ``{"params", "m", "v", "t"}``, is a ``numpyro.mutable`` site (module docstring).
    """

    stateful = True

    def __init__(
        self,
        features: Callable[..., jax.Array] | None = None,
        hidden: int = 32,
        lr: float = 1e-2,
        seed: int = 0,
    ):
        self.features = features
        self.hidden = hidden
        self.lr = lr
        self.seed = seed

    def _inputs(self, args: tuple, kwargs: dict) -> jax.Array | None:
        return None if self.features is None else stop_gradient(jnp.asarray(self.features(*args, **kwargs)))

    def init_state(self, site, shape, args, kwargs):
        x = self._inputs(args, kwargs)
        if x is None:
            params = {"b": jnp.zeros(())}
        else:
            key = random.fold_in(random.PRNGKey(self.seed), zlib.crc32(site.encode()) & 0x7FFFFFFF)
            k1, k2, k3, k4 = random.split(key, 4)
            fan_in, hidden = x.shape[-1], self.hidden
            b1, b2 = 1 / jnp.sqrt(fan_in), 1 / jnp.sqrt(hidden)
            params = {
                "w1": random.uniform(k1, (fan_in, hidden), minval=-b1, maxval=b1),
                "b1": random.uniform(k2, (hidden,), minval=-b1, maxval=b1),
                "w2": random.uniform(k3, (hidden,), minval=-b2, maxval=b2),
                "b2": random.uniform(k4, (), minval=-b2, maxval=b2),
            }
        zeros = jax.tree.map(jnp.zeros_like, params)
        return {"params": params, "m": zeros, "v": zeros, "t": jnp.zeros(())}

    @staticmethod
    def _predict(params: dict, x: jax.Array | None) -> jax.Array:
        if x is None:
            return params["b"]
        h = jax.nn.relu(x @ params["w1"] + params["b1"])
        return h @ params["w2"] + params["b2"]

    def value(self, site, cost, state, ctx):
        return stop_gradient(self._predict(state["params"], self._inputs(ctx.args, ctx.kwargs)))

    def update(self, site, cost, state, ctx):
        x = self._inputs(ctx.args, ctx.kwargs)

        def error(params):
            return jnp.mean((self._predict(params, x) - cost) ** 2)

        grads = jax.grad(error)(state["params"])
        t = state["t"] + 1
        m = jax.tree.map(lambda m, g: 0.9 * m + 0.1 * g, state["m"], grads)
        v = jax.tree.map(lambda v, g: 0.999 * v + 0.001 * g * g, state["v"], grads)
        step = self.lr * jnp.sqrt(1 - 0.999**t) / (1 - 0.9**t)
        params = jax.tree.map(
            lambda p, m, v: p - step * m / (jnp.sqrt(v) + 1e-8 * jnp.sqrt(1 - 0.999**t)), state["params"], m, v
        )
        return {"params": params, "m": m, "v": v, "t": t}

    def __repr__(self) -> str:
        return f"LearnedBaseline(features={self.features!r}, hidden={self.hidden}, lr={self.lr})"


def subsampled_frames(tr: dict) -> frozenset[str]:
    """Names of the plates of a trace that are subsampled (subsample size below the plate's size)."""
    return frozenset(
        name for name, site in tr.items() if site["type"] == "plate" and site["args"][1] not in (None, site["args"][0])
    )


def state_shape(site: dict, subsampled: frozenset[str]) -> tuple[int, ...]:
    """Shape of a site's per-particle cost (its value's batch and sample dims) with the dims of
    subsampled plates set to 1: the shape of a moving average's state."""
    value_shape = jnp.shape(site["value"])
    shape = list(value_shape[: len(value_shape) - len(site["fn"].event_shape)])
    for frame in site["cond_indep_stack"]:
        if frame.name in subsampled and -frame.dim <= len(shape):
            shape[frame.dim] = 1
    return tuple(shape)


class BaselineStateGuide:
    """A guide that declares a stateful baseline's state; see :meth:`Baseline.with_state`.

    After the wrapped guide runs, one ``numpyro.mutable`` site ``"_baseline.<site>"`` is declared for
    each of its latent sample sites (whichever estimator the ELBO then picks for it), initialised by
    ``baseline.init_state``. Attributes (``median``, ``sample_posterior``, ...) are the wrapped guide's.
    """

    def __init__(self, guide: Callable, baseline: Baseline):
        self.guide = guide
        self.baseline = baseline

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with trace() as tr:
            result = self.guide(*args, **kwargs)
        subsampled = subsampled_frames(tr)
        for name, site in tr.items():
            if is_guide_latent(site):
                init = self.baseline.init_state(name, state_shape(site, subsampled), args, kwargs)
                mutable(STATE_PREFIX + name, init)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["guide"], name)

    def __repr__(self) -> str:
        return f"{self.baseline!r}.with_state({self.guide!r})"


BASELINES = {
    "moving_average": MovingAverageBaseline,
    "rloo": LeaveOneOutBaseline,
    "learned": LearnedBaseline,
}


def make_baseline(spec: str | float | Baseline | None) -> Baseline | None:
    """A baseline from a name in :data:`BASELINES`, a number (constant), an instance, or None."""
    return specs.make_baseline(spec, BASELINES, ConstantBaseline, Baseline)
