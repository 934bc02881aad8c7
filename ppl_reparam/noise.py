r"""Antithetic and quasi-Monte Carlo draws for pathwise sites (framework-free part).

A pathwise site draws :math:`z = \mu + \sigma\epsilon` (or a transform of it, as LogNormal or an
AutoNormal's auxiliary site), :math:`\epsilon \sim N(0, I)`, once per particle. With ``K`` particles
side by side (vectorized), the particles' :math:`\epsilon` need not be independent for the average over
them to stay unbiased: every particle's :math:`\epsilon` only has to be marginally :math:`N(0, I)`.

- **Antithetic** (``antithetic=True``; Hammersley and Morton 1956): particle :math:`k + K/2` takes
  :math:`-\epsilon_k`. Odd parts of the integrand cancel within a pair: on the toy problem
  :math:`f(x) = x^2`, :math:`q = N(\theta, \sigma^2)`, the pathwise gradient in :math:`\theta` is
  :math:`2(\theta + \sigma\epsilon)`, so a pair averages to exactly :math:`2\theta` (variance 0); in
  :math:`\sigma` it is :math:`2(\theta + \sigma\epsilon)\epsilon`, a pair averages to
  :math:`2\sigma\epsilon^2` (per-pair variance :math:`8\sigma^2`, against :math:`2\theta^2 + 4\sigma^2`
  for two independent draws). ``K`` must be even.
- **Randomized quasi-Monte Carlo** (``qmc=True``; Buchholz, Wenzel and Mandt, "Quasi-Monte Carlo
  Variational Inference", ICML 2018): with :math:`D` noise elements per particle, particle ``k`` takes
  :math:`\epsilon_k = \Phi^{-1}(u_k)` where :math:`u_k` is the ``k``-th point of the first ``K`` points
  of the ``D``-dimensional Sobol sequence (Joe and Kuo direction numbers, ``scipy.stats.qmc``) under a
  random digital shift (each coordinate's 32 bits XOR-ed with a uniform random 32-bit word, drawn once
  per site and estimate, shared by the ``K`` points; Owen 1995 for the family of randomizations). Each
  shifted point is uniform on the grid of 2^32 cell midpoints, so the estimate is unbiased up to that
  grid (below the resolution of the frameworks' own uniform draws), and the ``K`` points keep the
  Sobol set's stratification: on a smooth integrand the variance falls faster than :math:`1/K`.
  Powers of two for ``K`` balance best; ``D`` at most :data:`MAX_DIM`.

Both apply to pathwise sites whose distribution is a Normal under element-wise wrappers (Independent,
masks, plate expansion, element-wise transforms such as LogNormal's exp); another family at a pathwise
site is an error naming the site. Score-function sites draw as before. They need the particles side
by side (vectorized), and exclude a leave-one-out baseline, whose unbiasedness needs independent
particles. The backends implement the draws (``ppl_reparam/pyro/handlers.py``,
``ppl_reparam/numpyro/handlers.py``); the points and the checks are here.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

MAX_DIM = 21201
"""The most Sobol dimensions (Joe and Kuo's direction numbers in ``scipy.stats.qmc``)."""

KINDS = ("antithetic", "qmc")


def check_noise(antithetic: bool, qmc: bool, num_particles: int, vectorized: bool | None, baseline: Any) -> str | None:
    """The draws an ELBO asks for (``"antithetic"``, ``"qmc"`` or None), checked against its options:
    one of the two, the particles side by side (``vectorized``: Pyro's ``vectorize_particles``; None where
    the backend always stacks them), an even ``num_particles`` for antithetic pairs (at least 2 for QMC),
    and no leave-one-out baseline."""
    if antithetic and qmc:
        raise ValueError("antithetic=True and qmc=True are two ways to couple the particles; choose one")
    kind = "antithetic" if antithetic else "qmc" if qmc else None
    if kind is None:
        return None
    if vectorized is False:
        raise ValueError(f"{kind}=True couples the particles of one estimate: it needs vectorize_particles=True")
    if kind == "antithetic" and (num_particles < 2 or num_particles % 2):
        raise ValueError(f"antithetic=True draws particles in pairs: num_particles must be even, got {num_particles}")
    if kind == "qmc" and num_particles < 2:
        raise ValueError("qmc=True spreads the particles of one estimate over a Sobol point set: num_particles >= 2")
    if baseline is not None and baseline.needs_particles:
        raise ValueError(
            f"{kind}=True makes the particles dependent, and a leave-one-out baseline ({baseline!r}) is "
            "unbiased only for independent ones; use another baseline (constant, moving average, learned)"
        )
    return kind


def unsupported(site: str, kind: str, family: str) -> ValueError:
    """The error for a pathwise site whose distribution is not an element-wise transform of a Normal."""
    return ValueError(
        f"site {site!r}: {kind} draws apply to pathwise sites whose distribution is a Normal under "
        f"element-wise wrappers (Independent, masks, plates, LogNormal-like transforms); {family} is not. "
        f"Draw it with plain Monte Carlo ({kind}=False), or make it a score-function site"
    )


@lru_cache(maxsize=32)
def sobol_points(num_points: int, dim: int) -> np.ndarray:
    """The first ``num_points`` points of the unscrambled ``dim``-dimensional Sobol sequence as 32-bit
    integers (the point times 2^32), shape ``(num_points, dim)``, read-only."""
    if not 1 <= dim <= MAX_DIM:
        raise ValueError(
            f"qmc=True needs a Sobol point of one dimension per noise element of a particle: {dim} elements "
            f"here, at most {MAX_DIM}; use antithetic=True or plain Monte Carlo for such a site"
        )
    import warnings

    from scipy.stats import qmc

    with warnings.catch_warnings():  # scipy warns that a non-power-of-two count loses balance
        warnings.simplefilter("ignore", UserWarning)
        points = qmc.Sobol(dim, scramble=False, bits=32).random(num_points)
    out = np.asarray(np.round(points * 2.0**32), dtype=np.uint32)
    out.setflags(write=False)
    return out


def shifted_uniforms(points: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``(points XOR shift + 1/2) / 2^32``: digitally shifted points at their cells' midpoints (NumPy
    reference of what the backends compute on their arrays)."""
    return (np.bitwise_xor(points, shift).astype(np.float64) + 0.5) / 2.0**32
