r"""Closed forms for the toy Gaussian problem, framework-free.

The problem (Kingma and Welling's reparameterization trick, as taught everywhere): minimise

.. math:: L(\theta, \sigma) = E_{x \sim N(\theta, \sigma^2)}[f(x)] - H[N(\theta, \sigma^2)],

the negative ELBO of a model with a flat prior on ``x`` and a factor :math:`-f(x)`, under the guide
:math:`q = N(\theta, \sigma^2)`. Write :math:`x = \theta + \sigma\epsilon`,
:math:`\epsilon \sim N(0, 1)` and :math:`c = \log(2\pi)/2`. Every per-sample gradient below is a
polynomial in :math:`\epsilon` when ``f`` is a polynomial, so its moments follow exactly from the
standard normal moments :math:`E[\epsilon^{2k}] = (2k-1)!!`.

Per-sample gradients w.r.t. the loc :math:`\theta` and the scale :math:`\sigma`:

- pathwise (either entropy): :math:`f'(x)` and :math:`f'(x)\epsilon - 1/\sigma`;
- pathwise, sticking the landing: :math:`f'(x) - \epsilon/\sigma` and
  :math:`f'(x)\epsilon - \epsilon^2/\sigma`;
- score function, closed-form entropy: :math:`(f(x) - b)\,\epsilon/\sigma` and
  :math:`(f(x) - b)(\epsilon^2 - 1)/\sigma - 1/\sigma`;
- score function, Monte Carlo entropy: :math:`(f(x) + \log q(x) - b)\,\epsilon/\sigma` and
  :math:`(f(x) + \log q(x) - b)(\epsilon^2 - 1)/\sigma`,

with :math:`\log q(x) = -c - \log\sigma - \epsilon^2/2` and a constant baseline ``b`` (0: none).
The score-function rows with Monte Carlo entropy leave out the zero-mean direct term
:math:`\nabla \log q` at fixed ``x``, as Pyro's ``Trace_ELBO`` does.
For ``f(x) = x^2`` and :math:`\sigma = 1` the variances are :math:`\theta^4 + 14\theta^2 + 15`
(score, closed-form entropy: 87 at :math:`\theta = 2`), :math:`(\theta^2-c)^2 + 3(\theta^2-c) +
8\theta^2 + 3.75` (score, Monte Carlo entropy: 54.49), :math:`8\theta^2 + 6` (score with the optimal
constant baseline :math:`b = \theta^2 + 3`: 38), 4 (pathwise) and 1 (sticking the landing); the mean
is :math:`2\theta` in every row. See Mohamed, Rosca, Figurnov and Mnih, "Monte Carlo Gradient
Estimation in Machine Learning", JMLR 2020, section 3.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.polynomial import Polynomial

SQUARE = Polynomial([0.0, 0.0, 1.0])
"""The default cost f(x) = x^2."""

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
ESTIMATORS = ("score", "pathwise")
PARAMS = ("loc", "scale")


def normal_moment(k: int) -> float:
    r""":math:`E[\epsilon^k]` for :math:`\epsilon \sim N(0, 1)`: 0 for odd k, (k-1)!! for even k."""
    if k % 2:
        return 0.0
    return float(math.prod(range(k - 1, 0, -2)))


def expect(p: Polynomial) -> float:
    r""":math:`E[p(\epsilon)]` for a polynomial ``p`` in a standard normal :math:`\epsilon`."""
    return float(sum(c * normal_moment(k) for k, c in enumerate(p.coef)))


@dataclass(frozen=True)
class Moments:
    """Mean, variance and fourth central moment of one per-sample gradient."""

    mean: float
    variance: float
    fourth_central: float

    @classmethod
    def of(cls, p: Polynomial) -> Moments:
        r"""Exact moments of :math:`p(\epsilon)`, :math:`\epsilon \sim N(0, 1)`."""
        mean = expect(p)
        centred = p - mean
        return cls(mean, expect(centred**2), expect(centred**4))

    def of_mean(self, n: int) -> Moments:
        r"""Moments of the mean of ``n`` independent copies:
        :math:`\sigma^2/n` and :math:`(\mu_4 + 3(n-1)\sigma^4)/n^3`."""
        return Moments(
            self.mean,
            self.variance / n,
            (self.fourth_central + 3 * (n - 1) * self.variance**2) / n**3,
        )

    def sample_variance_sd(self, reps: int) -> float:
        r"""Standard deviation of the unbiased sample variance of ``reps`` independent copies:
        :math:`\mathrm{Var}(s^2) = \mu_4/R - \sigma^4 (R-3)/(R(R-1))`."""
        r = reps
        return math.sqrt(self.fourth_central / r - self.variance**2 * (r - 3) / (r * (r - 1)))


def per_sample_gradient(
    estimator: str,
    theta: float,
    sigma: float = 1.0,
    *,
    wrt: str = "loc",
    analytic_kl: bool = True,
    f: Polynomial = SQUARE,
    baseline: float = 0.0,
    stl: bool = False,
    antithetic: bool = False,
) -> Polynomial:
    r"""The per-sample gradient of the toy loss as a polynomial in :math:`\epsilon` (table above).

    ``analytic_kl`` picks the closed-form entropy (True) or its Monte Carlo estimate (False); it
    changes only the score-function rows. ``baseline`` applies to the score function and ``stl``
    (sticking the landing) to the pathwise estimator. ``antithetic`` (pathwise) gives instead the
    average of an antithetic pair, :math:`(g(\epsilon) + g(-\epsilon))/2`: the even part of ``g``.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; expected one of {ESTIMATORS}")
    if wrt not in PARAMS:
        raise ValueError(f"unknown parameter {wrt!r}; expected one of {PARAMS}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    eps = Polynomial([0.0, 1.0])
    x = theta + sigma * eps
    fx = f(x)
    dfx = f.deriv()(x)
    if estimator == "pathwise":
        if baseline:
            raise ValueError("a baseline applies to the score-function estimator only")
        if wrt == "loc":
            g = dfx - eps / sigma if stl else dfx
        else:
            g = dfx * eps - (eps**2 / sigma if stl else 1.0 / sigma)
        if antithetic:
            mirrored = Polynomial(g.coef * (-1.0) ** np.arange(len(g.coef)))
            return (g + mirrored) / 2
        return g
    if antithetic:
        raise ValueError("antithetic draws apply to the pathwise estimator only")
    if stl:
        raise ValueError("sticking the landing applies to the pathwise estimator only")
    score = eps / sigma if wrt == "loc" else (eps**2 - 1) / sigma
    if analytic_kl:
        entropy_grad = 0.0 if wrt == "loc" else -1.0 / sigma
        return (fx - baseline) * score + entropy_grad
    log_q = -HALF_LOG_2PI - math.log(sigma) - eps**2 / 2
    return (fx + log_q - baseline) * score


def gradient_moments(
    estimator: str, theta: float, sigma: float = 1.0, **options: object
) -> Moments:
    """Exact :class:`Moments` of :func:`per_sample_gradient` (same arguments)."""
    return Moments.of(per_sample_gradient(estimator, theta, sigma, **options))  # type: ignore[arg-type]


def true_gradient(theta: float, sigma: float = 1.0, *, wrt: str = "loc", f: Polynomial = SQUARE) -> float:
    r"""The exact gradient of :math:`L`: :math:`E[f'(x)]` w.r.t. the loc,
    :math:`E[f'(x)\epsilon] - 1/\sigma` w.r.t. the scale (2 theta and 2 sigma - 1/sigma for x^2)."""
    return gradient_moments("pathwise", theta, sigma, wrt=wrt, f=f).mean


def measure_valued_variance(theta: float, sigma: float = 1.0, *, coupling: bool = True) -> float:
    r"""Per-sample variance of the measure-valued gradient of :math:`E[x^2]` in the loc, :math:`x \sim
    N(\theta, \sigma^2)` (:mod:`ppl_reparam.measure_valued`): :math:`\hat g = c\,(f(\theta + \sigma W^+)
    - f(\theta - \sigma W^-))`, :math:`c = 1/(\sigma\sqrt{2\pi})`, W Rayleigh with :math:`\mathrm{Var}\,W
    = 2 - \pi/2` and :math:`\mathrm{Var}\,W^2 = 4`. Coupled (:math:`W^+ = W^-`), :math:`\hat g =
    4\theta W/\sqrt{2\pi}`: :math:`8\theta^2(2 - \pi/2)/\pi`; independent:
    :math:`(8\theta^2(2 - \pi/2) + 8\sigma^2)/(2\pi)`. Mean :math:`2\theta` either way. The toy's closed-form
    entropy adds nothing to the loc's gradient."""
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    var_w = 2 - math.pi / 2
    if coupling:
        return 8 * theta**2 * var_w / math.pi
    return (8 * theta**2 * var_w + 8 * sigma**2) / (2 * math.pi)


def rloo_per_sample_variance(
    theta: float, num_particles: int, sigma: float = 1.0, *, analytic_kl: bool = True, f: Polynomial = SQUARE
) -> float:
    r"""Per-sample variance (``num_particles`` x the variance) of the loc gradient of the score function
    with leave-one-out baselines over :math:`K` particles (Kool, van Hoof and Welling 2019),

    .. math:: G = \frac1K \sum_i (c_i - b_i) s_i, \quad b_i = \frac{1}{K-1}\sum_{j \ne i} c_j,

    with cost :math:`c` (``f`` plus, with Monte Carlo entropy, :math:`\log q`) and score
    :math:`s = \epsilon/\sigma`. Expanding the independent pairs,

    .. math:: K\,\mathrm{Var}(G) = \mathrm{Var}(cs) + \frac{E[s^2]E[c^2] + (K-2)E[s^2]E[c]^2 + E[cs]^2}{K-1}
        - 2E[cs^2]E[c].
    """
    k = num_particles
    if k < 2:
        raise ValueError(f"leave-one-out needs at least 2 particles, got {k}")
    eps = Polynomial([0.0, 1.0])
    cost = f(theta + sigma * eps)
    if not analytic_kl:
        cost = cost - HALF_LOG_2PI - math.log(sigma) - eps**2 / 2
    score = eps / sigma
    s2, c, c2, cs, cs2 = (expect(p) for p in (score**2, cost, cost**2, cost * score, cost * score**2))
    pairs = (s2 * c2 + (k - 2) * s2 * c**2 + cs**2) / (k - 1)
    return Moments.of(cost * score).variance + pairs - 2 * cs2 * c


def horner(p: Polynomial) -> Callable[[Any], Any]:
    """The polynomial ``p`` as a function of a torch tensor or a JAX array (Horner's rule)."""
    coefs = [float(c) for c in p.coef[::-1]]

    def f(x: Any) -> Any:
        out = 0 * x + coefs[0]
        for c in coefs[1:]:
            out = out * x + c
        return out

    return f


class ToyProblem:
    """The toy problem's settings, shared by both backends' models (``models/toy_gaussian*.py``): the
    guide's initial loc ``theta`` and its scale ``sigma`` (learnable with ``learn_scale``), and the
    cost ``f``, a numpy ``Polynomial`` (closed forms known; evaluated by :func:`horner`) or any
    function of an array."""

    def __init__(
        self, theta: float = 2.0, sigma: float = 1.0, *, learn_scale: bool = False,
        f: Polynomial | Callable[[Any], Any] = SQUARE,
    ):
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.theta = float(theta)
        self.sigma = float(sigma)
        self.learn_scale = learn_scale
        self.f = horner(f) if isinstance(f, Polynomial) else f
