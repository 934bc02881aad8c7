r"""RELAX's learned control at a discrete guide site, NumPyro backend (Grathwohl, Choi, Wu, Roeder and
Duvenaud 2018, "Backpropagation through the Void"; the maths in :mod:`ppl_reparam.pyro.relax`).

The control is :math:`c_\phi(z) = \eta\, f(\sigma(z / \lambda)) + r_\rho(z)` at Bernoulli sites and
:math:`r_\rho(z)` at Categorical ones, :math:`r_\rho` a two-layer tanh network on the site's relaxation
(one output per element of the site's batch) whose output layer starts at zero, so that before any
learning RELAX is REBAR. In NumPyro a loss is a pure function of the parameters, so :math:`\phi` lives
in NumPyro params that the guide declares, named ``relax.<site>.<part>``
(:meth:`ppl_reparam.numpyro.RelaxELBO.with_controls`): ``SVI`` updates them with its optimizer beside the
model's and guide's, from the gradient the ELBO's loss gives them, that of the squared norm of the
guide parameters' estimate.
"""

from __future__ import annotations

import math
import zlib

import jax
import jax.numpy as jnp
from jax import random

PREFIX = "relax."
"""The NumPyro param names of a site's control start with this and the site's name."""

PARTS = ("w1", "b1", "w2", "b2")
"""The network's parameters: :math:`r(z) = w_2 \\cdot \\tanh(W_1 z + b_1) + b_2`."""

RELAXED = ("eta", "log_temperature")
"""The learned :math:`\\eta` and :math:`\\log\\lambda` of a Bernoulli site's control."""


def param_name(site: str, part: str) -> str:
    """The NumPyro param of ``part`` of the control of ``site``."""
    return f"{PREFIX}{site}.{part}"


def is_control(name: str) -> bool:
    """A param of a RELAX control (excluded from the parameters whose gradient is estimated)."""
    return name.startswith(PREFIX)


def initial(site: str, size: int, hidden: int, temperature: float | None, eta: float | None) -> dict[str, jax.Array]:
    """The initial control of ``site`` whose relaxation has ``size`` numbers per batch element: the first
    layer as ``torch.nn.Linear``'s default (uniform on :math:`\\pm 1/\\sqrt{size}`) from a key of the
    site's name alone, the output layer zero; with ``temperature``, also :math:`\\eta` and
    :math:`\\log\\lambda` (a Bernoulli site)."""
    bound = 1 / math.sqrt(size)
    w_key, b_key = random.split(random.PRNGKey(zlib.crc32(site.encode())))
    values = {
        "w1": random.uniform(w_key, (size, hidden), minval=-bound, maxval=bound),
        "b1": random.uniform(b_key, (hidden,), minval=-bound, maxval=bound),
        "w2": jnp.zeros(hidden),
        "b2": jnp.zeros(()),
    }
    if temperature is not None:
        values |= {"eta": jnp.asarray(float(eta)), "log_temperature": jnp.asarray(math.log(temperature))}
    return {param_name(site, part): value for part, value in values.items()}


def network(params: dict[str, jax.Array], site: str, z: jax.Array, batch_dims: int) -> jax.Array:
    r""":math:`r_\rho(z)`, one value per batch element (the first ``batch_dims`` dims of ``z``)."""
    x = jnp.reshape(z, jnp.shape(z)[:batch_dims] + (-1,))
    h = jnp.tanh(x @ params[param_name(site, "w1")] + params[param_name(site, "b1")])
    return h @ params[param_name(site, "w2")] + params[param_name(site, "b2")]
