"""JitScoreFunctionELBO and JitPathwiseELBO: the gradients of the non-JIT ELBOs on the same draws.

The first call of a compiled ELBO traces it (drawing random numbers), so each comparison compiles
first, then runs both from the same seed.
"""

import math
import warnings

import corpus_pyro
import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl_reparam.pyro import PathwiseELBO, ScoreFunctionELBO
from ppl_reparam.pyro.elbo import JitPathwiseELBO, JitScoreFunctionELBO

CASES = ["eight_schools", "tiny_vae", "plates_different_dims", "sparse_gamma_def", "auto_normal_positive"]
VECTORIZED = {"tiny_vae", "plates_different_dims"}
"""Cases run with three vectorized particles (the others are not written for Pyro's particle plate)."""
PAIRS = [(ScoreFunctionELBO, JitScoreFunctionELBO), (PathwiseELBO, JitPathwiseELBO)]


def _steps(case, cls, compile_first):
    pyro.clear_param_store()
    model, guide = corpus_pyro.fresh(case)
    vectorized = {"vectorize_particles": True, "num_particles": 3} if case.name in VECTORIZED else {}
    elbo = cls(max_plate_nesting=case.max_plate_nesting, **vectorized)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if compile_first:
            elbo.loss_and_grads(model, guide, *case.args, **case.kwargs)
            for _, p in pyro.get_param_store().named_parameters():
                p.grad = None
        pyro.set_rng_seed(0)
        losses = [elbo.loss_and_grads(model, guide, *case.args, **case.kwargs) for _ in range(2)]
    return losses, {n: p.grad.clone() for n, p in pyro.get_param_store().named_parameters()}


@pytest.mark.parametrize("cls, jit_cls", PAIRS, ids=["score", "pathwise"])
@pytest.mark.parametrize("name", CASES)
def test_compiled_elbo_equals_the_eager_one(name, cls, jit_cls):
    case = next(c for c in corpus_pyro.CORPUS if c.name == name)
    (losses, grads), (jit_losses, jit_grads) = _steps(case, cls, False), _steps(case, jit_cls, True)
    assert losses == pytest.approx(jit_losses, rel=1e-5)
    assert set(grads) == set(jit_grads)
    for k in grads:
        torch.testing.assert_close(jit_grads[k], grads[k], rtol=1e-4, atol=1e-5)


def test_learning_baselines_are_refused_and_nan_names_the_site():
    with pytest.raises(ValueError, match="learns from every step.*use ScoreFunctionELBO"):
        JitScoreFunctionELBO(baseline="moving_average")
    JitScoreFunctionELBO(num_particles=2, vectorize_particles=True, baseline="rloo")  # a pure function: fine

    def model():
        pyro.sample("z", dist.Normal(0.0, 1.0))

    def guide():
        pyro.sample("z", dist.Normal(pyro.param("m", torch.tensor(math.inf)), 1.0))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="site 'z'"):
            JitPathwiseELBO().loss_and_grads(model, guide)
