"""Every closed-form row of the toy table, in each backend: the same test, parametrized over Pyro and
NumPyro through ``ppl_reparam.toy.measure`` (the path ``ppl-reparam toy`` takes). Checks and their
tolerances: see closed_form.py."""

import jax
import pytest
from closed_form import CONFIDENCE, REPS, N, check_against_closed_form

from ppl_reparam.analytic import gradient_moments
from ppl_reparam.specs import EstimatorSpec
from ppl_reparam.toy import BACKENDS, measure


@pytest.fixture(scope="module", autouse=True)
def _quick_compiles():
    """XLA's optimisation passes dominate the NumPyro rows' run time and change no number checked."""
    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("theta", [2.0, -1.0])
@pytest.mark.parametrize("estimator", ["score", "pathwise"])
@pytest.mark.parametrize("analytic_kl", [True, False])
def test_closed_form_row(backend, theta, estimator, analytic_kl):
    spec = EstimatorSpec(estimator, N, analytic_kl=analytic_kl)
    stats = measure(backend, theta, spec, REPS, seed=1, confidence=CONFIDENCE)
    check_against_closed_form(stats["theta"], gradient_moments(estimator, theta, analytic_kl=analytic_kl))


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'stan'"):
        measure("stan", 2.0, EstimatorSpec("score", 10), 10, 0)
