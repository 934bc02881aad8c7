"""Reparameterizable families on the Pyro backend: both estimators against exact gradients,
straight-through bias, the exact gradients' quadrature, per-sample Jacobians
(ppl_reparam.pyro.mc_gradients) and the ``families`` command."""

import csv
import dataclasses
import json

import numpy as np
import pyro.distributions as dist
import pytest
import torch

from ppl_reparam import analytic
from ppl_reparam.cli import main
from ppl_reparam.families import (
    FAMILIES,
    Backend,
    family_table,
    measure,
    rebar_cost,
    relaxed_bernoulli_expectation,
    relaxed_bernoulli_gradient,
    rows_of,
)
from ppl_reparam.pyro.families import IMPLEMENTATIONS, PYRO
from ppl_reparam.pyro.mc_gradients import pathwise_jacobians, score_function_jacobians

Z = 5.5
# Two-sided normal tail P(|Z| > 5.5) = 3.8e-8 per element; a test checks at most 6 elements (3
# parameters x 2 estimators), so its false-failure rate is below 1e-6 (normal approximation to the
# mean of N independent per-sample gradients). Seeds are fixed, so the outcome is deterministic.
SAMPLES = 20_000
UNBIASED = [f for f in FAMILIES if f.straight_through_mean is None]
STRAIGHT_THROUGH = [f for f in FAMILIES if f.straight_through_mean is not None]


def _ids(family):
    return family.name


def normal(p):
    return dist.Normal(p[..., 0], p[..., 1])


def square(x):
    return x**2


@pytest.mark.parametrize("family", UNBIASED, ids=_ids)
def test_both_estimators_are_unbiased(family):
    m = measure(family, PYRO, SAMPLES, seed=0)
    assert np.all(np.abs(m.score.mean - m.exact) < Z * m.score.standard_error)
    if family.pathwise:
        assert np.all(np.abs(m.pathwise.mean - m.exact) < Z * m.pathwise.standard_error)
    else:
        assert m.pathwise is None and family.name == "Poisson"


@pytest.mark.parametrize("family", FAMILIES, ids=_ids)
def test_the_families_data_matches_the_torch_distributions(family):
    # the framework-free data says which estimators apply; torch's distributions must agree
    implementation = IMPLEMENTATIONS[family.name]
    rows = torch.tensor([family.params] * 3, dtype=torch.float64)
    assert implementation.build(rows).has_rsample == family.pathwise
    if family.score_distribution is None:
        assert implementation.score_build is None
    else:
        assert type(implementation.score_build(rows)).__name__ == family.score_distribution
    assert set(IMPLEMENTATIONS) == {f.name for f in FAMILIES} and not PYRO.missing


@pytest.mark.parametrize("family", STRAIGHT_THROUGH, ids=_ids)
def test_straight_through_is_biased_and_its_score_column_is_not(family):
    # 60,000 samples: the exact bias (0.0134 in size, by quadrature) is about 11.9 standard errors of
    # the straight-through mean (per-sample variance 0.0766), so "measured bias beyond 5 SE, with the
    # exact bias's sign" fails only on a fluctuation beyond 6.8 SE (probability below 1e-11).
    m = measure(family, PYRO, 60_000, seed=0)
    params = np.array(family.params)
    st_mean = family.straight_through_mean(params)
    exact_bias = st_mean - m.exact
    assert np.all(np.abs(exact_bias) > 0.01)
    se = m.pathwise.standard_error
    assert np.all(np.abs(m.pathwise.mean - st_mean) < Z * se)  # the estimate has the mean we derived
    measured_bias = m.pathwise.mean - m.exact
    assert np.all(np.sign(measured_bias) == np.sign(exact_bias))
    assert np.all(np.abs(measured_bias) > 5 * se)
    assert np.all(np.abs(m.score.mean - m.exact) < Z * m.score.standard_error)


def test_relaxed_quadrature_matches_finite_differences():
    temperature, logits, h = 0.5, 0.3, 1e-3

    def central(g, x):  # five-point stencil, error O(h^4)
        return (-g(x + 2 * h) + 8 * g(x + h) - 8 * g(x - h) + g(x - 2 * h)) / (12 * h)

    d_temperature = central(lambda t: relaxed_bernoulli_expectation(rebar_cost, t, logits), temperature)
    d_logits = central(lambda v: relaxed_bernoulli_expectation(rebar_cost, temperature, v), logits)
    np.testing.assert_allclose(relaxed_bernoulli_gradient(rebar_cost, temperature, logits),
                               [d_temperature, d_logits], atol=1e-9)
    # the density integrates to 1, and E[x] = 1/2 at logits 0 by symmetry
    assert relaxed_bernoulli_expectation(lambda x: 1.0, temperature, logits) == pytest.approx(1.0, abs=1e-10)
    assert relaxed_bernoulli_expectation(lambda x: x, temperature, 0.0) == pytest.approx(0.5, abs=1e-10)


def test_normal_per_sample_variances_match_closed_forms():
    # Normal(2, 1) with f = x^2 is the design's toy problem: analytic.py's per-sample gradients equal
    # ours up to the entropy's constant -1/sigma, so the variances are the same (4, 24; 87, 346).
    m = measure(FAMILIES[0], PYRO, SAMPLES, seed=0)
    for estimator, stats in (("pathwise", m.pathwise), ("score", m.score)):
        for j, wrt in enumerate(("loc", "scale")):
            exact = analytic.gradient_moments(estimator, 2.0, 1.0, wrt=wrt)
            assert abs(stats.variance[j] - exact.variance) < Z * exact.sample_variance_sd(SAMPLES)
            low, high = stats.variance_ci
            assert low[j] < stats.variance[j] < high[j]


@pytest.mark.parametrize("name", ["Bernoulli", "Poisson"])
def test_pathwise_without_rsample_names_the_distribution(name):
    def build(p):
        return dist.Bernoulli(logits=p[..., 0]) if name == "Bernoulli" else dist.Poisson(p[..., 0])

    params = torch.tensor([0.5], dtype=torch.float64)
    with pytest.raises(ValueError, match=f"{name} has no rsample"):
        pathwise_jacobians(lambda x: x, build, params, 10, seed=0)
    assert score_function_jacobians(lambda x: x, build, params, 10, seed=0).shape == (10, 1)


def test_per_sample_jacobians():
    params = torch.tensor([2.0, 1.5], dtype=torch.float64)
    jac = pathwise_jacobians(square, normal, params, 1000, seed=0)
    assert jac.shape == (1000, 2) and jac.dtype == torch.float64
    # row i is sample i's own gradient: d/dmu x^2 = 2x and d/dsigma x^2 = 2x eps, eps = (x - mu) / sigma
    x = jac[:, 0] / 2
    torch.testing.assert_close(jac[:, 1], 2 * x * (x - 2.0) / 1.5)
    alpha = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    for estimator in (pathwise_jacobians, score_function_jacobians):
        assert estimator(lambda x: x[..., 0], dist.Dirichlet, alpha, 7, seed=0).shape == (7, 3)


def test_argument_errors():
    params = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="1-D tensor"):
        pathwise_jacobians(square, normal, params[None], 10, seed=0)
    with pytest.raises(ValueError, match="num_samples must be positive"):
        pathwise_jacobians(square, normal, params, 0, seed=0)
    with pytest.raises(ValueError, match=r"batch shape \(N,\)"):
        pathwise_jacobians(square, lambda p: dist.Normal(p[0, 0], p[0, 1]), params, 10, seed=0)
    with pytest.raises(ValueError, match="one value per sample"):
        score_function_jacobians(lambda x: x.sum(), normal, params, 10, seed=0)
    with pytest.raises(ValueError, match="at least 5"):
        measure(FAMILIES[0], PYRO, 4, seed=0)


def test_zero_variance_gives_infinite_ratio():
    # f = x under Normal(mu, sigma): the pathwise gradient in mu is 1 for every sample
    linear = dataclasses.replace(FAMILIES[0], exact_gradient=lambda p: np.array([1.0, 0.0]))
    backend = Backend("pyro", {"Normal": dataclasses.replace(IMPLEMENTATIONS["Normal"], function=lambda x: x)})
    mu, sigma = rows_of(measure(linear, backend, 100, seed=0))
    assert mu["pathwise_per_sample_variance"] == 0 and mu["variance_ratio"] == np.inf
    assert mu["pathwise_bias"] == 0 and np.isnan(mu["pathwise_z"])
    assert np.isfinite(sigma["variance_ratio"])


def test_seeded_and_leaves_the_global_rng_alone():
    params = torch.tensor([0.5, 2.0], dtype=torch.float64)
    gamma = lambda p: dist.Gamma(p[..., 0], p[..., 1])  # noqa: E731
    for estimator in (pathwise_jacobians, score_function_jacobians):
        state = torch.get_rng_state()
        a = estimator(square, gamma, params, 100, seed=1)
        assert torch.equal(state, torch.get_rng_state())
        assert torch.equal(a, estimator(square, gamma, params, 100, seed=1))
        assert not torch.equal(a, estimator(square, gamma, params, 100, seed=2))
    assert repr(family_table([PYRO], num_samples=50, seed=3)) == repr(family_table([PYRO], num_samples=50, seed=3))


def test_families_command_end_to_end(tmp_path, capsys):
    out = tmp_path / "families"
    assert main(["families", "--samples", "500", "--seed", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "\n| family | θ | f | exact ∇ | pathwise | pathwise mean | score mean |" in printed  # no backend column
    rows = list(csv.DictReader(open(out / "families.csv")))
    assert len(rows) == sum(len(f.param_names) for f in FAMILIES) == 20
    assert {r["backend"] for r in rows} == {"pyro"} and {r["score_available"] for r in rows} == {"True"}
    poisson = next(r for r in rows if r["family"] == "Poisson")
    assert poisson["pathwise_available"] == "False" and poisson["pathwise_mean"] == "nan"
    saved = json.loads((out / "families.json").read_text())
    assert saved["samples"] == 500 and saved["backends"] == ["pyro"] and saved["rows"][0]["num_samples"] == 500
    assert next(r for r in saved["rows"] if r["family"] == "Poisson")["variance_ratio"] is None
    assert "| RelaxedBernoulliStraightThrough | logits = 0.3 |" in (out / "families.md").read_text()
    assert main(["families", "--samples", "3", "--out", str(out)]) == 2
    assert "argument --samples: must be an integer in [5, 10000000]" in capsys.readouterr().err


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.measure is not None], ids=lambda f: f.name)
def test_measure_valued_column_is_unbiased(family):
    """The measure-valued estimator beside the other two: each parameter with a weak derivative within Z
    standard errors of the exact gradient (Poisson's coupled f = x is exact: f(K + 1) - f(K) = 1), and the
    toy's mu at its closed-form per-sample variance 8 theta^2 (2 - pi/2) / pi (analytic.measure_valued_variance)."""
    m = measure(family, PYRO, SAMPLES, seed=0)
    names = family.measure[2]
    assert set(m.measure) == {j for j, n in enumerate(names) if n is not None}
    for j, stats in m.measure.items():
        assert abs(stats.mean[0] - m.exact[j]) <= Z * stats.standard_error[0], (family.name, j)
    if family.name == "Normal":
        g = m.measure[0].samples[:, 0]
        deviations = (g - g.mean()) ** 2
        closed = analytic.measure_valued_variance(2.0)
        assert abs(deviations.sum() / (len(g) - 1) - closed) < Z * deviations.std(ddof=1) / np.sqrt(len(g))
    rows = rows_of(m)
    assert [r["measure_available"] for r in rows] == [n is not None for n in names]
