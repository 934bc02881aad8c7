r"""``ppl-reparam families``: score-function against pathwise gradients, family by family.

For each reparameterizable family (and Poisson, which has none) the table takes a test function
``f`` whose expectation has an exact gradient, and measures both estimators of
:math:`\nabla_\theta E_{q(x;\theta)}[f(x)]` with :mod:`ppl_reparam.pyro.mc_gradients`: per-sample
mean (with its standard error) and per-sample variance (with Bonett's interval,
:mod:`ppl_reparam.stats`), and the ratio of the two variances.

Exact gradients, in closed form:

- Normal(mu, sigma), :math:`E[x^2] = \mu^2 + \sigma^2`: :math:`(2\mu, 2\sigma)`. At (2, 1) this is the
  design's toy problem: exact per-sample variances 4 and 24 (pathwise), 87 and 346 (score), from
  :func:`ppl_reparam.analytic.gradient_moments` (whose sigma rows add the entropy's constant -1/sigma).
- LogNormal(mu, s), :math:`E[x] = e^{\mu + s^2/2}`: :math:`(E[x], s E[x])`.
- Exponential(rate), :math:`E[x] = 1/\lambda`: :math:`-1/\lambda^2`.
- Gamma(alpha, beta) (rate beta), :math:`E[x] = \alpha/\beta`: :math:`(1/\beta, -\alpha/\beta^2)`.
- Beta(a, b), :math:`E[x] = a/(a+b)`: :math:`(b, -a)/(a+b)^2`.
- Dirichlet(alpha), :math:`E[\sum_k x_k^2] = S/D` with :math:`A = \sum_k \alpha_k`,
  :math:`S = \sum_k \alpha_k(\alpha_k+1)`, :math:`D = A(A+1)`:
  :math:`\partial_j = (2\alpha_j + 1)/D - S(2A+1)/D^2`.
- Poisson(rate), :math:`E[x] = \lambda`: 1 (no ``rsample``: score function only).

Gamma, Beta and Dirichlet are sampled by rejection, so torch differentiates them by implicit
reparameterization (Figurnov, Mohamed and Mnih, NeurIPS 2018).

The relaxations (Maddison, Mnih and Teh, "The Concrete Distribution", ICLR 2017; Jang, Gu and
Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017) take the cost
:math:`f(b) = (b - 0.45)^2` of Tucker et al. ("REBAR", NeurIPS 2017). RelaxedBernoulli(lambda, l) is
:math:`x = \sigma(y)`, :math:`y = (l + L)/\lambda`, ``L`` standard logistic, so ``y`` has the density
:math:`\lambda\,\ell(\lambda y - l)` with :math:`\ell(t) = \sigma(t)\sigma(-t)`. Its expectation has no
closed form; :func:`relaxed_bernoulli_gradient` integrates ``f`` against the derivatives of that
density with ``scipy.integrate.quad``:

.. math:: \partial_l E[f(x)] = -\lambda \int f(\sigma(y))\,\ell'(\lambda y - l)\,dy, \qquad
          \partial_\lambda E[f(x)] = \int f(\sigma(y))\,(\ell(\lambda y - l) + \lambda y\,\ell'(\lambda y - l))\,dy,

with :math:`\ell'(t) = -\ell(t)\tanh(t/2)`. RelaxedOneHotCategorical with two categories reduces to
it: :math:`x_1 = \sigma((l_1 - l_0 + G_1 - G_0)/\lambda)` and the difference of two standard Gumbels
is standard logistic, so :math:`x_1 \sim` RelaxedBernoulli(lambda, l_1 - l_0) and the gradient in
:math:`(l_0, l_1)` is :math:`(-g, g)` with ``g`` the RelaxedBernoulli logit gradient.

The straight-through variants (Bengio, Leonard and Courville 2013; Pyro's
``RelaxedBernoulliStraightThrough`` and ``RelaxedOneHotCategoricalStraightThrough``) return the
discrete :math:`z = \mathrm{round}(x)` (one-hot of the argmax) and backpropagate through ``x``. Their
objective is the discrete :math:`E[f(z)]`, :math:`z \sim` Bernoulli(:math:`p = \sigma(l)`), with gradient
:math:`p(1-p)(f(1) - f(0))` in the logit; the straight-through estimate
:math:`f'(z)\,\partial_l x = f'(z)\,x(1-x)/\lambda` has the mean
:math:`\int f'(\mathbf 1[y > 0])\,\ell(y)\,\ell(\lambda y - l)\,dy` (:func:`straight_through_gradient`),
which differs from it: biased by design. Their score column is the unbiased score function of the
discrete distribution itself (Bernoulli, OneHotCategorical).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro.distributions as dist
import torch
from scipy import integrate
from scipy.special import expit

from ..families import DEFAULT_SAMPLES
from ..report import markdown_table
from ..stats import MIN_REPS, ParamStats
from .mc_gradients import DistBuilder, Function, pathwise_jacobians, score_function_jacobians

TARGET = 0.45
"""The target ``t`` of the relaxations' cost ``(b - t)^2`` (Tucker et al., REBAR, 2017)."""
TEMPERATURE = 0.5
"""The fixed temperature of the RelaxedOneHotCategorical rows and the straight-through rows."""


def rebar_cost(x: Any) -> Any:
    """``(x - 0.45)^2``, for numpy and torch alike."""
    return (x - TARGET) ** 2


def rebar_cost_slope(x: float) -> float:
    """Derivative of :func:`rebar_cost`."""
    return 2.0 * (x - TARGET)


def _logistic_pdf(t: float) -> float:
    r""":math:`\ell(t) = \sigma(t)\sigma(-t)`, the standard logistic density."""
    e = np.exp(-np.abs(t))
    return e / (1.0 + e) ** 2


def _logistic_pdf_slope(t: float) -> float:
    r""":math:`\ell'(t) = -\ell(t)\tanh(t/2)`."""
    return -_logistic_pdf(t) * np.tanh(t / 2)


def _quad(integrand: Callable[[float], float], split: float) -> float:
    """``quad`` over the real line, split where the integrand has its bulk or a kink."""
    options = {"epsabs": 1e-13, "epsrel": 1e-12, "limit": 200}
    left = integrate.quad(integrand, -np.inf, split, **options)[0]
    return left + integrate.quad(integrand, split, np.inf, **options)[0]


def relaxed_bernoulli_expectation(f: Callable[[float], float], temperature: float, logits: float) -> float:
    r""":math:`E[f(x)]`, x ~ RelaxedBernoulli(temperature, logits), by quadrature over the logit."""
    lam = temperature
    return _quad(lambda y: f(expit(y)) * lam * _logistic_pdf(lam * y - logits), logits / lam)


def relaxed_bernoulli_gradient(f: Callable[[float], float], temperature: float, logits: float) -> np.ndarray:
    r"""Exact :math:`(\partial_\lambda, \partial_l)\,E[f(x)]`, x ~ RelaxedBernoulli(lambda, l), by
    quadrature against the derivatives of the logit's density (module docstring)."""
    lam = temperature
    d_lam = _quad(
        lambda y: f(expit(y)) * (_logistic_pdf(lam * y - logits) + lam * y * _logistic_pdf_slope(lam * y - logits)),
        logits / lam,
    )
    d_logits = _quad(lambda y: -f(expit(y)) * lam * _logistic_pdf_slope(lam * y - logits), logits / lam)
    return np.array([d_lam, d_logits])


def straight_through_gradient(f_slope: Callable[[float], float], temperature: float, logits: float) -> float:
    r"""The mean of the straight-through logit gradient :math:`f'(z)\,x(1-x)/\lambda`:
    :math:`\int f'(\mathbf 1[y>0])\,\ell(y)\,\ell(\lambda y - l)\,dy`, by quadrature."""
    return _quad(lambda y: f_slope(float(y > 0)) * _logistic_pdf(y) * _logistic_pdf(temperature * y - logits), 0.0)


def bernoulli_gradient(f: Callable[[float], float], logits: float) -> float:
    r""":math:`\partial_l E[f(z)] = p(1-p)(f(1) - f(0))`, z ~ Bernoulli(:math:`p = \sigma(l)`)."""
    p = expit(logits)
    return p * (1 - p) * (f(1.0) - f(0.0))


def _dirichlet_square_gradient(alpha: np.ndarray) -> np.ndarray:
    """Gradient of E[sum_k x_k^2] = S / D in alpha (module docstring)."""
    a = alpha.sum()
    s, d = (alpha * (alpha + 1)).sum(), a * (a + 1)
    return (2 * alpha + 1) / d - s * (2 * a + 1) / d**2


def _two_logits(p: np.ndarray) -> float:
    """The RelaxedBernoulli logit of x_1 for two-category logits (l_0, l_1): l_1 - l_0."""
    return float(p[1] - p[0])


@dataclass(frozen=True)
class Family:
    """One row group of the table: a distribution, its parameters and a test function ``f``."""

    name: str
    param_names: tuple[str, ...]
    params: tuple[float, ...]
    build: DistBuilder
    """Parameter rows ``(..., P)`` -> a distribution of batch shape ``(...)``, for the pathwise estimator."""
    function: Function
    """Samples ``(N, *event_shape)`` -> ``f`` per sample, ``(N,)``."""
    function_text: str
    exact_gradient: Callable[[np.ndarray], np.ndarray]
    """The exact gradient of the objective at the given parameters."""
    note: str
    score_build: DistBuilder | None = None
    """Straight-through rows: the discrete distribution whose score function estimates the discrete
    objective without bias; None: ``build`` serves both estimators."""
    straight_through_mean: Callable[[np.ndarray], np.ndarray] | None = None
    """Straight-through rows: the exact mean of the (biased) straight-through estimate."""

    def tensor(self) -> torch.Tensor:
        """The parameters as a float64 tensor (P,)."""
        return torch.tensor(self.params, dtype=torch.float64)

    @property
    def pathwise_available(self) -> bool:
        """Whether ``build`` gives a distribution with ``rsample``."""
        return bool(self.build(self.tensor()).has_rsample)


def _fixed(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64)


FAMILIES: tuple[Family, ...] = (
    Family("Normal", ("mu", "sigma"), (2.0, 1.0), lambda p: dist.Normal(p[..., 0], p[..., 1]),
           lambda x: x**2, "x^2", lambda p: np.array([2 * p[0], 2 * p[1]]),
           "explicit: mu + sigma eps; exact variances: pathwise 4, 24; score 87, 346"),
    Family("LogNormal", ("mu", "s"), (0.0, 0.5), lambda p: dist.LogNormal(p[..., 0], p[..., 1]),
           lambda x: x, "x", lambda p: np.exp(p[0] + p[1] ** 2 / 2) * np.array([1.0, p[1]]),
           "explicit: exp(mu + s eps)"),
    Family("Exponential", ("rate",), (2.0,), lambda p: dist.Exponential(p[..., 0]),
           lambda x: x, "x", lambda p: np.array([-1 / p[0] ** 2]), "explicit: eps / rate"),
    Family("Gamma", ("alpha", "beta"), (0.5, 2.0), lambda p: dist.Gamma(p[..., 0], p[..., 1]),
           lambda x: x, "x", lambda p: np.array([1 / p[1], -p[0] / p[1] ** 2]), "implicit reparameterization"),
    Family("Beta", ("a", "b"), (2.0, 3.0), lambda p: dist.Beta(p[..., 0], p[..., 1]),
           lambda x: x, "x", lambda p: np.array([p[1], -p[0]]) / (p[0] + p[1]) ** 2,
           "implicit reparameterization"),
    Family("Dirichlet", ("alpha[0]", "alpha[1]", "alpha[2]"), (1.0, 2.0, 3.0), lambda p: dist.Dirichlet(p),
           lambda x: (x**2).sum(-1), "sum_k x_k^2", _dirichlet_square_gradient, "implicit reparameterization"),
    Family("Poisson", ("rate",), (3.0,), lambda p: dist.Poisson(p[..., 0]),
           lambda x: x, "x", lambda p: np.array([1.0]), "no rsample: score function only"),
    Family("RelaxedBernoulli", ("temperature", "logits"), (TEMPERATURE, 0.3),
           lambda p: dist.RelaxedBernoulli(p[..., 0], logits=p[..., 1]),
           rebar_cost, "(x - 0.45)^2", lambda p: relaxed_bernoulli_gradient(rebar_cost, p[0], p[1]),
           "relaxation; exact by quadrature"),
    Family("RelaxedOneHotCategorical", ("logits[0]", "logits[1]"), (-0.1, 0.2),
           lambda p: dist.RelaxedOneHotCategorical(_fixed(TEMPERATURE), logits=p),
           lambda x: rebar_cost(x[..., 1]), "(x_1 - 0.45)^2",
           lambda p: relaxed_bernoulli_gradient(rebar_cost, TEMPERATURE, _two_logits(p))[1] * np.array([-1.0, 1.0]),
           "relaxation, K = 2: x_1 ~ RelaxedBernoulli(l_1 - l_0); exact by quadrature"),
    Family("RelaxedBernoulliStraightThrough", ("logits",), (0.3,),
           lambda p: dist.RelaxedBernoulliStraightThrough(_fixed(TEMPERATURE), logits=p[..., 0]),
           rebar_cost, "(z - 0.45)^2", lambda p: np.array([bernoulli_gradient(rebar_cost, p[0])]),
           "straight-through: biased for the discrete objective; score: Bernoulli",
           score_build=lambda p: dist.Bernoulli(logits=p[..., 0]),
           straight_through_mean=lambda p: np.array(
               [straight_through_gradient(rebar_cost_slope, TEMPERATURE, p[0])])),
    Family("RelaxedOneHotCategoricalStraightThrough", ("logits[0]", "logits[1]"), (-0.1, 0.2),
           lambda p: dist.RelaxedOneHotCategoricalStraightThrough(_fixed(TEMPERATURE), logits=p),
           lambda z: rebar_cost(z[..., 1]), "(z_1 - 0.45)^2",
           lambda p: bernoulli_gradient(rebar_cost, _two_logits(p)) * np.array([-1.0, 1.0]),
           "straight-through: biased for the discrete objective; score: OneHotCategorical",
           score_build=lambda p: dist.OneHotCategorical(logits=p),
           straight_through_mean=lambda p: straight_through_gradient(
               rebar_cost_slope, TEMPERATURE, _two_logits(p)) * np.array([-1.0, 1.0])),
)
"""The families in table order; parameters in float64."""


@dataclass(frozen=True)
class Measurement:
    """Both estimators on one family: exact gradient, and per-sample statistics (``num_particles`` 1,
    so ``variance`` is the per-sample variance); ``pathwise`` is None without ``rsample``."""

    family: Family
    exact: np.ndarray
    pathwise: ParamStats | None
    score: ParamStats


def measure(family: Family, num_samples: int, seed: int) -> Measurement:
    """Draw ``num_samples`` per-sample gradients of each estimator; the two use independent streams
    derived from ``seed`` (``numpy.random.SeedSequence``)."""
    if num_samples < MIN_REPS:
        raise ValueError(f"num_samples must be at least {MIN_REPS} (for the variance interval), got {num_samples}")
    pathwise_seed, score_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    params = family.tensor()
    pathwise = None
    if family.pathwise_available:
        jac = pathwise_jacobians(family.function, family.build, params, num_samples, seed=pathwise_seed)
        pathwise = ParamStats.from_samples(jac.numpy(), num_particles=1)
    jac = score_function_jacobians(family.function, family.score_build or family.build, params, num_samples,
                                   seed=score_seed)
    exact = np.asarray(family.exact_gradient(np.array(family.params)), dtype=np.float64)
    return Measurement(family, exact, pathwise, ParamStats.from_samples(jac.numpy(), num_particles=1))


def _ratio(a: float, b: float) -> float:
    """``a / b`` as IEEE division: inf for a nonzero ``a`` over 0, NaN for 0 / 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(a) / b)


def _estimator_columns(prefix: str, stats: ParamStats | None, exact: float, j: int) -> dict[str, float]:
    """Mean, standard error, bias, z and per-sample variance with its interval of element ``j``."""
    if stats is None:
        keys = ("mean", "se", "bias", "z", "per_sample_variance", "variance_ci_low", "variance_ci_high")
        return {f"{prefix}_{k}": float("nan") for k in keys}
    mean, se = float(stats.mean[j]), float(stats.standard_error[j])
    low, high = stats.per_sample_variance_ci
    return {
        f"{prefix}_mean": mean,
        f"{prefix}_se": se,
        f"{prefix}_bias": mean - exact,
        f"{prefix}_z": _ratio(mean - exact, se),
        f"{prefix}_per_sample_variance": float(stats.per_sample_variance[j]),
        f"{prefix}_variance_ci_low": float(low[j]),
        f"{prefix}_variance_ci_high": float(high[j]),
    }


def rows_of(m: Measurement) -> list[dict[str, Any]]:
    """One table row per parameter of the measured family."""
    f = m.family
    st_mean = None if f.straight_through_mean is None else f.straight_through_mean(np.array(f.params))
    rows = []
    for j, name in enumerate(f.param_names):
        exact = float(m.exact[j])
        note = f.note
        if st_mean is not None:
            note += f"; exact bias {st_mean[j] - exact:+.4g} (quadrature)"
        row = {
            "family": f.name,
            "parameter": name,
            "value": f.params[j],
            "f": f.function_text,
            "exact_gradient": exact,
            "pathwise_available": m.pathwise is not None,
            **_estimator_columns("pathwise", m.pathwise, exact, j),
            **_estimator_columns("score", m.score, exact, j),
        }
        row["variance_ratio"] = _ratio(row["score_per_sample_variance"], row["pathwise_per_sample_variance"])
        rows.append({**row, "num_samples": m.score.num_reps, "notes": note})
    return rows


def family_table(num_samples: int = DEFAULT_SAMPLES, seed: int = 0) -> list[dict[str, Any]]:
    """Measure every family in :data:`FAMILIES`; one row per family and parameter (columns: family,
    parameter, value, f, exact_gradient, pathwise_available, then for ``pathwise`` and ``score``: mean,
    se, bias (mean - exact), z (bias / se), per_sample_variance and its Bonett 95% interval; then
    variance_ratio (score over pathwise per-sample variance), num_samples and notes)."""
    return [row for family in FAMILIES for row in rows_of(measure(family, num_samples, seed))]


def _mean(row: dict[str, Any], prefix: str) -> str:
    if not row["pathwise_available"] and prefix == "pathwise":
        return "—"
    return f"{row[f'{prefix}_mean']:.4g} ± {row[f'{prefix}_se']:.2g}"


def _variance(row: dict[str, Any], prefix: str) -> str:
    if not row["pathwise_available"] and prefix == "pathwise":
        return "—"
    return (f"{row[f'{prefix}_per_sample_variance']:.4g} "
            f"[{row[f'{prefix}_variance_ci_low']:.4g}, {row[f'{prefix}_variance_ci_high']:.4g}]")


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """The printed Markdown table: means ± standard error, per-sample variances [95% CI], ratio."""
    return markdown_table(
        [
            {
                "family": r["family"],
                "θ": f"{r['parameter']} = {r['value']:g}",
                "f": r["f"],
                "exact ∇": f"{r['exact_gradient']:.4g}",
                "pathwise": "yes" if r["pathwise_available"] else "no",
                "pathwise mean": _mean(r, "pathwise"),
                "score mean": _mean(r, "score"),
                "pathwise var [95% CI]": _variance(r, "pathwise"),
                "score var [95% CI]": _variance(r, "score"),
                "score / pathwise": "—" if not r["pathwise_available"] else f"{r['variance_ratio']:.3g}",
                "notes": r["notes"],
            }
            for r in rows
        ]
    )
