r"""The variational autoencoder of Kingma and Welling ("Auto-Encoding Variational Bayes", ICLR 2014) in
NumPyro, for binarized images: the same model, guide, sizes and parameter names as the Pyro one
(:mod:`ppl_reparam.models.vae`).

Generative model, for each datum :math:`i` of a minibatch (plate ``"data"``, scaled by N/B):

.. math:: z_i \sim \mathcal N(0, I_L), \qquad x_i \mid z_i \sim \prod_{d=1}^{D}
   \operatorname{Bernoulli}\big(x_{id};\ \operatorname{logits} = f_\theta(z_i)_d\big),

and guide :math:`q_\phi(z_i \mid x_i) = \mathcal N(\mu_\phi(x_i), \operatorname{diag}\sigma_\phi(x_i)^2)`
with :math:`(\mu, \sigma_{raw}) = g_\phi(x_i)` split in halves and
:math:`\sigma = \operatorname{softplus}(\sigma_{raw}) + 10^{-3}`. :math:`f_\theta` and :math:`g_\phi` are
MLPs with softplus between layers (64-128-8 for the 8x8 digits).

The networks are plain JAX functions of ``numpyro.param`` arrays, one site per weight and bias, named as
the Pyro backend's param store names them (``encoder.net.0.weight``, ``decoder.net.2.bias``, ...; torch
layout: a weight is ``(out, in)`` and a layer computes ``x W^T + b``), so the parameters group into
encoder and decoder by the first component of the name, and weights can be copied between backends.
``numpyro.module`` (stax) or ``numpyro.contrib.module`` (flax, not installed here) would hold each
network as one pytree-valued site, which :func:`ppl_reparam.numpyro.gradient_variance` cannot summarise
per array. Initial values follow ``torch.nn.Linear``'s default: weight and bias
:math:`\sim U(-1/\sqrt{\text{fan\_in}}, 1/\sqrt{\text{fan\_in}})` (He et al. 2015's uniform with
:math:`a = \sqrt 5`), drawn from the key of the handler that seeds the trace (``SVI.init``).

Minibatches: with ``num_data`` = N, the plate is ``numpyro.plate("data", N, subsample_size=B)`` with
its indices fixed to ``arange(B)`` (the caller passes the rows themselves, as
:func:`ppl_reparam.pyro.guides.data_plate` does), so every log-density in it is scaled by N/B and no
random subsample is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.handlers import substitute

__all__ = ["MLP", "VAE", "data_plate", "make_vae"]

Params = Mapping[str, jax.Array]


def data_plate(name: str, batch_size: int, num_data: int | None = None) -> numpyro.plate:
    """The plate over a minibatch of ``batch_size`` rows out of ``num_data`` (default: the batch is all
    the data, no scaling); the NumPyro twin of :func:`ppl_reparam.pyro.guides.data_plate`.

    With ``num_data`` its subsample indices are ``arange(batch_size)`` (substituted, so NumPyro draws
    none): only their number matters, for the scale ``num_data / batch_size``. Model and guide must
    build it alike.
    """
    if num_data is None:
        return numpyro.plate(name, batch_size)
    if not 1 <= batch_size <= num_data:
        raise ValueError(f"plate {name!r}: a batch of {batch_size} rows out of num_data={num_data}")
    with substitute(data={name: jnp.arange(batch_size)}):
        return numpyro.plate(name, num_data, subsample_size=batch_size)


def _torch_linear_init(shape: tuple[int, ...], fan_in: int) -> Callable[[jax.Array], jax.Array]:
    """``torch.nn.Linear``'s default initialiser for a weight or bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array) -> jax.Array:
        return jax.random.uniform(key, shape, minval=-bound, maxval=bound)

    return init


@dataclass(frozen=True)
class MLP:
    """Linear layers through ``sizes`` with softplus between them (none after the last), as the Pyro
    backend's ``nn.Sequential``: layer ``k`` is ``{prefix}.{2k}.weight`` ``(out, in)`` and
    ``{prefix}.{2k}.bias`` ``(out,)`` (the softplus modules take the odd indices)."""

    prefix: str
    sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.sizes) < 2 or min(self.sizes) < 1:
            raise ValueError(f"MLP {self.prefix!r}: needs at least two positive layer sizes, got {list(self.sizes)}")

    @property
    def layers(self) -> list[str]:
        return [f"{self.prefix}.{2 * k}" for k in range(len(self.sizes) - 1)]

    def params(self) -> dict[str, jax.Array]:
        """Declare every weight and bias as a ``numpyro.param`` site and return their values (the
        initial values are drawn from the seeding handler's key when no value is substituted)."""
        values = {}
        for layer, (m, n) in zip(self.layers, zip(self.sizes[:-1], self.sizes[1:])):
            values[f"{layer}.weight"] = numpyro.param(f"{layer}.weight", _torch_linear_init((n, m), m))
            values[f"{layer}.bias"] = numpyro.param(f"{layer}.bias", _torch_linear_init((n,), m))
        return values

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        r"""The network at ``params`` (a pure function):
        :math:`h_{k+1} = \operatorname{softplus}(h_k W_k^T + b_k)`, without the softplus after the last layer."""
        for k, layer in enumerate(self.layers):
            if k:
                x = jax.nn.softplus(x)
            x = x @ params[f"{layer}.weight"].T + params[f"{layer}.bias"]
        return x


@dataclass(frozen=True)
class VAE:
    """Model and guide of the VAE (see the module docstring); both take ``(x, num_data=None)``, ``x`` a
    ``(B, D)`` batch of 0/1 floats and ``num_data`` the training-set size for the N/B scale.

    :meth:`encode` and :meth:`decode` evaluate the networks at given parameters, e.g. those of
    ``svi.get_params(state)``, for reconstructions and samples outside a trace. It holds sizes only
    (frozen; the parameters live in NumPyro's traces), so one object can serve every caller:
    :func:`make_vae` returns the same one for the same sizes.
    """

    input_dim: int = 64
    hidden: tuple[int, ...] = (128,)
    latent_dim: int = 8
    min_scale: float = 1e-3
    site: str = "z"
    plate_name: str = "data"

    @property
    def encoder(self) -> MLP:
        """``x -> (loc, raw scale)``: input_dim, hidden..., 2 latent_dim."""
        return MLP("encoder.net", (self.input_dim, *self.hidden, 2 * self.latent_dim))

    @property
    def decoder(self) -> MLP:
        """``z -> logits``: latent_dim, reversed hidden..., input_dim."""
        return MLP("decoder.net", (self.latent_dim, *reversed(self.hidden), self.input_dim))

    def encode(self, params: Params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(loc, scale)`` of q(z | x) at ``params``, each ``(len(x), latent_dim)``."""
        out = self.encoder.apply(params, x)
        loc, raw = out[..., : self.latent_dim], out[..., self.latent_dim :]
        return loc, jax.nn.softplus(raw) + self.min_scale

    def decode(self, params: Params, z: jax.Array) -> jax.Array:
        """Bernoulli logits of x given z at ``params``."""
        return self.decoder.apply(params, z)

    def model(self, x: jax.Array, num_data: int | None = None) -> jax.Array:
        """``z ~ Normal(0, I).to_event(1)``, ``x ~ Bernoulli(logits=decoder(z)).to_event(1)``; returns
        the logits."""
        params = self.decoder.params()
        prior = dist.Normal(jnp.zeros(self.latent_dim), 1.0).to_event(1)
        with data_plate(self.plate_name, x.shape[0], num_data):
            z = numpyro.sample(self.site, prior)
            logits = self.decode(params, z)
            numpyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)
        return logits

    def guide(self, x: jax.Array, num_data: int | None = None) -> jax.Array:
        """``z ~ Normal(loc, scale).to_event(1)`` per datum, ``(loc, scale) = encode(x)``; returns z."""
        loc, scale = self.encode(self.encoder.params(), x)
        with data_plate(self.plate_name, x.shape[0], num_data):
            return numpyro.sample(self.site, dist.Normal(loc, scale).to_event(1))


def make_vae(input_dim: int = 64, hidden: Sequence[int] = (128,), latent_dim: int = 8) -> VAE:
    """The :class:`VAE` of these sizes; its initial weights are drawn when ``SVI.init(key, ...)`` first
    runs it. The same sizes give the same object, so that its ``model`` and ``guide`` (bound methods,
    equal only for the same object) hit the caches of functions ``jax.jit`` compiled with them as static
    arguments (:func:`~ppl_reparam.numpyro.gradient_variance`, the training step)."""
    if latent_dim < 1 or input_dim < 1 or any(h < 1 for h in hidden):
        raise ValueError(f"layer sizes must be positive: input {input_dim}, hidden {list(hidden)}, latent {latent_dim}")
    return _make_vae(int(input_dim), tuple(int(h) for h in hidden), int(latent_dim))


@lru_cache(maxsize=16)
def _make_vae(input_dim: int, hidden: tuple[int, ...], latent_dim: int) -> VAE:
    return VAE(input_dim, hidden, latent_dim)
