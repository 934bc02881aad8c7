r"""The variational autoencoder with binary latents in NumPyro, and its Concrete relaxation: the same
model, guide, sizes and parameter names as the Pyro one (:mod:`ppl_reparam.models.discrete_vae`).

Generative model, for each datum :math:`i` of a minibatch (plate ``"data"``, scaled by N/B):

.. math:: z_i \sim \prod_{l=1}^{L} \operatorname{Bernoulli}(z_{il};\ 1/2), \qquad
   x_i \mid z_i \sim \prod_{d=1}^{D} \operatorname{Bernoulli}\big(x_{id};\ \operatorname{logits} = f_\theta(z_i)_d\big),

and guide :math:`q_\phi(z_i \mid x_i) = \prod_l \operatorname{Bernoulli}(z_{il};\ \operatorname{logits} =
g_\phi(x_i)_l)`. :math:`f_\theta` (``decoder.net.*``, L-hidden reversed-D) and :math:`g_\phi`
(``encoder.net.*``, D-hidden-L) are the :class:`~ppl_reparam.models.vae_numpyro.MLP` networks of the
Gaussian VAE: one ``numpyro.param`` per weight and bias, named as Pyro's param store names them, torch
layout and ``torch.nn.Linear``'s initialisation, drawn from the key that seeds the trace (``SVI.init``).
The bits have no reparameterized sampler: the ELBO's gradient takes the score function (with or
without a baseline) or VIMCO; a pathwise request names the site ``"z"`` in its error.

**Relaxation** (Maddison, Mnih and Teh, "The Concrete Distribution", ICLR 2017; Jang, Gu and Poole,
"Categorical Reparameterization with Gumbel-Softmax", ICLR 2017). At temperature :math:`\lambda`
prior and guide draw the *logit* :math:`y = (l + L)/\lambda` of a RelaxedBernoulli
(:class:`LogitRelaxedBernoulli`; ``L`` standard logistic, ``l`` the logits: 0 for the prior, the
encoder's for the guide) and the decoder reads :math:`\sigma(y) \in (0, 1)` instead of a bit. The
relaxed ELBO :math:`E_{q_\lambda}[\log p_\lambda(y) + \log p_\theta(x \mid \sigma(y)) - \log q_\lambda(y
\mid x)]` is reparameterizable (train it pathwise) but is another objective than the discrete ELBO:
a biased surrogate. The density ratio :math:`q/p`, and so the relaxed ELBO, is the same in the logit
coordinate as in :math:`\sigma(y)` (the sigmoid's Jacobian cancels); working with logits is Maddison
et al.'s advice for numerical stability.

**Temperature in JAX.** Model and guide are static arguments of the jitted functions that train and
measure them (their identity keys the compiled code), so a temperature is not an attribute changed in
place as in Pyro: :class:`DiscreteVAE` is a frozen object built for one temperature (None: the discrete
model), and :meth:`DiscreteVAE.at` gives the object of the same sizes at another one. All of them
declare the same ``numpyro.param`` sites, so one parameter dict (``svi.get_params(state)``) serves
each: a model trained relaxed is evaluated on the discrete ELBO by handing its parameters to
``at(None)``. :func:`make_discrete_vae` returns one object per sizes and temperature, so compiled code
is reused. :func:`exact_elbo` enumerates the :math:`2^L` states of a small model (tests).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax import lax, random
from numpyro.distributions import constraints
from numpyro.distributions.util import promote_shapes, validate_sample

from ppl_reparam.models.vae_numpyro import MLP, data_plate

__all__ = ["MAX_ENUMERATED_BITS", "DiscreteVAE", "LogitRelaxedBernoulli", "exact_elbo", "make_discrete_vae"]

Params = Mapping[str, jax.Array]
MAX_ENUMERATED_BITS = 12
"""Most latent bits :func:`exact_elbo` enumerates (4096 states)."""


class LogitRelaxedBernoulli(dist.Distribution):
    r"""The logit of a RelaxedBernoulli (Concrete) variable at temperature :math:`\lambda` with logits
    :math:`l`: :math:`y = (l + L)/\lambda`, :math:`L = \log u - \log(1 - u)` standard logistic.

    Density (Maddison et al. 2017, appendix C), with :math:`d = l - \lambda y`:

    .. math:: \log p(y) = \log\lambda + d - 2\operatorname{softplus}(d),

    finite for every :math:`d`. It is NumPyro's ``RelaxedBernoulliLogits`` before its sigmoid (that is
    ``Logistic(l/λ, 1/λ)`` pushed through a sigmoid, on the unit interval), the twin of Pyro's
    :class:`ppl_reparam.models.discrete_vae.LogitRelaxedBernoulli`. ``sample`` is differentiable in
    both parameters (``has_rsample``).
    """

    arg_constraints = {"temperature": constraints.positive, "logits": constraints.real}
    support = constraints.real
    reparametrized_params = ["temperature", "logits"]

    def __init__(self, temperature: float | jax.Array, logits: jax.Array, *, validate_args: bool | None = None):
        self.temperature, self.logits = promote_shapes(temperature, logits)
        batch_shape = lax.broadcast_shapes(jnp.shape(temperature), jnp.shape(logits))
        super().__init__(batch_shape, validate_args=validate_args)

    def sample(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        noise = random.logistic(key, sample_shape + self.batch_shape, dtype=jnp.result_type(self.logits, float))
        return (self.logits + noise) / self.temperature

    @validate_sample
    def log_prob(self, value: jax.Array) -> jax.Array:
        diff = self.logits - value * self.temperature
        return jnp.log(self.temperature) + diff - 2 * jax.nn.softplus(diff)


def _latent(logits: jax.Array, temperature: float | None) -> dist.Distribution:
    if temperature is None:
        return dist.Bernoulli(logits=logits).to_event(1)
    return LogitRelaxedBernoulli(temperature, logits).to_event(1)


@dataclass(frozen=True)
class DiscreteVAE:
    """Model and guide of the discrete VAE at ``temperature`` (None: the bits; see the module
    docstring); both take ``(x, num_data=None)``, ``x`` a ``(B, D)`` batch of 0/1 floats.

    :meth:`encode` and :meth:`decode` evaluate the networks at given parameters (for reconstructions
    and samples outside a trace): the decoder at any input in :math:`[0, 1]^L`, bits included, whatever
    the temperature. It holds sizes only (frozen); get it from :func:`make_discrete_vae` or :meth:`at`.
    """

    input_dim: int = 64
    hidden: tuple[int, ...] = (128,)
    latent_dim: int = 16
    temperature: float | None = None
    site: str = "z"
    plate_name: str = "data"

    def __post_init__(self) -> None:
        if self.temperature is not None and not self.temperature > 0:
            raise ValueError(f"the relaxation temperature must be positive, got {self.temperature}")

    @property
    def encoder(self) -> MLP:
        """``x -> logits`` of q(z | x): input_dim, hidden..., latent_dim."""
        return MLP("encoder.net", (self.input_dim, *self.hidden, self.latent_dim))

    @property
    def decoder(self) -> MLP:
        """``z -> logits`` of x: latent_dim, reversed hidden..., input_dim."""
        return MLP("decoder.net", (self.latent_dim, *reversed(self.hidden), self.input_dim))

    def at(self, temperature: float | None) -> DiscreteVAE:
        """The model of the same sizes (and parameters) at ``temperature`` (None: discrete)."""
        return make_discrete_vae(self.input_dim, self.hidden, self.latent_dim, temperature)

    def encode(self, params: Params, x: jax.Array) -> jax.Array:
        """Logits of q(z | x) at ``params``, shape ``(len(x), latent_dim)``."""
        return self.encoder.apply(params, x)

    def decode(self, params: Params, z: jax.Array) -> jax.Array:
        """Bernoulli logits of x given decoder input ``z`` (bits, or relaxed bits in (0, 1)) at ``params``."""
        return self.decoder.apply(params, z)

    def decoder_input(self, z: jax.Array) -> jax.Array:
        """What the decoder reads: the bits, or ``sigmoid`` of the relaxed logits."""
        return z if self.temperature is None else jax.nn.sigmoid(z)

    def model(self, x: jax.Array, num_data: int | None = None) -> jax.Array:
        """``z ~ Bernoulli(1/2)`` per bit (relaxed: its LogitRelaxedBernoulli), ``x ~
        Bernoulli(logits=decoder(z))``; returns the logits."""
        params = self.decoder.params()
        prior = _latent(jnp.zeros(self.latent_dim), self.temperature)
        with data_plate(self.plate_name, x.shape[0], num_data):
            z = numpyro.sample(self.site, prior)
            logits = self.decode(params, self.decoder_input(z))
            numpyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)
        return logits

    def guide(self, x: jax.Array, num_data: int | None = None) -> jax.Array:
        """``z ~ Bernoulli(logits=encode(x))`` per datum (relaxed: its LogitRelaxedBernoulli); returns z."""
        logits = self.encode(self.encoder.params(), x)
        with data_plate(self.plate_name, x.shape[0], num_data):
            return numpyro.sample(self.site, _latent(logits, self.temperature))


def make_discrete_vae(
    input_dim: int = 64, hidden: Sequence[int] = (128,), latent_dim: int = 16, temperature: float | None = None
) -> DiscreteVAE:
    """The :class:`DiscreteVAE` of these sizes at ``temperature`` (None: the discrete model); its initial
    weights are drawn when ``SVI.init(key, ...)`` first runs it. The same arguments give the same
    object, so that its ``model`` and ``guide`` (bound methods, equal only for the same object) hit the
    caches of functions ``jax.jit`` compiled with them as static arguments."""
    if latent_dim < 1 or input_dim < 1 or any(h < 1 for h in hidden):
        raise ValueError(f"layer sizes must be positive: input {input_dim}, hidden {list(hidden)}, latent {latent_dim}")
    return _make(int(input_dim), tuple(int(h) for h in hidden), int(latent_dim),
                 None if temperature is None else float(temperature))


@lru_cache(maxsize=64)
def _make(input_dim: int, hidden: tuple[int, ...], latent_dim: int, temperature: float | None) -> DiscreteVAE:
    return DiscreteVAE(input_dim, hidden, latent_dim, temperature)


def exact_elbo(vae: DiscreteVAE, params: Params, x: jax.Array) -> jax.Array:
    r"""The discrete ELBO of each row of ``x`` at ``params``, by enumerating the :math:`2^L` states,

    .. math:: \mathrm{ELBO}_i = \sum_z q(z \mid x_i)\,[\log p(z) + \log p(x_i \mid z) - \log q(z \mid x_i)],

    with :math:`\log p(z) = -L \log 2`; differentiable in ``params`` (``jax.grad`` gives the exact
    gradient). Shape ``(len(x),)``; computed from the networks directly (no NumPyro traces), as an
    independent reference; at most :data:`MAX_ENUMERATED_BITS` bits. ``vae``'s temperature is ignored:
    this is the discrete model's ELBO.
    """
    latent_dim = vae.latent_dim
    if latent_dim > MAX_ENUMERATED_BITS:
        raise ValueError(f"exact_elbo enumerates 2^L states; L = {latent_dim} > {MAX_ENUMERATED_BITS}")
    states = jnp.array(list(itertools.product((0.0, 1.0), repeat=latent_dim)))  # (S, L)
    logits_q = vae.encode(params, x)  # (B, L)
    s = states[:, None]
    log_q = (s * jax.nn.log_sigmoid(logits_q) + (1 - s) * jax.nn.log_sigmoid(-logits_q)).sum(-1)  # (S, B)
    logits_x = vae.decode(params, states)[:, None]  # (S, 1, D)
    log_lik = (x * jax.nn.log_sigmoid(logits_x) + (1 - x) * jax.nn.log_sigmoid(-logits_x)).sum(-1)  # (S, B)
    return (jnp.exp(log_q) * (-latent_dim * math.log(2.0) + log_lik - log_q)).sum(0)
