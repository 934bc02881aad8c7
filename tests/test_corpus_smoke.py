"""Smoke test of the model/guide corpora (``corpus_pyro``, ``corpus_numpyro``).

Each case runs under the framework's own ``TraceGraph_ELBO`` with every guide latent forced to the
score-function estimator (``force_estimator(guide, "score")``), and every gradient it produces is
finite. Two freshly built Pyro guides also start from the same parameters, which later comparisons of
two ELBOs on one case rely on (NumPyro's parameters come from ``SVI.init``, from the fixed values the
corpus gives). No gradient is checked for its value here.
"""

import math

import corpus_numpyro
import corpus_pyro
import jax
import numpy as np
import numpyro
import pyro
import pytest
import torch
from jax import random
from numpyro.infer import SVI
from numpyro.infer import TraceGraph_ELBO as NumPyroTraceGraphELBO
from pyro import poutine
from pyro.infer import TraceGraph_ELBO

from ppl_reparam.numpyro import force_estimator as numpyro_force_estimator
from ppl_reparam.pyro import force_estimator

FAST_COMPILE = {"xla_cpu_use_fusion_emitters": False}


def _pyro_elbo(case):
    if case.max_plate_nesting is None:
        return TraceGraph_ELBO()
    return TraceGraph_ELBO(max_plate_nesting=case.max_plate_nesting)


def _pyro_initial_params(case):
    """The unconstrained parameters that a freshly built (model, guide) of ``case`` create on an empty
    param store (the model too: ss_vae_M2 registers its networks, the guide's included, in the model)."""
    pyro.clear_param_store()
    model, guide = corpus_pyro.fresh(case)
    with poutine.trace(param_only=True) as capture:
        guide(*case.args, **case.kwargs)
        model(*case.args, **case.kwargs)
    return {name: site["value"].unconstrained().detach().clone() for name, site in capture.trace.nodes.items()}


@pytest.mark.parametrize("case", corpus_pyro.CORPUS, ids=lambda case: case.name)
def test_pyro_tracegraph_gradients_are_finite(case):
    pyro.set_rng_seed(0)
    model, guide = corpus_pyro.fresh(case)
    with poutine.trace(param_only=True) as capture:
        loss = _pyro_elbo(case).loss_and_grads(model, force_estimator(guide, "score"), *case.args, **case.kwargs)
    params = {name: site["value"].unconstrained() for name, site in capture.trace.nodes.items()}
    grads = {name: param.grad for name, param in params.items() if param.grad is not None}
    assert math.isfinite(loss)
    assert grads, f"no parameter of {case.name} received a gradient"
    for name, grad in grads.items():
        assert torch.isfinite(grad).all(), f"{case.name}: non-finite gradient for {name}"


@pytest.mark.parametrize("case", corpus_pyro.CORPUS, ids=lambda case: case.name)
def test_pyro_fresh_guides_start_from_the_same_parameters(case):
    pyro.set_rng_seed(0)
    first = _pyro_initial_params(case)
    pyro.set_rng_seed(1)
    second = _pyro_initial_params(case)
    assert first and first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), f"{case.name}: {name} differs between fresh guides"


def _numpyro_run(case):
    """A function of (key, args, kwargs) that inits SVI for ``case`` (under TraceGraph_ELBO, the guide forced
    to the score function) and returns the loss and its gradients with respect to the unconstrained params."""
    elbo = NumPyroTraceGraphELBO()
    model, guide = corpus_numpyro.fresh(case)
    guide = numpyro_force_estimator(guide, "score")
    svi = SVI(model, guide, numpyro.optim.Adam(1e-3), elbo)

    def run(key, args, kwargs):
        init_key, loss_key = random.split(key)
        params = svi.optim.get_params(svi.init(init_key, *args, **kwargs).optim_state)

        def loss_fn(unconstrained):
            return elbo.loss(loss_key, svi.constrain_fn(unconstrained), model, guide, *args, **kwargs)

        return jax.value_and_grad(loss_fn)(params)

    return run


@pytest.fixture(scope="module")
def numpyro_results(quick_compiles):
    """Each NumPyro case's outputs (see :func:`_numpyro_run`), or the error raised while tracing it.

    All cases are traced into one jitted program: one XLA compile of the lot costs much less than one per
    case (or op-by-op dispatch), and XLA's CPU fusion emitters, which double the compile time of such
    small programs, are left off. An error in one case is caught while tracing and reported by its test."""
    runs = {case.name: _numpyro_run(case) for case in corpus_numpyro.CORPUS}
    inputs = {case.name: (case.args, case.kwargs) for case in corpus_numpyro.CORPUS}
    errors = {}

    def all_cases(key, inputs):
        errors.clear()
        outputs = {}
        for name, (args, kwargs) in inputs.items():
            try:
                outputs[name] = runs[name](key, args, kwargs)
            except Exception as error:  # reported by that case's test
                errors[name] = error
        return outputs

    try:
        outputs = jax.jit(all_cases, compiler_options=FAST_COMPILE)(random.PRNGKey(0), inputs)
    except Exception as error:  # an XLA without that option
        if "compile option" not in str(error):
            raise
        outputs = jax.jit(all_cases)(random.PRNGKey(0), inputs)
    return outputs, errors


@pytest.mark.parametrize("case", corpus_numpyro.CORPUS, ids=lambda case: case.name)
def test_numpyro_tracegraph_gradients_are_finite(case, numpyro_results):
    outputs, errors = numpyro_results
    if case.name in errors:
        raise errors[case.name]
    # checked in NumPy: each jnp operation on a new shape would cost an XLA compile
    loss, grads = jax.tree.map(np.asarray, outputs[case.name])
    assert np.isfinite(loss)
    assert grads, f"{case.name} has no parameters"
    for name, grad in grads.items():
        assert np.isfinite(grad).all(), f"{case.name}: non-finite gradient for {name}"
