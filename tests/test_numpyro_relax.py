"""RELAX as a per-site estimator of the NumPyro ELBOs (``RelaxELBO``, ``"relax"``; as
tests/test_pyro_relax.py): the mean is the exact gradient (enumeration) at Bernoulli and Categorical sites
whatever the control, in a plate with ``to_event`` and with a cost that couples a plate's elements;
before learning it is REBAR draw for draw; the gradient the loss gives the control is that of the squared
norm of the estimate (central differences); fitting lowers the variance; SVI trains the control; a VAE
study with a RELAX run resumes bit for bit; the errors.

Means must lie within 5.5 standard errors of the exact gradient (two-sided normal tail 3.8e-8)."""

import itertools
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import SVI, Trace_ELBO
from test_numpyro_rebar import LOGITS, PRIOR, W, exact_gradient, guide, model

from ppl_reparam.models.toy_gaussian_numpyro import ToyGaussian
from ppl_reparam.numpyro import RebarELBO, RelaxELBO, ScoreFunctionELBO, force_estimator, gradient_variance
from ppl_reparam.numpyro.specs import make_elbo
from ppl_reparam.numpyro.variance import init_params

Z = 5.5
K = 4
TABLE = jnp.array([[0.3, -1.2, 2.0, 0.7], [1.5, 0.1, -0.8, 0.4]])
CAT_LOGITS = jnp.array([[0.3, -0.2, 0.5, 0.0], [-0.6, 0.4, 0.1, 0.2]])
CAT_PRIOR = jnp.array([0.1, 0.2, 0.3, 0.4])


def categorical_model():
    with numpyro.plate("rows", 2):
        b = numpyro.sample("b", dist.Categorical(CAT_PRIOR))
        value = jnp.take_along_axis(TABLE, b[:, None], -1)[:, 0]
    numpyro.factor("f", -(value.sum() ** 2))  # outside the plate: the rows' costs are shared


def categorical_guide():
    logits = numpyro.param("l", CAT_LOGITS)
    with numpyro.plate("rows", 2):
        numpyro.sample("b", dist.Categorical(logits=logits))


def categorical_exact_gradient():
    """d/dl of E_q[f(b) + log q(b) - log p(b)] by enumerating the 16 pairs of categories."""
    pairs = jnp.array(list(itertools.product(range(K), repeat=2)))  # (16, 2)

    def objective(logits):
        log_q = dist.Categorical(logits=logits).log_prob(pairs).sum(-1)
        log_p = dist.Categorical(CAT_PRIOR).log_prob(pairs).sum(-1)
        f = jnp.take_along_axis(TABLE, pairs.T, -1).T.sum(-1) ** 2
        return jnp.sum(jnp.exp(log_q) * (f + log_q - log_p))

    return np.asarray(jax.grad(objective)(CAT_LOGITS))


def perturbed(elbo, model, guide, seed=0):
    """The params of ``elbo.with_controls(guide)`` with every control param moved away from its start,
    so that the network's output is not zero and eta, lambda are not REBAR's."""
    values, _ = init_params(model, elbo.with_controls(guide), jax.random.PRNGKey(0))
    keys = iter(jax.random.split(jax.random.PRNGKey(100 + seed), len(values)))
    return {k: v + 0.7 * jax.random.normal(next(keys), jnp.shape(v)) if k.startswith("relax.") else v
            for k, v in values.items()}


def assert_unbiased(stats, exact):
    mean, se = np.asarray(stats.mean), np.sqrt(np.asarray(stats.variance) / stats.num_reps)
    assert np.all(np.abs(mean - exact) <= Z * se), (mean, exact, se)


@pytest.mark.parametrize("options", [{}, {"analytic_kl": True}, {"num_particles": 3}])
def test_bernoulli_mean_is_the_exact_gradient(options):
    elbo = RelaxELBO(**options)
    params = perturbed(elbo, model, guide)
    stats = gradient_variance(elbo, model, guide, params=params, num_reps=1500, seed=2)
    assert list(stats) == ["l"]  # the controls are used, not measured
    assert_unbiased(stats["l"], exact_gradient())


def test_categorical_mean_is_the_exact_gradient():
    elbo = RelaxELBO()
    params = perturbed(elbo, categorical_model, categorical_guide)
    assert {k for k in params if k.startswith("relax.")} == {"relax.b.w1", "relax.b.b1", "relax.b.w2", "relax.b.b2"}
    assert params["relax.b.w1"].shape == (K, 32)  # one category vector per row
    stats = gradient_variance(elbo, categorical_model, categorical_guide, params=params, num_reps=1500, seed=3)
    assert_unbiased(stats["l"], categorical_exact_gradient())


def test_chosen_per_site_under_another_elbo():
    elbo = ScoreFunctionELBO()
    forced = force_estimator(categorical_guide, "relax", sites=["b"])
    params = perturbed(elbo, categorical_model, forced, seed=1)
    stats = gradient_variance(elbo, categorical_model, elbo.with_controls(forced), params=params, num_reps=1500,
                              seed=4)
    assert_unbiased(stats["l"], categorical_exact_gradient())


def test_before_learning_it_is_rebar():
    """The controls start at REBAR's (the network's output layer at zero): the same estimates, key for key."""
    relax = gradient_variance(RelaxELBO(), model, guide, num_reps=50, seed=5)["l"]
    rebar = gradient_variance(RebarELBO(), model, guide, num_reps=50, seed=5)["l"]
    np.testing.assert_array_equal(relax.mean, rebar.mean)
    np.testing.assert_array_equal(relax.variance, rebar.variance)


def _float64(categorical):
    """Model, guide and exact setting of the tests above, built with float64 arrays (under enable_x64)."""
    if not categorical:
        w, logits = jnp.asarray(W, jnp.float64), jnp.asarray(LOGITS, jnp.float64)

        def m():
            with numpyro.plate("rows", 2):
                b = numpyro.sample("b", dist.Bernoulli(jnp.full((3,), PRIOR, jnp.float64)).to_event(1))
                numpyro.factor("f", -(((b @ w) ** 2).sum(-1) + 0.5 * b.sum(-1)))

        def g():
            with numpyro.plate("rows", 2):
                numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("l", logits)).to_event(1))

        return m, g
    table, prior = jnp.asarray(TABLE, jnp.float64), jnp.asarray(CAT_PRIOR, jnp.float64)

    def m():
        with numpyro.plate("rows", 2):
            b = numpyro.sample("b", dist.Categorical(prior))
            value = jnp.take_along_axis(table, b[:, None], -1)[:, 0]
        numpyro.factor("f", -(value.sum() ** 2))

    def g():
        with numpyro.plate("rows", 2):
            numpyro.sample("b", dist.Categorical(logits=numpyro.param("l", jnp.asarray(CAT_LOGITS, jnp.float64))))

    return m, g


@pytest.mark.parametrize("categorical, options", [(False, {}), (False, {"analytic_kl": True}), (True, {}),
                                                  (False, {"num_particles": 2})])
def test_the_control_learns_from_the_gradient_of_the_squared_estimate(categorical, options):
    """On fixed draws (one key), the gradient the loss gives each control param is the derivative of the
    squared norm of the guide's estimate in it (central differences in float64: error about h^2 = 1e-12
    and rounding 1e-16 / h)."""
    with jax.enable_x64(True):
        m, g = _float64(categorical)
        elbo = RelaxELBO(relax_hidden=3, **options)
        guide_ = elbo.with_controls(g)
        params = {k: jnp.asarray(v, jnp.float64) for k, v in perturbed(elbo, m, g).items()}
        key = jax.random.PRNGKey(6)

        def loss(p):
            return elbo.loss(key, p, m, guide_)

        grads = jax.jit(jax.grad(loss))(params)

        squared = jax.jit(lambda p: jnp.sum(jax.grad(loss)(p)["l"] ** 2))

        def squared_estimate(p):
            return float(squared(p))

        h = 1e-6
        checked = 0
        for name in (k for k in params if k.startswith("relax.")):
            assert grads[name].dtype == jnp.float64
            flat = np.asarray(params[name]).reshape(-1)
            for i in range(min(flat.size, 4)):
                values = []
                for step in (h, -h):
                    moved = flat.copy()
                    moved[i] += step
                    values.append(squared_estimate({**params, name: jnp.asarray(moved.reshape(params[name].shape))}))
                numeric = (values[0] - values[1]) / (2 * h)
                analytic = float(np.asarray(grads[name]).reshape(-1)[i])
                assert abs(analytic - numeric) <= 1e-6 * (1 + abs(numeric)), (name, i, analytic, numeric)
                checked += abs(numeric) > 1e-3
        assert checked >= 4  # derivatives that are not all zero


def test_fitting_lowers_the_variance_and_gradient_variance_fits_with_relax_fit():
    """150 steps of ``fit_controls`` at lr 0.01 (the guide's params held) bring the summed variance of the
    guide's gradient below 0.85 of REBAR's (at 1,000 estimates it is known to about 5 per cent); and
    ``relax_fit=N`` (spec ``relax+fit=N``) is that fit inside ``gradient_variance``, from the seed."""
    rebar = np.sum(gradient_variance(RebarELBO(), model, guide, num_reps=1000, seed=11)["l"].variance)
    elbo = RelaxELBO()
    params, _ = init_params(model, elbo.with_controls(guide), jax.random.PRNGKey(11))
    fitted = elbo.fit_controls(jax.random.PRNGKey(12), params, model, elbo.with_controls(guide), steps=150, lr=0.01)
    np.testing.assert_array_equal(fitted["l"], params["l"])
    assert float(fitted["relax.b.eta"]) != 1.0
    after = np.sum(gradient_variance(elbo, model, guide, params=fitted, num_reps=1000, seed=11)["l"].variance)
    assert after < 0.85 * rebar, (after, rebar)

    # a guide whose trained controls are substituted (a VAE study's RELAX run measured on another run's
    # parameters) is measured with them, as with the controls in params
    trained = numpyro.handlers.substitute(elbo.with_controls(guide), data=fitted)
    substituted = gradient_variance(elbo, model, trained, params={"l": fitted["l"]}, num_reps=20, seed=14)["l"]
    np.testing.assert_array_equal(
        substituted.mean, gradient_variance(elbo, model, guide, params=fitted, num_reps=20, seed=14)["l"].mean)

    fit = make_elbo("relax+fit=20")
    assert fit == RelaxELBO(relax_fit=20)
    key = jax.random.PRNGKey(13)
    by_hand = elbo.fit_controls(jax.random.fold_in(key, 1), params, model, elbo.with_controls(guide), steps=20)
    inside = gradient_variance(fit, model, guide, params=params, num_reps=20, seed=key)["l"]
    direct = gradient_variance(elbo, model, guide, params=by_hand, num_reps=20, seed=key)["l"]
    np.testing.assert_array_equal(inside.mean, direct.mean)


def test_svi_trains_the_control_beside_the_guide():
    elbo = RelaxELBO()
    svi = SVI(model, elbo.with_controls(guide), numpyro.optim.Adam(0.01), elbo)
    state = svi.init(jax.random.PRNGKey(9))
    start = svi.get_params(state)
    assert sorted(k for k in start if k.startswith("relax.")) == [
        "relax.b.b1", "relax.b.b2", "relax.b.eta", "relax.b.log_temperature", "relax.b.w1", "relax.b.w2"]
    update = jax.jit(svi.update)
    for _ in range(5):
        state, loss = update(state)
    assert np.isfinite(float(loss))
    trained = svi.get_params(state)
    assert all(not np.array_equal(trained[k], start[k]) for k in ("l", "relax.b.eta", "relax.b.w2"))
    assert elbo.with_controls(guide) is elbo.with_controls(guide)  # compiled code is shared
    assert elbo.with_controls(elbo.with_controls(guide)) is elbo.with_controls(guide)


def test_a_vae_study_with_relax_resumes_bit_for_bit(tmp_path):
    """``vae --backend numpyro --model discrete`` trains a RELAX run beside another: its control is in its
    run's parameters (checkpointed; resumed bit for bit). (Measuring RELAX with a trained control on other
    parameters, as the study does, is in test_fitting_lowers_the_variance_and_gradient_variance_fits_with_relax_fit.)"""
    from test_numpyro_discrete_vae import SMALL, _without_timing, train_numpyro

    config = replace(SMALL, estimators=("score+ma", "relax"), variance_reps=0)
    full = train_numpyro(config, tmp_path / "full")
    train_numpyro(replace(config, epochs=1), tmp_path / "split")
    resumed = train_numpyro(config, tmp_path / "split", resume=True)
    for a, b in zip(full.runs, resumed.runs, strict=True):
        assert _without_timing(a.history) == _without_timing(b.history)
        for x, y in zip(jax.tree.leaves(a.state), jax.tree.leaves(b.state), strict=True):
            np.testing.assert_array_equal(x, y)
    score, relax = (set(r.params) for r in full.runs)
    assert not any(n.startswith("relax.") for n in score)
    assert {n for n in relax if n.startswith("relax.")} == {
        "relax.z.eta", "relax.z.log_temperature", "relax.z.w1", "relax.z.b1", "relax.z.w2", "relax.z.b2"}


def test_errors():
    toy = ToyGaussian(2.0)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="site 'x': RELAX relaxes Bernoulli, Categorical or OneHotCategorical"
                       " draws, and Normal is none of them"):
        RelaxELBO().loss(key, {}, toy.model, toy.guide)
    with pytest.raises(ValueError, match="RELAX estimator is differentiated only by this package's ELBOs"):
        Trace_ELBO().loss(key, {"l": LOGITS}, model, force_estimator(guide, "relax"))
    with pytest.raises(ValueError, match="baselines apply to the score function"):
        RelaxELBO(baseline="ma")
    with pytest.raises(ValueError, match="relax_hidden must be a positive number of hidden units, got 0"):
        RelaxELBO(relax_hidden=0)
    with pytest.raises(ValueError, match="relax_fit must be a number of steps"):
        RelaxELBO(relax_fit=-1)
    with pytest.raises(ValueError, match=r"site 'b': RELAX's control lives in NumPyro params that the guide "
                       r"declares \(relax.b.w1, ...\), and this guide declares none: train with "
                       r"SVI\(model, elbo.with_controls\(guide\)"):
        RelaxELBO().loss(key, {"l": LOGITS}, model, guide)
    given = numpyro.handlers.substitute(guide, data={"b": jnp.ones((2, 3))})
    elbo = RelaxELBO()
    params = init_params(model, elbo.with_controls(guide), key)[0]
    with pytest.raises(ValueError, match="site 'b': the RELAX estimator needs the draw its own sampler made"):
        jax.grad(lambda p: elbo.loss(key, p, model, elbo.with_controls(given)))(params)
    with pytest.raises(ValueError, match="fit_controls: params hold no RELAX control"):
        elbo.fit_controls(key, {"l": LOGITS}, model, guide, steps=3)
    with pytest.raises(ValueError, match="steps must be a number of steps"):
        elbo.fit_controls(key, params, model, elbo.with_controls(guide), steps=-1)
    broken = {**params, "relax.b.eta": jnp.asarray(jnp.nan)}
    with pytest.raises(ValueError, match="RELAX's control got a NaN or infinite value while fitting"):
        elbo.fit_controls(key, broken, model, elbo.with_controls(guide), steps=2)
    wide = {**params, "relax.b.w1": jnp.zeros((5, 32))}
    with pytest.raises(ValueError, match="site 'b': RELAX's control takes 5 numbers per batch element"):
        elbo.loss(key, wide, model, elbo.with_controls(guide))


def _compiled_loss_and_grads(elbo, model, guide, params, args, kwargs):
    def loss(p):
        return elbo.loss(jax.random.PRNGKey(1), p, model, guide, *args, **kwargs)

    return jax.jit(jax.value_and_grad(loss))(params)


def test_the_corpus_discrete_sites_run():
    """The NumPyro corpus models with Bernoulli or Categorical guide sites (named here: finding them by
    tracing every case's guide costs 13 s), those sites forced to RELAX: finite loss and gradients under
    SVI's gradient, the controls declared and given a gradient."""
    import corpus_numpyro
    from numpyro.handlers import seed, trace

    from ppl_reparam.numpyro.handlers import leaf_path
    from ppl_reparam.numpyro.measure_valued import family_of

    discrete = {"bernoulli_and_normal", "five_bernoullis", "markov_bernoulli_sequence", "hmm_categorical",
                "categorical_normal_mix", "scaled_sites", "ss_vae_m2_unlabelled"}
    ran = []
    for case in (c for c in corpus_numpyro.CORPUS if c.name in discrete):
        model, guide_ = corpus_numpyro.fresh(case)
        tr = trace(seed(guide_, 0)).get_trace(*case.args, **case.kwargs)
        sites = [n for n, s in tr.items() if s["type"] == "sample" and not s["is_observed"]
                 and family_of(leaf_path(s["fn"])[0]) in ("Bernoulli", "Categorical")]
        assert sites, case.name
        elbo = ScoreFunctionELBO()
        controlled = elbo.with_controls(force_estimator(guide_, "relax", sites=sites))
        params, _ = init_params(model, controlled, jax.random.PRNGKey(0), *case.args, **case.kwargs)
        loss, grads = _compiled_loss_and_grads(elbo, model, controlled, params, case.args, case.kwargs)
        assert np.isfinite(float(loss)), case.name
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads.values()), case.name
        controls = [n for n in grads if n.startswith("relax.")]
        assert len(controls) >= 4 * len(sites), (case.name, controls)
        assert any(float(jnp.abs(grads[n]).sum()) > 0 for n in controls), case.name
        ran.append(case.name)
    assert set(ran) == discrete, ran
