"""``estimator="auto"`` in the Pyro ELBOs: the toy picks pathwise, a discrete site never the raw score
function; the choice leaves the draws, the parameters and the optimizer alone; re-checks; errors."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from ppl_reparam.models.toy_gaussian import ToyGaussian
from ppl_reparam.pyro import JitPathwiseELBO, PathwiseELBO, ScoreFunctionELBO, force_estimator


def test_the_toy_picks_pathwise_and_says_why():
    # 200 estimates per candidate: the score function's variance is 22x pathwise's, the measure-valued
    # one's 1.1x at 3 runs of guide and model an estimate; a wrong pick needs an F(199, 199) ratio below
    # 1/3.3 (tail < 1e-12).
    pyro.clear_param_store()
    toy = ToyGaussian(2.0)
    elbo = PathwiseELBO(analytic_kl=True, auto_reps=200)
    elbo.loss_and_grads(toy.model, force_estimator(toy.guide, "auto"))
    assert elbo.auto == {"x": "pathwise"}
    choice = elbo.auto_choices["x"]
    assert [r["spec"] for r in choice.ranking][0] == "pathwise"
    assert sorted(r["spec"] for r in choice.ranking) == ["measure", "pathwise", "score"]
    (row,) = elbo.auto_log
    assert row["step"] == 0 and row["site"] == "x"
    assert row["reason"].startswith("pathwise: the lowest variance x evaluations of theta")


def _bits():
    # nothing random downstream of the bits: the measure-valued gradient f(1) - f(0) is exact (variance
    # 0), so the choice does not hang on timings
    def model():
        with pyro.plate("p", 3):
            z = pyro.sample("z", dist.Bernoulli(0.5))
            pyro.factor("f", -10 * (z - 0.3) ** 2)

    def guide():
        with pyro.plate("p", 3):
            pyro.sample("z", dist.Bernoulli(logits=pyro.param("l", torch.zeros(3))), infer={"estimator": "auto"})

    return model, guide


def test_a_discrete_site_never_takes_the_raw_score_function_and_is_rechecked():
    pyro.clear_param_store()
    model, guide = _bits()
    elbo = ScoreFunctionELBO(auto_every=2, auto_reps=100)
    for _ in range(5):
        elbo.loss_and_grads(model, guide)
    assert [(r["step"], r["site"]) for r in elbo.auto_log] == [(0, "z"), (2, "z"), (4, "z")]
    assert all(r["chosen"] == "measure" for r in elbo.auto_log)
    assert "score" in elbo.auto_log[0]["reason"] and "pathwise" not in elbo.auto_log[0]["reason"]


def test_choosing_leaves_the_draws_parameters_and_optimizer_alone():
    # The first step of an "auto" ELBO equals the step of the chosen estimator forced by hand, from the
    # same seed: the measurement restored the random state and touched no parameter or gradient.
    toy = ToyGaussian(2.0, learn_scale=True)
    grads = []
    for guide, elbo in [
        (force_estimator(toy.guide, "auto"), PathwiseELBO(analytic_kl=True, auto_reps=200)),
        (force_estimator(toy.guide, "pathwise"), PathwiseELBO(analytic_kl=True)),
    ]:
        pyro.clear_param_store()
        optim = Adam({"lr": 0.1})
        svi = SVI(toy.model, guide, optim, elbo)
        pyro.set_rng_seed(7)
        losses = [svi.step() for _ in range(3)]
        grads.append((losses, {k: v.detach().clone() for k, v in pyro.get_param_store().items()}))
    assert grads[0][0] == grads[1][0]
    for k in grads[0][1]:
        assert torch.equal(grads[0][1][k], grads[1][1][k])


def test_an_inapplicable_candidate_is_left_out_with_its_error():
    def model():
        pyro.sample("w", dist.Gamma(2.0, 1.0))

    def guide():
        c = pyro.param("c", torch.tensor(2.0), constraint=constraints.positive)
        pyro.sample("w", dist.Gamma(c, 1.0), infer={"estimator": "auto"})

    pyro.clear_param_store()
    elbo = PathwiseELBO(auto_reps=20)
    elbo.loss_and_grads(model, guide)
    assert elbo.auto["w"] in ("pathwise", "score")
    assert "measure not applicable: site 'w': Gamma's concentration" in elbo.auto_log[0]["reason"]


def test_errors():
    toy = ToyGaussian(2.0)
    with pytest.raises(ValueError, match="site 'x' asks for estimator 'auto', which only this package's ELBOs"):
        Trace_ELBO().differentiable_loss(toy.model, force_estimator(toy.guide, "auto"))
    with pytest.raises(ValueError, match="auto_every re-chooses estimators"):
        JitPathwiseELBO(auto_every=10)
    with pytest.raises(ValueError, match="auto_every must be a positive"):
        PathwiseELBO(auto_every=0)
    with pytest.raises(ValueError, match="auto_reps must be at least"):
        PathwiseELBO(auto_reps=2)
    with pytest.raises(ValueError, match="unknown estimator 'automatic'.*'auto' \\(chosen by measurement\\)"):
        force_estimator(toy.guide, "automatic")


def test_the_corpus_runs_with_every_site_auto():
    """Every corpus model (plates, subsampling, Markov chains, AutoGuides, Pyro's examples) with every
    guide site "auto": two finite steps, each site given one of the estimators that apply there."""
    import math

    import corpus_pyro

    for case in corpus_pyro.CORPUS:
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        model, guide = corpus_pyro.fresh(case)
        nesting = {} if case.max_plate_nesting is None else {"max_plate_nesting": case.max_plate_nesting}
        elbo = ScoreFunctionELBO(auto_reps=5, **nesting)
        for _ in range(2):
            loss = elbo.loss_and_grads(model, force_estimator(guide, "auto"), *case.args, **case.kwargs)
            assert math.isfinite(loss), case.name
        assert elbo.auto and set(elbo.auto.values()) <= {"pathwise", "score", "measure"}, case.name
        assert [r["site"] for r in elbo.auto_log] == list(elbo.auto), case.name
