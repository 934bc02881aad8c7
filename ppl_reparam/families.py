r"""``ppl-reparam families``: score-function against pathwise gradients, family by family; the
framework-free study.

For each reparameterizable family (and Poisson, which has none) the table takes a test function
``f`` whose expectation has an exact gradient, and measures both estimators of
:math:`\nabla_\theta E_{q(x;\theta)}[f(x)]` through a :class:`Backend`: per-sample mean (with its
standard error) and per-sample variance (with Bonett's interval, :mod:`ppl_reparam.stats`), and the
ratio of the two variances. This module holds what does not depend on the framework: the families
as data (:data:`FAMILIES`: parameters, ``f`` as text, exact gradient, notes, which estimators
apply), the exact gradients, the measurement from per-sample Jacobians and the rows and table. Each
backend module (:mod:`ppl_reparam.pyro.families`, :mod:`ppl_reparam.numpyro.families`) supplies, per
family, the distribution and ``f`` in its framework and the per-sample Jacobians of its
``mc_gradients``; a family the framework lacks is named with the reason, and its rows say so.

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
- Poisson(rate), :math:`E[x] = \lambda`: 1 (no reparameterized sampler: score function only).

Gamma, Beta and Dirichlet are sampled by rejection, so torch and JAX (``jax.random.gamma``, which
NumPyro's Beta and Dirichlet normalise) differentiate them by implicit reparameterization (Figurnov,
Mohamed and Mnih, NeurIPS 2018).

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

Seeds: :func:`measure` derives the pathwise and the score-function seeds from ``seed`` with
``numpy.random.SeedSequence`` (independent streams), the same for every family and backend; two
backends draw from different generators, so their measurements are independent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .measure_valued import measure_valued_jacobians
from .report import markdown_table
from .stats import MIN_REPS, ParamStats

DEFAULT_SAMPLES = 100_000
"""Per-sample gradients per estimator and family."""
TARGET = 0.45
"""The target ``t`` of the relaxations' cost ``(b - t)^2`` (Tucker et al., REBAR, 2017)."""
TEMPERATURE = 0.5
"""The fixed temperature of the RelaxedOneHotCategorical rows and the straight-through rows."""


def rebar_cost(x: Any) -> Any:
    """``(x - 0.45)^2``, for numpy, torch and JAX alike."""
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


def expit(y: float) -> float:
    r"""The logistic function :math:`1 / (1 + e^{-y}) = \exp(-\log(1 + e^{-y}))`, without overflow."""
    return np.exp(-np.logaddexp(0.0, -y))


def _quad(integrand: Callable[[float], float], split: float) -> float:
    """``quad`` over the real line, split where the integrand has its bulk or a kink."""
    from scipy import integrate  # here, not at the top: every command imports this module

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
    """One row group of the table, framework-free: a distribution family at fixed parameters, a
    test function ``f`` (as text; each backend writes it in its framework) and the exact gradient of
    :math:`E[f(x)]`, one row per parameter."""

    name: str
    param_names: tuple[str, ...]
    params: tuple[float, ...]
    function_text: str
    exact_gradient: Callable[[np.ndarray], np.ndarray]
    """The exact gradient of the objective at the given parameters."""
    note: str
    pathwise: bool = True
    """Whether the pathwise estimator applies: the distribution has a reparameterized sampler."""
    score_distribution: str | None = None
    """Straight-through rows: the discrete distribution whose score function estimates the discrete
    objective without bias; None: the score function of the family itself."""
    straight_through_mean: Callable[[np.ndarray], np.ndarray] | None = None
    """Straight-through rows: the exact mean of the (biased) straight-through estimate."""
    measure: tuple[str, Callable[[np.ndarray], np.ndarray], tuple[str | None, ...]] | None = None
    """The measure-valued estimator (:mod:`ppl_reparam.measure_valued`, NumPy, the same in every backend):
    its family name, ``f`` on an array of samples, and each parameter's name there (None: no weak
    derivative for it); None where it has no such family."""


FAMILIES: tuple[Family, ...] = (
    Family("Normal", ("mu", "sigma"), (2.0, 1.0), "x^2", lambda p: np.array([2 * p[0], 2 * p[1]]),
           "explicit: mu + sigma eps; exact variances: pathwise 4, 24; score 87, 346; measure (mu) 4.372",
           measure=("Normal", np.square, ("loc", "scale"))),
    Family("LogNormal", ("mu", "s"), (0.0, 0.5), "x", lambda p: np.exp(p[0] + p[1] ** 2 / 2) * np.array([1.0, p[1]]),
           "explicit: exp(mu + s eps)", measure=("LogNormal", np.asarray, ("loc", "scale"))),
    Family("Exponential", ("rate",), (2.0,), "x", lambda p: np.array([-1 / p[0] ** 2]), "explicit: eps / rate",
           measure=("Exponential", np.asarray, ("rate",))),
    Family("Gamma", ("alpha", "beta"), (0.5, 2.0), "x", lambda p: np.array([1 / p[1], -p[0] / p[1] ** 2]),
           "implicit reparameterization", measure=("Gamma", np.asarray, (None, "rate"))),
    Family("Beta", ("a", "b"), (2.0, 3.0), "x", lambda p: np.array([p[1], -p[0]]) / (p[0] + p[1]) ** 2,
           "implicit reparameterization"),
    Family("Dirichlet", ("alpha[0]", "alpha[1]", "alpha[2]"), (1.0, 2.0, 3.0), "sum_k x_k^2",
           _dirichlet_square_gradient, "implicit reparameterization"),
    Family("Poisson", ("rate",), (3.0,), "x", lambda p: np.array([1.0]), "no rsample: score function only",
           pathwise=False, measure=("Poisson", np.asarray, ("rate",))),
    Family("RelaxedBernoulli", ("temperature", "logits"), (TEMPERATURE, 0.3), "(x - 0.45)^2",
           lambda p: relaxed_bernoulli_gradient(rebar_cost, p[0], p[1]), "relaxation; exact by quadrature"),
    Family("RelaxedOneHotCategorical", ("logits[0]", "logits[1]"), (-0.1, 0.2), "(x_1 - 0.45)^2",
           lambda p: relaxed_bernoulli_gradient(rebar_cost, TEMPERATURE, _two_logits(p))[1] * np.array([-1.0, 1.0]),
           "relaxation, K = 2: x_1 ~ RelaxedBernoulli(l_1 - l_0); exact by quadrature"),
    Family("RelaxedBernoulliStraightThrough", ("logits",), (0.3,), "(z - 0.45)^2",
           lambda p: np.array([bernoulli_gradient(rebar_cost, p[0])]),
           "straight-through: biased for the discrete objective", score_distribution="Bernoulli",
           straight_through_mean=lambda p: np.array([straight_through_gradient(rebar_cost_slope, TEMPERATURE, p[0])])),
    Family("RelaxedOneHotCategoricalStraightThrough", ("logits[0]", "logits[1]"), (-0.1, 0.2), "(z_1 - 0.45)^2",
           lambda p: bernoulli_gradient(rebar_cost, _two_logits(p)) * np.array([-1.0, 1.0]),
           "straight-through: biased for the discrete objective", score_distribution="OneHotCategorical",
           straight_through_mean=lambda p: straight_through_gradient(
               rebar_cost_slope, TEMPERATURE, _two_logits(p)) * np.array([-1.0, 1.0])),
)
"""The families in table order; parameters as floats (each backend computes in float64)."""


class Implementation(Protocol):
    """A backend's version of one family: per-sample gradients of ``f`` under the family's
    distribution at ``params``, by its ``mc_gradients``, as a float64 array ``(num_samples, P)``."""

    def pathwise(self, params: tuple[float, ...], num_samples: int, seed: int) -> np.ndarray:
        """Per-sample pathwise gradients (families with :attr:`Family.pathwise` only)."""

    def score(self, params: tuple[float, ...], num_samples: int, seed: int) -> np.ndarray:
        """Per-sample score-function gradients (of :attr:`Family.score_distribution` where set)."""


@dataclass(frozen=True)
class Backend:
    """A framework's part of the study: an :class:`Implementation` per family name, or, for a family
    the framework lacks, the reason in ``missing``."""

    name: str
    implementations: Mapping[str, Implementation]
    missing: Mapping[str, str] = field(default_factory=dict)
    """Family name -> why the backend has no implementation of it (the rows' notes)."""
    notes: Mapping[str, str] = field(default_factory=dict)
    """Family name -> the backend's note on its implementation, in place of :attr:`Family.note`."""


@dataclass(frozen=True)
class Measurement:
    """The estimators on one family through one backend: exact gradient, and per-sample statistics
    (``num_particles`` 1, so ``variance`` is the per-sample variance); ``pathwise`` is None without a
    reparameterized sampler, and all are None where the backend lacks the family (``note`` says
    why)."""

    family: Family
    backend: str
    exact: np.ndarray
    pathwise: ParamStats | None
    score: ParamStats | None
    num_samples: int
    note: str
    """The rows' notes: the backend's or else the family's note (with the straight-through rows'
    score distribution), or why the backend lacks the family."""
    measure: dict[int, ParamStats] | None = None
    """The measure-valued estimator's statistics of each parameter (by index) that has one; None where
    the family has none or the backend lacks the family."""


def measure(family: Family, backend: Backend, num_samples: int, seed: int) -> Measurement:
    """Draw ``num_samples`` per-sample gradients of each estimator through ``backend``; the two use
    independent streams derived from ``seed`` (``numpy.random.SeedSequence``)."""
    if num_samples < MIN_REPS:
        raise ValueError(f"num_samples must be at least {MIN_REPS} (for the variance interval), got {num_samples}")
    exact = np.asarray(family.exact_gradient(np.array(family.params)), dtype=np.float64)
    if family.name in backend.missing:
        return Measurement(family, backend.name, exact, None, None, num_samples, backend.missing[family.name])
    implementation = backend.implementations[family.name]
    pathwise_seed, score_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    pathwise = None
    if family.pathwise:
        jac = implementation.pathwise(family.params, num_samples, pathwise_seed)
        pathwise = ParamStats.from_samples(jac, num_particles=1)
    jac = implementation.score(family.params, num_samples, score_seed)
    note = backend.notes.get(family.name, family.note)
    if family.score_distribution is not None:
        note += f"; score: {family.score_distribution}"
    return Measurement(family, backend.name, exact, pathwise, ParamStats.from_samples(jac, num_particles=1),
                       num_samples, note, _measure_valued(family, num_samples, seed))


def _measure_valued(family: Family, num_samples: int, seed: int) -> dict[int, ParamStats] | None:
    """The measure-valued estimator's per-sample gradients of each parameter that has a weak derivative
    (coupled; its own stream, derived from ``(seed, 2)``), as statistics by parameter index."""
    if family.measure is None:
        return None
    name, f, names = family.measure
    index = [j for j, n in enumerate(names) if n is not None]
    jac = measure_valued_jacobians(f, name, family.params, num_samples, seed=int(
        np.random.SeedSequence([seed, 2]).generate_state(1)[0]), wrt=[names[j] for j in index])
    return {j: ParamStats.from_samples(jac[:, k : k + 1], num_particles=1) for k, j in enumerate(index)}


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
        note = m.note
        if st_mean is not None:
            note += f"; exact bias {st_mean[j] - exact:+.4g} (quadrature)"
        row = {
            "backend": m.backend,
            "family": f.name,
            "parameter": name,
            "value": f.params[j],
            "f": f.function_text,
            "exact_gradient": exact,
            "pathwise_available": m.pathwise is not None,
            "score_available": m.score is not None,
            **_estimator_columns("pathwise", m.pathwise, exact, j),
            **_estimator_columns("score", m.score, exact, j),
            "measure_available": j in (m.measure or {}),
            **_estimator_columns("measure", (m.measure or {}).get(j), exact, 0),
        }
        row["variance_ratio"] = _ratio(row["score_per_sample_variance"], row["pathwise_per_sample_variance"])
        rows.append({**row, "num_samples": m.num_samples, "notes": note})
    return rows


def family_table(
    backends: Sequence[Backend], num_samples: int = DEFAULT_SAMPLES, seed: int = 0
) -> list[dict[str, Any]]:
    """Measure every family in :data:`FAMILIES` through every backend; one row per family, parameter
    and backend, the backends' rows of a parameter side by side (columns: backend, family, parameter,
    value, f, exact_gradient, pathwise_available, score_available, then for ``pathwise`` and
    ``score``: mean, se, bias (mean - exact), z (bias / se), per_sample_variance and its Bonett 95%
    interval, NaN where the estimator does not apply or the backend lacks the family; the same for
    ``measure`` (the measure-valued estimator, two evaluations of f per sample, after
    measure_available); then
    variance_ratio (score over pathwise per-sample variance), num_samples and notes)."""
    rows = []
    for family in FAMILIES:
        per_backend = [rows_of(measure(family, backend, num_samples, seed)) for backend in backends]
        rows += [row for same_parameter in zip(*per_backend) for row in same_parameter]
    return rows


def _mean(row: dict[str, Any], prefix: str) -> str:
    if not row[f"{prefix}_available"]:
        return "—"
    return f"{row[f'{prefix}_mean']:.4g} ± {row[f'{prefix}_se']:.2g}"


def _variance(row: dict[str, Any], prefix: str) -> str:
    if not row[f"{prefix}_available"]:
        return "—"
    return (f"{row[f'{prefix}_per_sample_variance']:.4g} "
            f"[{row[f'{prefix}_variance_ci_low']:.4g}, {row[f'{prefix}_variance_ci_high']:.4g}]")


def _pathwise(row: dict[str, Any]) -> str:
    """Whether the pathwise estimator applies: yes, no, or — where the backend lacks the family."""
    if not row["score_available"]:
        return "—"
    return "yes" if row["pathwise_available"] else "no"


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """The printed Markdown table: means ± standard error, per-sample variances [95% CI], ratio; a
    backend column when the rows come from more than one."""
    both = len({r["backend"] for r in rows}) > 1
    return markdown_table(
        [
            {
                **({"backend": r["backend"]} if both else {}),
                "family": r["family"],
                "θ": f"{r['parameter']} = {r['value']:g}",
                "f": r["f"],
                "exact ∇": f"{r['exact_gradient']:.4g}",
                "pathwise": _pathwise(r),
                "pathwise mean": _mean(r, "pathwise"),
                "score mean": _mean(r, "score"),
                "pathwise var [95% CI]": _variance(r, "pathwise"),
                "score var [95% CI]": _variance(r, "score"),
                "measure mean": _mean(r, "measure"),
                "measure var [95% CI]": _variance(r, "measure"),
                "score / pathwise": "—" if not r["pathwise_available"] else f"{r['variance_ratio']:.3g}",
                "notes": r["notes"],
            }
            for r in rows
        ]
    )
