r"""The importance-weighted bound and three estimators of its gradient, written once for both backends
(framework-free).

With :math:`K` samples :math:`z_k \sim q_\phi` and weights :math:`w_k = p_\theta(x, z_k)/q_\phi(z_k)`,
the IWAE bound (Burda, Grosse and Salakhutdinov 2016) is

.. math:: \mathcal L_K = E\Big[\log \frac1K \sum_k w_k\Big] \le \log p_\theta(x),

taken separately for every element of the plates that all sites share (e.g. each data point of a
VAE minibatch), and scaled by their common subsampling scale. With normalized weights
:math:`\tilde w_k = w_k / \sum_j w_j`, the estimators of :math:`\nabla \mathcal L_K` are:

- ``"pathwise"`` (Burda et al.): reparameterized :math:`z_k`,
  :math:`\sum_k \tilde w_k \nabla \log w_k`.
- ``"score"``: VIMCO (Mnih and Rezende 2016), for any guide, discrete ones included:
  :math:`\sum_k \tilde w_k \nabla_{\text{direct}} \log w_k + \sum_k (\hat L - \hat L_{-k})\,
  \nabla \log q_\phi(z_k)`, where :math:`\hat L_{-k}` replaces :math:`\log w_k` by the mean of the
  other :math:`\log w_j` (a leave-one-out control variate for each sample; :func:`vimco_signal`).
- ``"dreg"``: doubly reparameterized (Tucker, Lawson, Gu and Maddison 2019): for the guide's
  parameters :math:`\sum_k \tilde w_k^2\, \partial \log w_k/\partial z_k\, \partial z_k/\partial\phi`,
  for the model's the pathwise :math:`\sum_k \tilde w_k \nabla_\theta \log p_\theta(x, z_k)`; it
  needs reparameterized sites and evaluates the model a second time on the samples with their
  gradients stopped.

All three are unbiased for :math:`\nabla \mathcal L_K`; ``num_particles`` is :math:`K \ge 2`.

A backend (:mod:`ppl_reparam.pyro.iwae`, :mod:`ppl_reparam.numpyro.iwae`) runs the guide and model,
sums each particle's log densities to the shared plates (log weights of shape ``(K, *elements)``, and
what its estimator needs besides: :func:`surrogate_objective`), and combines them with :func:`bound`,
:func:`surrogate_objective` and :func:`common_scale`, passing an :class:`IWAEOps` for its array library.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .surrogate import Array, ArrayOps

IWAE_ESTIMATORS = {"pathwise": "pathwise", "score": "score", "dreg": "pathwise"}
"""IWAE gradient estimator -> the estimator forced on the guide's sites."""


def check_options(num_particles: int, estimator: str) -> None:
    """A ValueError unless ``estimator`` is one of :data:`IWAE_ESTIMATORS` and ``num_particles`` an int
    :math:`K \\ge 2` (a bound of one sample is the ELBO, and VIMCO's leave-one-out mean needs two)."""
    if estimator not in IWAE_ESTIMATORS:
        raise ValueError(f"unknown IWAE estimator {estimator!r}; expected one of {sorted(IWAE_ESTIMATORS)}")
    if not isinstance(num_particles, int) or num_particles < 2:  # True and False are ints below 2 too
        raise ValueError(f"IWAE needs num_particles = K >= 2 importance samples, got {num_particles!r}")


def dreg_needs_rsample(error: Exception) -> ValueError:
    """The error for ``estimator="dreg"`` on a guide site without a reparameterized sampler, wrapping the
    backend's ``error`` (which names the site)."""
    return ValueError(f"IWAE(estimator='dreg') needs reparameterized guide sites: {error}")


@dataclass(frozen=True)
class IWAEOps:
    """A backend's :class:`~ppl_reparam.surrogate.ArrayOps` and the three operations the bound needs
    besides: ``logsumexp(x, dim)`` and ``softmax(x, dim)`` along one non-negative ``dim``, and ``eye``."""

    array: ArrayOps
    logsumexp: Callable[[Array, int], Array]
    softmax: Callable[[Array, int], Array]
    eye: Callable[[int, Array], Array]
    """``eye(k, like)``: the boolean ``(k, k)`` identity, on the device of the array ``like``."""


def _sum_particles(x: Array, ops: IWAEOps) -> Array:
    """Sum over the particle dim 0, dropping it."""
    shape = ops.array.shape(x)
    return ops.array.reshape(ops.array.sum(x, (-len(shape),)), shape[1:])


def bound(log_w: Array, ops: IWAEOps) -> Array:
    r""":math:`\log \frac1K \sum_k w_k` along the particle dim 0 of the log weights ``(K, *elements)``."""
    return ops.logsumexp(log_w, 0) - math.log(ops.array.shape(log_w)[0])


def vimco_signal(log_w: Array, ops: IWAEOps) -> Array:
    r"""VIMCO's learning signal for each of the K samples along dim 0 (Mnih and Rezende 2016):

    .. math:: \hat L - \hat L_{-k}, \quad \hat L = \log \frac1K \sum_j w_j, \quad
        \hat L_{-k} = \log \frac1K \Big(\sum_{j \ne k} w_j + \exp\big(\tfrac{1}{K-1}\textstyle\sum_{j \ne k}
        \log w_j\big)\Big),

    of the shape of ``log_w``, ``(K, *elements)``. Each :math:`\hat L_{-k}` is a log-sum-exp over a row
    of a ``(K, K, *elements)`` array (rather than :math:`\log(\sum_j w_j - w_k + \ldots)`, which cancels
    catastrophically when :math:`w_k` dominates).
    """
    array = ops.array
    shape = array.shape(log_w)
    k, elements = shape[0], shape[1:]
    others_mean = (array.sum(log_w, (-len(shape),)) - log_w) / (k - 1)
    # replaced[i, j] = log_w[j], but others_mean[i] where j == i
    eye = array.reshape(ops.eye(k, log_w), (k, k) + (1,) * len(elements))
    replaced = array.where(eye, array.reshape(others_mean, (k, 1) + elements), array.reshape(log_w, (1, k) + elements))
    return ops.logsumexp(log_w, 0) - ops.logsumexp(replaced, 1)


def surrogate_objective(estimator: str, log_w: Array, bound: Array, terms: Mapping[str, Array], ops: IWAEOps) -> Array:
    r"""Per element of the shared plates, an objective whose gradient is ``estimator``'s estimate of
    :math:`\nabla \mathcal L_K` (its value is :math:`\mathcal L_K`'s estimate ``bound`` only for
    ``"pathwise"``):

    - ``"pathwise"``: ``bound`` itself, differentiated through reparameterized samples;
    - ``"score"``: :math:`\hat L + \sum_k \bot(\hat L - \hat L_{-k}) \log q_\phi(z_k)`, with
      ``terms["log_q"]`` the guide's :math:`\log q_\phi(z_k)` (samples drawn without ``rsample``, so
      :math:`\hat L` carries the direct gradient only);
    - ``"dreg"``: :math:`\sum_k \bot(\tilde w_k^2) \log w_k^{\text{path}}
      + \sum_k \bot(\tilde w_k - \tilde w_k^2) \log p_\theta(x, \bot z_k)`, with ``terms["path_log_w"]``
      the log weights whose :math:`\log q_\phi` keeps only its path derivative (through :math:`z_k`) and
      ``terms["log_p_bar"]`` the model's log density at the samples with their gradients stopped.

    Every term has the shape of ``log_w``, ``(K, *elements)``.
    """
    if estimator == "pathwise":
        return bound
    if estimator == "score":
        signal = ops.array.stop_gradient(vimco_signal(log_w, ops))
        return bound + _sum_particles(signal * terms["log_q"], ops)
    weights = ops.array.stop_gradient(ops.softmax(log_w, 0))
    return _sum_particles(weights**2 * terms["path_log_w"] + (weights - weights**2) * terms["log_p_bar"], ops)


def check_finite(loss: float) -> None:
    """A ValueError for a NaN or infinite loss estimate (log weights)."""
    if not math.isfinite(loss):
        raise ValueError("IWAE: the log weights are NaN or infinite; check the model's and guide's densities")


def common_scale(ranges: Iterable[tuple[float, float]]) -> float:
    """The one subsampling scale shared by every site, given each site's smallest and largest scale;
    else a ValueError. The bound is not linear in the log weights, so a site's scale cannot multiply its
    own log density inside it: the bounds of a minibatch's elements are summed and scaled once, which is
    right when every site has the same scale (e.g. all lie in the same subsampled plates)."""
    scales = {scale for extremes in ranges for scale in extremes}
    if len(scales) > 1:
        raise ValueError(f"IWAE needs every site to share one subsampling scale, got {sorted(scales)}")
    return scales.pop()
