"""``estimator="auto"`` in NumPyro: ``choose_site_estimators`` picks pathwise on the toy and never the raw
score function on a discrete site, the same for the same seed; the resolved guide trains; an unresolved
``"auto"`` site is an error that says what to do."""

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import SVI
from numpyro.optim import Adam

from ppl_reparam.models.toy_gaussian_numpyro import ToyGaussian
from ppl_reparam.numpyro import PathwiseELBO, ScoreFunctionELBO, choose_site_estimators, force_estimator


def test_the_toy_picks_pathwise_and_says_why():
    # 200 estimates per candidate (see tests/test_pyro_auto.py for the margin)
    toy = ToyGaussian(2.0)
    resolved = choose_site_estimators(PathwiseELBO(analytic_kl=True), toy.model, force_estimator(toy.guide, "auto"),
                                      num_reps=200)
    assert resolved.estimators == {"x": "pathwise"}
    assert sorted(r["spec"] for r in resolved.choices["x"].ranking) == ["measure", "pathwise", "score"]
    assert resolved.log[0]["reason"].startswith("pathwise: the lowest variance x evaluations of theta")


def _bits():
    def model():
        with numpyro.plate("p", 3):
            z = numpyro.sample("z", dist.Bernoulli(0.5))
            numpyro.factor("f", -10 * (z - 0.3) ** 2)

    def guide():
        with numpyro.plate("p", 3):
            numpyro.sample("z", dist.Bernoulli(logits=numpyro.param("l", jnp.zeros(3))), infer={"estimator": "auto"})

    return model, guide


def test_a_discrete_site_never_takes_the_raw_score_function_and_the_choice_trains():
    model, guide = _bits()
    resolved = choose_site_estimators(ScoreFunctionELBO(), model, guide, num_reps=50, seed=3)
    again = choose_site_estimators(ScoreFunctionELBO(), model, guide, num_reps=50, seed=3)
    assert resolved.estimators == again.estimators == {"z": "measure"}
    assert resolved.log == again.log
    svi = SVI(model, resolved, Adam(0.1), ScoreFunctionELBO())
    result = svi.run(jax.random.PRNGKey(0), 100, progress_bar=False)
    # E[f] = 10 (0.49 p + 0.09 (1 - p)) falls with p: the logits go down
    assert jnp.all(result.params["l"] < -2)


def test_an_unresolved_auto_site_says_what_to_do():
    model, guide = _bits()
    with pytest.raises(ValueError, match="choose_site_estimators"):
        ScoreFunctionELBO().loss(jax.random.PRNGKey(0), {}, model, guide)


def test_a_corpus_model_with_every_site_auto():
    """A discrete + continuous corpus model with every site "auto": resolved, and a finite training step."""
    import math

    import corpus_numpyro

    (case,) = [c for c in corpus_numpyro.CORPUS if c.name == "bernoulli_and_normal"]
    model, guide = corpus_numpyro.fresh(case)
    resolved = choose_site_estimators(ScoreFunctionELBO(), model, force_estimator(guide, "auto"), *case.args,
                                      num_reps=5, **case.kwargs)
    assert set(resolved.estimators) == {"b", "z"} and resolved.estimators["b"] != "pathwise"
    svi = SVI(model, resolved, Adam(0.01), ScoreFunctionELBO())
    state = svi.init(jax.random.PRNGKey(0), *case.args, **case.kwargs)
    _, loss = svi.update(state, *case.args, **case.kwargs)
    assert math.isfinite(float(loss))
