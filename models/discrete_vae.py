r"""A variational autoencoder with binary latents in Pyro, and its Concrete relaxation.

Generative model, for each datum :math:`i` of a minibatch (plate ``"data"``, scaled by N/B):

.. math:: z_i \sim \prod_{l=1}^{L} \operatorname{Bernoulli}(z_{il};\ 1/2), \qquad
   x_i \mid z_i \sim \prod_{d=1}^{D} \operatorname{Bernoulli}\big(x_{id};\ \operatorname{logits} = f_\theta(z_i)_d\big)

with :math:`f_\theta` the :class:`~ppl_reparam.models.vae.MLPDecoder` of the Gaussian VAE. The guide
(:class:`AmortizedBernoulli`) is :math:`q_\phi(z_i \mid x_i) = \prod_l \operatorname{Bernoulli}(z_{il};\
\operatorname{logits} = g_\phi(x_i)_l)`, :math:`g_\phi` an MLP (:class:`BernoulliEncoder`). Its
samples have no ``rsample``: the ELBO's gradient takes the score function (with or without a
baseline) or VIMCO; a pathwise request names the site ``"z"`` in its error.

**Relaxation** (Maddison, Mnih and Teh, "The Concrete Distribution", ICLR 2017; Jang, Gu and Poole,
"Categorical Reparameterization with Gumbel-Softmax", ICLR 2017). With ``temperature`` :math:`\lambda`
set, prior and guide draw the *logit* :math:`y = (l + L)/\lambda` of a RelaxedBernoulli
(:class:`LogitRelaxedBernoulli`; ``L`` standard logistic, ``l`` the logits: 0 for the prior, the
encoder's for the guide) and the decoder reads :math:`\sigma(y) \in (0, 1)` instead of a bit. The
relaxed ELBO :math:`E_{q_\lambda}[\log p_\lambda(y) + \log p_\theta(x \mid \sigma(y)) - \log
q_\lambda(y \mid x)]` is reparameterizable (train it pathwise) but is another objective than the
discrete ELBO: a biased surrogate. Working with logits is Maddison et al.'s advice for numerical
stability; the density ratio :math:`q/p`, and so the relaxed ELBO, is the same in either coordinate
(the sigmoid's Jacobian cancels). With one temperature for prior and guide, the ratio depends only
on :math:`\lambda y`, so the relaxed KL term equals the KL between the logistic variables
:math:`l_q + L` and :math:`l_p + L` at every temperature, an upper bound of the Bernoulli KL (the
bits are their signs); the temperature acts through the decoder's input only.

Model and guide share their parameters across the two forms (``decoder.*``, ``encoder.*`` in Pyro's
param store), so a model trained relaxed is evaluated on the true discrete ELBO by setting
``temperature = None`` (:func:`relaxation`). :func:`exact_elbo` enumerates the :math:`2^L` states of
a small model for exact ELBOs and gradients (tests). Defaults (64-128-16: D = 64 pixels, one hidden
layer of 128 softplus units, L = 16 bits) suit the 8x8 digits.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistributionMixin
from pyro.nn import PyroModule
from pyro.nn.module import to_pyro_module_
from torch import nn
from torch.distributions.relaxed_bernoulli import LogitRelaxedBernoulli as _TorchLogitRelaxedBernoulli
from torch.nn.functional import logsigmoid, softplus

from ppl_reparam.models.vae import MLPDecoder, mlp
from ppl_reparam.pyro.guides import data_plate
from ppl_reparam.pyro.training import relaxation

__all__ = [
    "AmortizedBernoulli",
    "BernoulliEncoder",
    "DiscreteVAEModel",
    "LogitRelaxedBernoulli",
    "exact_elbo",
    "make_discrete_vae",
    "relaxation",
]

_EMPTY = torch.Size()
MAX_ENUMERATED_BITS = 12
"""Most latent bits :func:`exact_elbo` enumerates (4096 states)."""


class LogitRelaxedBernoulli(_TorchLogitRelaxedBernoulli, TorchDistributionMixin):
    r"""torch's ``LogitRelaxedBernoulli`` as a Pyro distribution, numerically safer:
    ``rsample`` is :math:`(l + \log u - \log(1-u))/\lambda` straight from the logits (torch goes
    through clamped probabilities, which caps :math:`|l|` near 17), ``log_prob`` is
    :math:`\log\lambda + d - 2\,\operatorname{softplus}(d)`, :math:`d = l - \lambda y` (torch's
    :math:`\log(1 + e^d)` overflows for :math:`d > 88`); and it declares ``has_rsample``, which
    torch leaves False though it implements ``rsample``."""

    has_rsample = True

    def __init__(self, temperature: float | torch.Tensor, logits: torch.Tensor, validate_args: bool | None = None):
        super().__init__(torch.as_tensor(temperature, dtype=logits.dtype), logits=logits, validate_args=validate_args)

    def expand(self, batch_shape: torch.Size, _instance: Any = None) -> LogitRelaxedBernoulli:
        return super().expand(batch_shape, _instance or self.__new__(type(self)))

    def rsample(self, sample_shape: torch.Size = _EMPTY) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        u = torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device)
        u = u.clamp(torch.finfo(u.dtype).tiny, 1 - torch.finfo(u.dtype).eps)
        return (self.logits.expand(shape) + u.log() - (-u).log1p()) / self.temperature

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        diff = self.logits - value * self.temperature
        return self.temperature.log() + diff - 2 * softplus(diff)


class BernoulliEncoder(nn.Module):
    """``x -> logits``: an MLP through ``hidden`` to ``L`` logits of q(z | x)."""

    def __init__(self, input_dim: int = 64, hidden: Sequence[int] = (128,), latent_dim: int = 16):
        super().__init__()
        self.latent_dim = latent_dim
        self.net = mlp([input_dim, *hidden, latent_dim])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _latent(logits: torch.Tensor, temperature: float | None) -> dist.TorchDistribution:
    if temperature is None:
        return dist.Bernoulli(logits=logits).to_event(1)
    return LogitRelaxedBernoulli(temperature, logits).to_event(1)


def _check_temperature(temperature: float | None) -> float | None:
    if temperature is not None and not temperature > 0:
        raise ValueError(f"the relaxation temperature must be positive, got {temperature}")
    return None if temperature is None else float(temperature)


class DiscreteVAEModel(PyroModule):
    r"""The generative model: ``z ~ Bernoulli(1/2)`` per bit, ``x ~ Bernoulli(logits=decoder(z))``; with
    ``temperature`` set, ``z`` is the logit of a RelaxedBernoulli(temperature, 1/2) and the decoder reads
    ``sigmoid(z)``. ``forward(x, num_data=None)`` as :class:`~ppl_reparam.models.vae.VAEModel`."""

    def __init__(
        self, decoder: MLPDecoder, latent_dim: int, plate_name: str = "data", temperature: float | None = None
    ):
        super().__init__()
        to_pyro_module_(decoder)
        self.decoder = decoder
        self.latent_dim = latent_dim
        self.plate_name = plate_name
        self.temperature = _check_temperature(temperature)

    def decoder_input(self, z: torch.Tensor) -> torch.Tensor:
        """What the decoder reads: the bits, or ``sigmoid`` of the relaxed logits."""
        return z if self.temperature is None else torch.sigmoid(z)

    def forward(self, x: torch.Tensor, num_data: int | None = None) -> torch.Tensor:
        prior = _latent(torch.zeros(self.latent_dim), self.temperature)
        with data_plate(self.plate_name, x.shape[0], num_data):
            z = pyro.sample("z", prior)
            logits = self.decoder(self.decoder_input(z))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)
        return logits


class AmortizedBernoulli(PyroModule):
    """Guide ``z ~ Bernoulli(logits=encoder(x)).to_event(1)`` per datum; with ``temperature`` set,
    ``z ~ LogitRelaxedBernoulli(temperature, logits=encoder(x)).to_event(1)``. ``encoder`` becomes a
    ``PyroModule`` (parameters ``encoder.*``); ``forward(x, *args, num_data=None, **kwargs)``."""

    def __init__(
        self, encoder: nn.Module, site: str = "z", plate_name: str = "data", temperature: float | None = None
    ):
        super().__init__()
        if not isinstance(encoder, PyroModule):
            to_pyro_module_(encoder)
        self.encoder = encoder
        self.site = site
        self.plate_name = plate_name
        self.temperature = _check_temperature(temperature)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of q(z | x), shape ``(len(x), latent_dim)``."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor, *args: Any, num_data: int | None = None, **kwargs: Any) -> torch.Tensor:
        logits = self.encode(x)
        with data_plate(self.plate_name, x.shape[0], num_data):
            return pyro.sample(self.site, _latent(logits, self.temperature))


def make_discrete_vae(
    input_dim: int = 64, hidden: Sequence[int] = (128,), latent_dim: int = 16, temperature: float | None = None
) -> tuple[DiscreteVAEModel, AmortizedBernoulli]:
    """A fresh ``(model, guide)`` pair, weights drawn from torch's RNG (seed it for reproducibility);
    ``temperature`` None is the discrete model, else its relaxation (switch later with :func:`relaxation`)."""
    if latent_dim < 1 or input_dim < 1 or any(h < 1 for h in hidden):
        raise ValueError(f"layer sizes must be positive: input {input_dim}, hidden {list(hidden)}, latent {latent_dim}")
    model = DiscreteVAEModel(MLPDecoder(latent_dim, tuple(reversed(hidden)), input_dim), latent_dim,
                             temperature=temperature)
    guide = AmortizedBernoulli(BernoulliEncoder(input_dim, hidden, latent_dim), temperature=temperature)
    return model, guide


def exact_elbo(model: DiscreteVAEModel, guide: AmortizedBernoulli, x: torch.Tensor) -> torch.Tensor:
    r"""The discrete ELBO of each row of ``x`` by enumerating the :math:`2^L` latent states,

    .. math:: \mathrm{ELBO}_i = \sum_z q(z \mid x_i)\,[\log p(z) + \log p(x_i \mid z) - \log q(z \mid x_i)],

    differentiable in the parameters (an exact gradient). Shape ``(len(x),)``; computed with torch
    directly from the networks (no Pyro traces), as an independent reference; at most
    :data:`MAX_ENUMERATED_BITS` bits."""
    latent_dim = model.latent_dim
    if latent_dim > MAX_ENUMERATED_BITS:
        raise ValueError(f"exact_elbo enumerates 2^L states; L = {latent_dim} > {MAX_ENUMERATED_BITS}")
    states = torch.tensor(list(itertools.product((0.0, 1.0), repeat=latent_dim)))  # (S, L)
    logits_q = guide.encode(x)  # (B, L)
    log_q = (states[:, None] * logsigmoid(logits_q) + (1 - states[:, None]) * logsigmoid(-logits_q)).sum(-1)  # (S, B)
    logits_x = model.decoder(states)  # (S, D)
    log_lik = dist.Bernoulli(logits=logits_x[:, None]).log_prob(x).sum(-1)  # (S, B)
    log_prior = -latent_dim * torch.log(torch.tensor(2.0))
    return (log_q.exp() * (log_prior + log_lik - log_q)).sum(0)
