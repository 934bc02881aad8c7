r"""Measure-valued gradients: the third Monte Carlo gradient estimator, framework-free (NumPy).

A weak derivative writes the derivative of a density in one parameter as a scaled difference of two
densities (Pflug 1989; Heidergott and Vazquez-Abad 2000),

.. math:: \partial_{\theta_j} q(x;\theta) = c_j(\theta)\,\big(q^+_j(x;\theta) - q^-_j(x;\theta)\big),
          \qquad
          \partial_{\theta_j} E_q[f(x)] = c_j(\theta)\,\big(E_{q^+_j}[f(x)] - E_{q^-_j}[f(x)]\big),

so the per-sample estimate is :math:`\hat g_j = c_j\,(f(x^+) - f(x^-))`, :math:`x^\pm \sim q^\pm_j`. It
needs neither a differentiable ``f`` nor a differentiable sampler (``f`` may be a black box, the
distribution discrete), but it costs **two evaluations of f per parameter element** per sample,
where the score function and the pathwise estimator need one for all parameters.

The decompositions (Mohamed, Rosca, Figurnov and Mnih, "Monte Carlo Gradient Estimation in Machine
Learning", JMLR 21(132), 2020, section 6 and table 1), with :math:`W` Rayleigh (Weibull of scale
:math:`\sqrt 2`, shape 2), :math:`M` double-sided Maxwell (density :math:`m^2 e^{-m^2/2}/\sqrt{2\pi}`):

===========================  =====================  ==========================  =========================
family, parameter            :math:`c`              :math:`q^+`                 :math:`q^-`
===========================  =====================  ==========================  =========================
Normal(μ, σ), μ              :math:`1/(σ\sqrt{2π})`  :math:`μ + σW`              :math:`μ - σW`
Normal(μ, σ), σ              :math:`1/σ`            :math:`μ + σM`              :math:`μ + σε`, ε ~ N(0, 1)
LogNormal(μ, s), μ and s     as Normal              exp of the Normal's         exp of the Normal's
Exponential(λ), λ            :math:`1/λ`            Exponential(λ)              Gamma(2, λ)
Gamma(α, β) (rate β), β      :math:`α/β`            Gamma(α, β)                 Gamma(α + 1, β)
Poisson(λ), λ                1                      1 + Poisson(λ)              Poisson(λ)
Bernoulli(p), p              1                      the point 1                 the point 0
===========================  =====================  ==========================  =========================

Gamma's shape α has no such decomposition here (use the pathwise estimator: implicit
reparameterization), and asking for it is an error.

**Coupling** (common random numbers, ``coupling=True``): :math:`x^+` and :math:`x^-` share their
randomness — the same :math:`W` on both sides for μ; :math:`x^- = μ + σUM` with :math:`U` uniform on
(0, 1), since :math:`UM \sim N(0, 1)`, for σ; :math:`x^- = x^+ + E/λ` (resp. :math:`/β`) with
:math:`E` standard exponential; :math:`x^+ = x^- + 1` for Poisson. It lowers the variance where
:math:`f(x^+)` and :math:`f(x^-)` move together; for μ, whose two sides mirror each other about μ, that
is where ``f`` is close to even about μ, and where it is close to odd the two errors add instead: on
the toy problem
:math:`f(x) = x^2`, :math:`q = N(θ, 1)`, coupled :math:`\hat g = 4θW/\sqrt{2π}`, per-sample variance
:math:`8θ^2(2 - π/2)/π` (4.372 at θ = 2), independent :math:`(8θ^2(2 - π/2) + 8)/(2π)` (3.459),
both with mean :math:`2θ` (:func:`ppl_reparam.analytic.measure_valued_variance`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

FAMILIES: dict[str, tuple[str, ...]] = {
    "Normal": ("loc", "scale"),
    "LogNormal": ("loc", "scale"),
    "Exponential": ("rate",),
    "Gamma": ("concentration", "rate"),
    "Poisson": ("rate",),
    "Bernoulli": ("probs",),
}
"""Each family's parameters, in the order ``params`` gives them."""

NO_WEAK_DERIVATIVE = {("Gamma", "concentration")}
"""Parameters without a decomposition here."""

EVALUATIONS_PER_ELEMENT = 2
"""Evaluations of ``f`` per parameter element and sample (the cost beside the variance)."""


class Draws(Protocol):
    """Standard random draws of one shape from a backend's generator, for :func:`weak_pair`."""

    def exponential(self) -> Any:
        """Standard exponential draws."""

    def maxwell(self) -> Any:
        """Double-sided Maxwell draws: :math:`\\sqrt{\\chi^2_3}` with a random sign."""

    def uniform(self) -> Any:
        """Uniform draws on (0, 1)."""

    def normal(self) -> Any:
        """Standard normal draws."""

    def gamma(self, concentration: Any) -> Any:
        """Gamma(``concentration``, 1) draws."""

    def poisson(self, rate: Any) -> Any:
        """Poisson(``rate``) draws (as floats)."""

    def constant(self, value: float) -> Any:
        """``value`` everywhere."""


def weak_pair(
    family: str, name: str, params: Mapping[str, Any], draws: Draws, coupling: bool, exp: Callable[[Any], Any]
) -> tuple[Any, Any, Any]:
    """``(c, x_plus, x_minus)`` for the parameter ``name`` of ``family`` (the table above): the weak
    derivative's constant and one draw of each side per element, from ``draws`` (any array library:
    only arithmetic and ``exp`` are applied to the parameters and draws)."""
    if family in ("Normal", "LogNormal"):
        mu, sigma = params["loc"], params["scale"]
        if name == "loc":
            w = (2.0 * draws.exponential()) ** 0.5
            w_minus = w if coupling else (2.0 * draws.exponential()) ** 0.5
            c, plus, minus = 1.0 / (sigma * math.sqrt(2 * math.pi)), mu + sigma * w, mu - sigma * w_minus
        else:
            m = draws.maxwell()
            eps = draws.uniform() * m if coupling else draws.normal()
            c, plus, minus = 1.0 / sigma, mu + sigma * m, mu + sigma * eps
        if family == "LogNormal":
            plus, minus = exp(plus), exp(minus)
        return c, plus, minus
    if family in ("Exponential", "Gamma"):
        alpha = params.get("concentration", 1.0)
        rate = params["rate"]
        plus = draws.gamma(alpha) / rate
        minus = plus + draws.exponential() / rate if coupling else draws.gamma(alpha + 1.0) / rate
        return alpha / rate, plus, minus
    if family == "Poisson":
        minus = draws.poisson(params["rate"])
        plus = minus + 1.0 if coupling else draws.poisson(params["rate"]) + 1.0
        return 1.0, plus, minus
    if family == "Bernoulli":
        return 1.0, draws.constant(1.0), draws.constant(0.0)
    raise ValueError(f"no weak derivative of {family!r} here; it is implemented for {sorted(FAMILIES)}")


def check_parameter(family: str, name: str, where: str = "") -> None:
    """Raise a ValueError for a parameter without a decomposition here (Gamma's concentration)."""
    if (family, name) in NO_WEAK_DERIVATIVE:
        at = f"{where}: " if where else ""
        raise ValueError(
            f"{at}{family}'s {name} has no measure-valued gradient here (its derivative is not a scaled "
            "difference of two distributions we can sample); use the pathwise estimator (implicit "
            "reparameterization) or the score function for it"
        )


def check_measure_site(
    name: str, family: str | None, elementwise: bool, described: str, supported: Sequence[str]
) -> None:
    """Raise a ValueError naming the site ``name`` (distribution ``described``) unless its innermost
    family is one of the backend's ``supported`` and the transforms over it are ``elementwise``."""
    if family is None or not elementwise:
        raise ValueError(
            f"site {name!r}: the measure-valued estimator has no weak derivative for {described}; it is "
            f"implemented for {', '.join(supported)} (and element-wise transforms of them, such as LogNormal) "
            "under Independent, Masked and Expanded wrappers. Use 'score' or 'pathwise' for this site."
        )


def check_rebar_site(name: str, family: str | None, transformed: bool, described: str) -> None:
    """Raise a ValueError naming the site ``name`` (distribution ``described``) unless it is a Bernoulli
    without transforms (REBAR relaxes its bits)."""
    if family != "Bernoulli" or transformed:
        raise ValueError(
            f"site {name!r}: REBAR relaxes Bernoulli bits, and {described} is not a Bernoulli (under "
            "Independent, Masked and Expanded wrappers). Use 'score' or 'measure' for this site."
        )


RELAX_FAMILIES = ("Bernoulli", "Categorical", "OneHotCategorical")
"""The families RELAX relaxes: logistic noise for bits, Gumbel noise for categories."""


def check_relax_site(name: str, family: str | None, transformed: bool, described: str) -> None:
    """Raise a ValueError naming the site ``name`` (distribution ``described``) unless it is one of
    :data:`RELAX_FAMILIES` without transforms."""
    if family not in RELAX_FAMILIES or transformed:
        raise ValueError(
            f"site {name!r}: RELAX relaxes Bernoulli, Categorical or OneHotCategorical draws, and {described} is "
            "none of them (under Independent, Masked and Expanded wrappers). Use 'score' or 'measure' for this site."
        )


class _NumpyDraws:
    def __init__(self, rng: np.random.Generator, n: int):
        self.rng, self.n = rng, n

    def exponential(self) -> np.ndarray:
        return self.rng.standard_exponential(self.n)

    def maxwell(self) -> np.ndarray:
        return np.sqrt(self.rng.chisquare(3, self.n)) * self.rng.choice([-1.0, 1.0], self.n)

    def uniform(self) -> np.ndarray:
        return self.rng.uniform(size=self.n)

    def normal(self) -> np.ndarray:
        return self.rng.standard_normal(self.n)

    def gamma(self, concentration: float) -> np.ndarray:
        return self.rng.gamma(concentration, 1.0, self.n)

    def poisson(self, rate: float) -> np.ndarray:
        return self.rng.poisson(rate, self.n).astype(float)

    def constant(self, value: float) -> np.ndarray:
        return np.full(self.n, value)


def measure_valued_jacobians(
    function: Callable[[np.ndarray], np.ndarray],
    family: str,
    params: Sequence[float],
    num_samples: int,
    *,
    seed: int,
    coupling: bool = True,
    wrt: Sequence[str] | None = None,
) -> np.ndarray:
    r"""Per-sample measure-valued gradients :math:`c_j\,(f(x^+_{ij}) - f(x^-_{ij}))`, shape
    ``(num_samples, len(wrt))``, of :math:`E_{q(x;\theta)}[f(x)]` for one distribution of ``family``
    (:data:`FAMILIES`) with parameters ``params`` (in that order).

    :param function: maps an array of ``num_samples`` samples to their ``num_samples`` values; called
        :data:`EVALUATIONS_PER_ELEMENT` times per parameter in ``wrt``.
    :param wrt: the parameters to differentiate in (default: all that have a weak derivative here).
    :param seed: seeds a NumPy generator; no global random state is read or changed.
    :param coupling: common random numbers for the two sides (module docstring).
    """
    if family not in FAMILIES:
        raise ValueError(f"no measure-valued gradient for {family!r}; it is implemented for {sorted(FAMILIES)}")
    names = FAMILIES[family]
    if len(params) != len(names):
        raise ValueError(f"{family} takes the parameters {names}, got {len(params)} values")
    values = dict(zip(names, (float(p) for p in params)))
    if wrt is None:
        wrt = [n for n in names if (family, n) not in NO_WEAK_DERIVATIVE]
    for name in wrt:
        if name not in names:
            raise ValueError(f"{family} has no parameter {name!r}; its parameters are {names}")
        check_parameter(family, name)
    if num_samples < 1:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    draws = _NumpyDraws(np.random.default_rng(seed), num_samples)
    columns = []
    for name in wrt:
        c, plus, minus = weak_pair(family, name, values, draws, coupling, np.exp)
        columns.append(c * (_values(function, plus, num_samples) - _values(function, minus, num_samples)))
    return np.stack(columns, axis=1)


def _values(function: Callable[[np.ndarray], np.ndarray], x: np.ndarray, n: int) -> np.ndarray:
    values = np.asarray(function(x), dtype=float)
    if values.shape != (n,):
        raise ValueError(f"function must return one value per sample, shape ({n},); got {values.shape}")
    return values
