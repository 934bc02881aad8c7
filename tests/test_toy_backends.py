"""Every closed-form row of the toy table, in each backend: the same test, parametrized over Pyro and
NumPyro through ``ppl_reparam.cli.toy.measure`` (the path ``ppl-reparam toy`` takes). Checks and their
tolerances: see closed_form.py."""

import pytest
from closed_form import CONFIDENCE, REPS, N, check_against_closed_form

from ppl_reparam.analytic import gradient_moments
from ppl_reparam.cli.toy import BACKENDS, measure
from ppl_reparam.specs import EstimatorSpec

pytestmark = pytest.mark.usefixtures("quick_compiles")


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
