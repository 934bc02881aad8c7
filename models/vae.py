r"""The variational autoencoder of Kingma and Welling ("Auto-Encoding Variational Bayes", ICLR 2014) in Pyro,
for binarized images.

Generative model, for each datum :math:`i` of a minibatch (plate ``"data"``, scaled by N/B):

.. math:: z_i \sim \mathcal N(0, I_L), \qquad x_i \mid z_i \sim \prod_{d=1}^{D}
   \operatorname{Bernoulli}\big(x_{id};\ \operatorname{logits} = f_\theta(z_i)_d\big)

with :math:`f_\theta` the :class:`MLPDecoder`. The guide is
:class:`~ppl_reparam.pyro.guides.AmortizedNormal` around an :class:`MLPEncoder`:
:math:`q_\phi(z_i \mid x_i) = \mathcal N(\mu_\phi(x_i), \operatorname{diag}\sigma_\phi(x_i)^2)`.
Defaults (64-128-8: D = 64 pixels, one hidden layer of 128 softplus units, L = 8) suit the 8x8
digits. Parameters sit in Pyro's param store as ``decoder.*`` (model) and ``encoder.*`` (guide).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from pyro.nn.module import to_pyro_module_
from torch import nn
from torch.nn.functional import softplus

from ppl_reparam.pyro.guides import AmortizedNormal, data_plate

__all__ = ["MLPDecoder", "MLPEncoder", "VAEModel", "make_vae"]


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers through ``sizes`` with softplus between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(nn.Softplus())
        layers.append(nn.Linear(m, n))
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    r"""``x -> (loc, scale)``: an MLP through ``hidden`` to ``2 L`` outputs, split into ``loc`` and
    :math:`\sigma = \operatorname{softplus}(\cdot) + \text{min\_scale}` (softplus rather than
    Kingma and Welling's :math:`\exp(\log\sigma^2/2)`, so that a large score-function step cannot
    overflow the scale)."""

    def __init__(
        self, input_dim: int = 64, hidden: Sequence[int] = (128,), latent_dim: int = 8, min_scale: float = 1e-3
    ):
        super().__init__()
        self.latent_dim = latent_dim
        self.min_scale = min_scale
        self.net = mlp([input_dim, *hidden, 2 * latent_dim])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = self.net(x).split(self.latent_dim, dim=-1)
        return loc, softplus(raw) + self.min_scale


class MLPDecoder(nn.Module):
    """``z -> logits``: an MLP through ``hidden`` (reversed encoder order by convention) to D logits."""

    def __init__(self, latent_dim: int = 8, hidden: Sequence[int] = (128,), output_dim: int = 64):
        super().__init__()
        self.net = mlp([latent_dim, *hidden, output_dim])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class VAEModel(PyroModule):
    """The generative model: ``z ~ Normal(0, I).to_event(1)``, ``x ~ Bernoulli(logits=decoder(z)).to_event(1)``.

    ``forward(x, num_data=None)``: ``x`` is a ``(B, D)`` batch of 0/1 floats, ``num_data`` the
    training-set size for the N/B scale (see
    :func:`~ppl_reparam.pyro.guides.data_plate`). Returns the Bernoulli logits.
    """

    def __init__(self, decoder: MLPDecoder, latent_dim: int, plate_name: str = "data"):
        super().__init__()
        to_pyro_module_(decoder)
        self.decoder = decoder
        self.latent_dim = latent_dim
        self.plate_name = plate_name

    def forward(self, x: torch.Tensor, num_data: int | None = None) -> torch.Tensor:
        prior = dist.Normal(torch.zeros(self.latent_dim), 1.0).to_event(1)
        with data_plate(self.plate_name, x.shape[0], num_data):
            z = pyro.sample("z", prior)
            logits = self.decoder(z)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)
        return logits


def make_vae(
    input_dim: int = 64, hidden: Sequence[int] = (128,), latent_dim: int = 8
) -> tuple[VAEModel, AmortizedNormal]:
    """A fresh ``(model, guide)`` pair, weights drawn from torch's RNG (seed it for reproducibility)."""
    if latent_dim < 1 or input_dim < 1 or any(h < 1 for h in hidden):
        raise ValueError(f"layer sizes must be positive: input {input_dim}, hidden {list(hidden)}, latent {latent_dim}")
    model = VAEModel(MLPDecoder(latent_dim, tuple(reversed(hidden)), input_dim), latent_dim)
    guide = AmortizedNormal(MLPEncoder(input_dim, hidden, latent_dim), site="z", plate_name="data")
    return model, guide
