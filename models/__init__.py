"""The shipped models (installed as ``ppl_reparam.models``): each module imports its backend.

:func:`pyro_vae` and :func:`numpyro_vae` are the model factories of the ``ppl-reparam vae`` study
(:func:`ppl_reparam.training.train_vae`): the commands hand them to a backend's ``VAEStudy``, so that
the library never imports the models that import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

KINDS = ("gaussian", "discrete")


def _check_kind(kind: str, temperature: float | None) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown model {kind!r}; choose from {', '.join(KINDS)}")
    if kind == "gaussian" and temperature is not None:
        raise ValueError("the Gaussian VAE has no discrete latent to relax")


def pyro_vae(
    kind: str, input_dim: int, hidden: Sequence[int], latent_dim: int, temperature: float | None = None
) -> tuple[Any, Any]:
    """A fresh Pyro ``(model, guide)`` of the ``kind`` VAE (weights from torch's RNG):
    :func:`~ppl_reparam.models.vae.make_vae` or :func:`~ppl_reparam.models.discrete_vae.make_discrete_vae`
    (at ``temperature``, None: discrete)."""
    _check_kind(kind, temperature)
    if kind == "discrete":
        from .discrete_vae import make_discrete_vae

        return make_discrete_vae(input_dim, hidden, latent_dim, temperature)
    from .vae import make_vae

    return make_vae(input_dim, hidden, latent_dim)


def numpyro_vae(
    kind: str, input_dim: int, hidden: Sequence[int], latent_dim: int, temperature: float | None = None
) -> Any:
    """The NumPyro VAE ``kind``: :func:`~ppl_reparam.models.vae_numpyro.make_vae` or
    :func:`~ppl_reparam.models.discrete_vae_numpyro.make_discrete_vae` (at ``temperature``, None:
    discrete). An object with ``model``, ``guide``, ``encode(params, x)`` (``(loc, scale)`` of the
    Gaussian guide, logits of the Bernoulli one) and ``decode(params, z)``; the discrete VAE's
    ``at(temperature)`` is the same model at another temperature, with the same parameter names. Its
    parameters are drawn by ``SVI.init``; the same arguments give the same object (compiled code is
    reused)."""
    _check_kind(kind, temperature)
    if kind == "discrete":
        from .discrete_vae_numpyro import make_discrete_vae

        return make_discrete_vae(input_dim, tuple(hidden), latent_dim, temperature)
    from .vae_numpyro import make_vae

    return make_vae(input_dim, tuple(hidden), latent_dim)
