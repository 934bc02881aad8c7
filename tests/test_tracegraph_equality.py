"""ScoreFunctionELBO against the frameworks' own TraceGraph_ELBO, draw for draw, on a corpus of models.

With every guide site forced to the score function, both Rao-Blackwellize by provenance tracking:
a site's cost holds exactly the terms downstream of its sample, within a plate element by element. So
on the same random draws (same seed) they must give the same loss and the same gradient, on every
model of ``corpus_pyro`` / ``corpus_numpyro``: plates at the same and different dims, nested and
subsampled plates, Markov chains, discrete and continuous mixes, AutoGuides' auxiliary sites, masks,
scales, and small versions of Pyro's example programs (eight_schools, sparse_gamma_def, ss_vae_M2,
inclined_plane, a VAE).

Deliberate differences, stated and checked where they show:

- NumPyro's TraceGraph_ELBO multiplies a site's score by its subsampling scale as well as its cost
  (pyro #555); ours scales the cost only, as Pyro does. Where a guide latent sits in a subsampled plate
  its parameters' gradients differ by exactly that scale.
- NumPyro's TraceGraph_ELBO masks the score of a masked guide site; ours does not (as Pyro): a masked
  element's score still multiplies the unmasked terms downstream of it, so masking it is biased
  (``test_surrogate.py::test_masked_site_keeps_its_score_against_unmasked_terms_downstream``). On the
  corpus's masked case the masked elements have no unmasked terms downstream, so the two agree.
"""

import math

import corpus_numpyro
import corpus_pyro
import jax
import numpy as np
import pyro
import pytest
import torch
from numpyro.infer import SVI
from numpyro.infer import TraceGraph_ELBO as NumPyroTraceGraph
from numpyro.optim import Adam
from pyro.infer import TraceGraph_ELBO

from ppl_reparam import numpyro as np_backend
from ppl_reparam import pyro as pyro_backend

pytestmark = pytest.mark.usefixtures("quick_compiles")

SEEDS = (0, 1)


# --------------------------------------------------------------------------------------------- Pyro
def _pyro_step(case, make_elbo, force: bool, seed: int) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and gradients of one loss_and_grads call on fresh parameters."""
    pyro.clear_param_store()
    model, guide = corpus_pyro.fresh(case)
    if force:
        guide = pyro_backend.force_estimator(guide, "score")
    pyro.set_rng_seed(seed)
    loss = make_elbo().loss_and_grads(model, guide, *case.args, **case.kwargs)
    grads = {name: p.grad for name, p in pyro.get_param_store().named_parameters()}
    return loss, {name: g.clone() for name, g in grads.items() if g is not None}


def _assert_same(ours, theirs):
    (loss, grads), (loss_tg, grads_tg) = ours, theirs
    assert loss == pytest.approx(loss_tg, rel=1e-5, abs=1e-5)
    assert set(grads) == set(grads_tg)
    for name in grads:
        np.testing.assert_allclose(np.asarray(grads[name]), np.asarray(grads_tg[name]), rtol=2e-4, atol=1e-5,
                                   err_msg=name)


@pytest.mark.parametrize("case", corpus_pyro.CORPUS, ids=lambda c: c.name)
def test_pyro_score_function_elbo_equals_tracegraph(case):
    nesting = case.max_plate_nesting if case.max_plate_nesting is not None else math.inf
    for seed in SEEDS:
        ours = _pyro_step(case, lambda: pyro_backend.ScoreFunctionELBO(max_plate_nesting=nesting), False, seed)
        theirs = _pyro_step(case, lambda: TraceGraph_ELBO(max_plate_nesting=nesting), True, seed)
        _assert_same(ours, theirs)


VECTORIZED = [c for c in corpus_pyro.CORPUS if c.max_plate_nesting is not None]


@pytest.mark.parametrize("case", VECTORIZED, ids=lambda c: c.name)
def test_pyro_vectorized_particles_equal_tracegraph(case):
    """Three particles in Pyro's particle plate: the particle dim is one more plate. A model not written
    for it (reshapes, concatenations along batch dims) fails in both, with the same error type."""
    n = case.max_plate_nesting

    def ours():
        return pyro_backend.ScoreFunctionELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=n)

    def theirs():
        return TraceGraph_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=n)

    try:
        expected = _pyro_step(case, theirs, True, 0)
    except (ValueError, RuntimeError) as e:
        with pytest.raises(type(e)):
            _pyro_step(case, ours, False, 0)
        return
    _assert_same(_pyro_step(case, ours, False, 0), expected)


# ------------------------------------------------------------------------------------------ NumPyro
SCALED_SCORE = {"subsample_local_global": ("z", 100 / 5), "scaled_sites": ("z", 0.5)}
"""Cases with a scaled guide latent (subsampling, ``handlers.scale``): NumPyro's TraceGraph_ELBO
multiplies that site's score by the scale, so its parameters' gradients are the scale times ours."""

MASKED_SCORE = {"masked_sites": ("z", lambda case: np.asarray(case.args[1]))}
"""Cases with a masked guide latent: NumPyro's TraceGraph_ELBO masks its score, so its parameters'
gradients are 0 at the masked elements, where ours keep the score of the unmasked terms downstream."""

SITE_PARAMS = {"z": ("z_loc", "z_scale")}


def _numpyro_grads(case, seed: int):
    model, guide = corpus_numpyro.fresh(case)
    key = jax.random.PRNGKey(seed)
    forced = np_backend.force_estimator(guide, "score")
    svi = SVI(model, forced, Adam(0.1), NumPyroTraceGraph())
    params = svi.get_params(svi.init(key, *case.args, **case.kwargs))

    def loss(elbo, g):
        return lambda p: elbo.loss(key, p, model, g, *case.args, **case.kwargs)

    ours = jax.value_and_grad(loss(np_backend.ScoreFunctionELBO(), guide))(params)
    theirs = jax.value_and_grad(loss(NumPyroTraceGraph(), forced))(params)
    return ours, theirs, params


@pytest.mark.parametrize("case", corpus_numpyro.CORPUS, ids=lambda c: c.name)
def test_numpyro_score_function_elbo_equals_tracegraph(case):
    for seed in SEEDS:
        (loss, grads), (loss_tg, grads_tg), params = _numpyro_grads(case, seed)
        assert float(loss) == pytest.approx(float(loss_tg), rel=1e-5, abs=1e-5)
        for name in params:
            ours, theirs = np.asarray(grads[name]), np.asarray(grads_tg[name])
            if case.name in SCALED_SCORE and name in SITE_PARAMS[SCALED_SCORE[case.name][0]]:
                ours = ours * SCALED_SCORE[case.name][1]
            if case.name in MASKED_SCORE and name in SITE_PARAMS[MASKED_SCORE[case.name][0]]:
                kept = MASKED_SCORE[case.name][1](case)
                assert np.all(theirs[~kept] == 0) and np.any(ours[~kept] != 0)
                ours, theirs = ours[kept], theirs[kept]
            np.testing.assert_allclose(ours, theirs, rtol=2e-4, atol=1e-5, err_msg=name)


def test_corpus_covers_the_structures_named_in_the_issue():
    names = {c.name for c in corpus_pyro.CORPUS}
    for required in ("plates_same_dim", "plates_different_dims", "subsample_local_global", "gaussian_chain",
                     "sparse_gamma_def", "eight_schools", "ss_vae_m2_unlabelled", "ss_vae_m2_labelled",
                     "auto_normal_positive", "masked_sites"):
        assert required in names
