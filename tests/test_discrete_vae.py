"""The VAE with Bernoulli latents (ppl_reparam.models.discrete_vae): exact ELBO by enumeration, an
unbiased score-function gradient, the biased Concrete relaxation, training and `vae --model discrete`."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from statistics import NormalDist

import numpy as np
import pyro
import pytest
import torch
from torch.distributions.relaxed_bernoulli import LogitRelaxedBernoulli as TorchLogitRelaxedBernoulli

from ppl_reparam import cli, models, training
from ppl_reparam.data import load_dataset
from ppl_reparam.models.discrete_vae import LogitRelaxedBernoulli, exact_elbo, make_discrete_vae, relaxation
from ppl_reparam.pyro import gradient_variance
from ppl_reparam.pyro.specs import make_elbo
from ppl_reparam.pyro.training import CHECKPOINT, TrainingRun, VAEStudy, evaluate_elbo, make_run_elbo
from ppl_reparam.study import VAEConfig


def train_vae(config, out, **options):
    return training.train_vae(config, out, VAEStudy(models.pyro_vae), **options)


TINY = VAEConfig(
    model="discrete", estimators=("score+rloo:4", "relaxed+t=0.5"), compare=True, epochs=2, hidden=(16,),
    latent_dim=4, variance_reps=5, variance_every=1, test_particles=10, lr=3e-3,
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture
def tiny_model(digits):
    """2 latent bits (4 states, enumerable), 64-4-2, on 20 training digits; weights seeded."""
    pyro.set_rng_seed(0)
    model, guide = make_discrete_vae(hidden=(4,), latent_dim=2)
    return model, guide, torch.from_numpy(digits.train[:20])


def _exact_gradient(model, guide, x):
    """{param name: exact gradient of the loss -sum_i ELBO_i} by enumeration (creates the params)."""
    loss = -exact_elbo(model, guide, x).sum()
    names = list(pyro.get_param_store().keys())
    grads = torch.autograd.grad(loss, [pyro.param(n).unconstrained() for n in names])
    return {n: g.double().numpy() for n, g in zip(names, grads)}


def _z_scores(stats, exact):
    """(mean - exact) / standard error over every element with a positive standard error, and
    |exact| / standard error of the encoder's elements (the test's power)."""
    z, power = [], []
    for name, value in exact.items():
        s = stats[name]
        varies = s.standard_error > 0
        # elements that never vary are exact (pixels that are 0 in every image: gradient 0)
        np.testing.assert_allclose(s.mean[~varies], value[~varies], atol=1e-6)
        z.append(((s.mean - value)[varies] / s.standard_error[varies]).ravel())
        if name.startswith("encoder"):
            power.append((np.abs(value)[varies] / s.standard_error[varies]).ravel())
    return np.concatenate(z), np.concatenate(power)


def _bonferroni(n: int, level: float = 0.001) -> float:
    """Two-sided normal quantile for n simultaneous tests at family-wise level ``level``."""
    return NormalDist().inv_cdf(1 - level / (2 * n))


# -------------------------------------------------------------------------------------------- model
def test_param_names_sites_and_shapes(digits):
    model, guide = make_discrete_vae(hidden=(8,), latent_dim=3)
    x = torch.from_numpy(digits.train[:5])
    guide_trace = pyro.poutine.trace(guide).get_trace(x)
    trace = pyro.poutine.trace(pyro.poutine.replay(model, guide_trace)).get_trace(x)
    assert set(pyro.get_param_store().keys()) == {
        f"{part}.net.{i}.{kind}" for part in ("encoder", "decoder") for i in (0, 2) for kind in ("weight", "bias")
    }
    z = guide_trace.nodes["z"]["value"]
    assert z.shape == (5, 3) and set(z.unique().tolist()) <= {0.0, 1.0}
    assert trace.nodes["z"]["fn"].event_shape == (3,) and trace.nodes["x"]["fn"].event_shape == (64,)
    with relaxation(model, guide, 0.5):
        y = pyro.poutine.trace(guide).get_trace(x).nodes["z"]["value"]
    assert y.shape == (5, 3) and not set(y.unique().tolist()) <= {0.0, 1.0}  # real-valued logits
    assert model.temperature is None and guide.temperature is None  # restored


def test_logit_relaxed_bernoulli_matches_torch_and_stays_finite():
    """Same density as torch's where torch is finite; finite where torch's log(1 + e^d) overflows."""
    logits = torch.tensor([-3.0, 0.0, 2.5])
    ours, theirs = LogitRelaxedBernoulli(0.5, logits), TorchLogitRelaxedBernoulli(torch.tensor(0.5), logits=logits)
    y = torch.linspace(-20, 20, 41)[:, None]
    torch.testing.assert_close(ours.log_prob(y), theirs.log_prob(y))
    big = LogitRelaxedBernoulli(1.0, torch.tensor([200.0]))
    assert torch.isfinite(big.log_prob(torch.tensor([-100.0]))).all()
    assert big.rsample().item() > 100  # from the logits, not from clamped probabilities
    assert LogitRelaxedBernoulli.has_rsample and ours.expand((2, 3)).batch_shape == (2, 3)
    with pytest.raises(ValueError, match="temperature must be positive"):
        make_discrete_vae(temperature=0.0)


def test_pathwise_on_the_bits_names_the_site(tiny_model):
    model, guide, x = tiny_model
    with pytest.raises(ValueError, match="site 'z'.*needs rsample.*Bernoulli"):
        make_elbo("pathwise", max_plate_nesting=1).loss(model, guide, x)
    with pytest.raises(ValueError, match="dreg.*site 'z'"):
        make_elbo("iwae-dreg:3", max_plate_nesting=1).loss(model, guide, x)


# ------------------------------------------------------------------ exact ELBO, gradient and the bias
def test_monte_carlo_elbo_matches_enumeration(tiny_model):
    """evaluate_elbo (score ELBO's loss, 2000 particles) is within 4 standard errors of the exact
    ELBO from enumerating the 4 states (a false failure has probability 6e-5)."""
    model, guide, x = tiny_model
    with torch.no_grad():
        exact = exact_elbo(model, guide, x).mean().item()
    estimate, se = evaluate_elbo(model, guide, x, num_particles=2000, seed=0, estimator="score")
    assert abs(estimate - exact) < 4 * se, (estimate, exact, se)


def test_score_function_gradient_is_unbiased_against_enumeration(tiny_model):
    """200 estimates of 400 particles each (100 with the leave-one-out baseline, unbiased too):
    every element's mean is within the Bonferroni bound (family-wise level 0.001, about 4.8 for ~540
    elements) of the exact gradient's, in standard errors; and the test has power: some encoder
    element's exact gradient is over twice that bound from 0 (an estimator with mean 0 there, e.g.
    one that only detaches the sample, would fail)."""
    model, guide, x = tiny_model
    exact = _exact_gradient(model, guide, x)
    for spec in ("score:400", "score+rloo:100"):
        stats = gradient_variance(make_elbo(spec, max_plate_nesting=1), model, guide, x, num_reps=200, seed=1)
        z, power = _z_scores(stats, exact)
        assert np.abs(z).max() < _bonferroni(z.size), (spec, np.abs(z).max())
        assert power.max() > 2 * _bonferroni(z.size), (spec, power.max())


def test_relaxed_gradient_and_elbo_are_biased(tiny_model):
    """At the same parameters the relaxation's pathwise gradient (temperature 1, 200 x 100 samples)
    estimates another gradient: some element lies beyond the Bonferroni bound of the exact discrete
    one. Its objective differs too: the relaxed ELBO is more than 5 standard errors (1000 particles)
    from the exact discrete ELBO. With the temperature back to None the model is the discrete one."""
    model, guide, x = tiny_model
    exact = _exact_gradient(model, guide, x)
    with relaxation(model, guide, 1.0):
        stats = gradient_variance(make_elbo("pathwise:100", max_plate_nesting=1), model, guide, x, num_reps=200,
                                  seed=2)
        relaxed, se = evaluate_elbo(model, guide, x, num_particles=1000, seed=0)
    z, _ = _z_scores(stats, exact)
    assert np.abs(z).max() > _bonferroni(z.size)
    with torch.no_grad():
        discrete = exact_elbo(model, guide, x).mean().item()
    assert abs(relaxed - discrete) > 5 * se, (relaxed, discrete, se)


# --------------------------------------------------------------------------------------------- training
def test_training_improves_the_discrete_test_elbo(digits):
    """Three epochs of score+rloo:4 (lr 3e-3) must raise the test ELBO by more than 5 standard errors
    of the difference of the two estimates (independent particles: se = sqrt(se_0^2 + se_3^2))."""
    pyro.set_rng_seed(0)
    model, guide = make_discrete_vae(hidden=(32,), latent_dim=8)
    run = TrainingRun("score+rloo:4", model, guide, make_run_elbo("score+rloo:4"), lr=3e-3, seed=0)
    x_test = torch.from_numpy(digits.test)
    with run.active():
        before, se_before = evaluate_elbo(model, guide, x_test, 20, seed=1, estimator="score")
    for _ in range(3):
        run.train_epoch(digits.train, batch_size=100)
    with run.active():
        after, se_after = evaluate_elbo(model, guide, x_test, 20, seed=2, estimator="score")
    assert after - before > 5 * np.hypot(se_before, se_after), (before, after, se_before, se_after)


def test_every_run_is_evaluated_on_the_discrete_elbo(tmp_path):
    """Epoch 0: every run has the same weights and the test ELBO the same seed, so the relaxed run's
    test ELBO (of the discrete model) equals the score run's exactly, while its relaxed objective
    differs; after training, the relaxed run has both."""
    result = train_vae(replace(TINY, variance_reps=0, epochs=1), tmp_path)
    first = {h["estimator"]: h for h in result.history if h["epoch"] == 0}
    assert first["score+rloo:4"]["test_elbo"] == first["relaxed+t=0.5"]["test_elbo"]
    assert np.isnan(first["score+rloo:4"]["relaxed_test_elbo"])
    assert first["relaxed+t=0.5"]["relaxed_test_elbo"] != first["relaxed+t=0.5"]["test_elbo"]
    last = {h["estimator"]: h for h in result.history if h["epoch"] == 1}
    assert np.isfinite(last["relaxed+t=0.5"]["relaxed_test_elbo"]) and np.isfinite(last["relaxed+t=0.5"]["test_elbo"])


def assert_resumes_bit_for_bit(config, tmp_path):
    """Train ``config`` whole, and in two parts (one epoch, then resumed): the same history (seconds
    aside) and, run by run, the same parameters bit for bit. Returns both results."""
    full = train_vae(config, tmp_path / "full")
    train_vae(replace(config, epochs=1), tmp_path / "split")
    resumed = train_vae(config, tmp_path / "split", resume=True)
    keep = [{k: v for k, v in h.items() if k != "seconds"} for h in full.history]
    assert repr(keep) == repr([{k: v for k, v in h.items() if k != "seconds"} for h in resumed.history])
    for a, b in zip(full.runs, resumed.runs):
        assert set(a.scope["params"]) == set(b.scope["params"])
        assert all(torch.equal(a.scope["params"][k], b.scope["params"][k]) for k in a.scope["params"])
    return full, resumed


def test_discrete_resume_equals_uninterrupted(tmp_path):
    """Bitwise, with a relaxed run and stateful baselines (moving average; a learned network of the
    batch, with its Adam state) whose state lives in the checkpoint."""
    config = replace(TINY, estimators=("score+ma", "score+learned", "relaxed+t=0.5"), variance_every=2)
    _, resumed = assert_resumes_bit_for_bit(config, tmp_path)
    learned = resumed.runs[1].elbo.baseline
    assert set(learned.nets) == {"z"} and learned.nets["z"][0].in_features == 64  # features: the batch x


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_discrete_end_to_end(tmp_path, capsys):
    out = tmp_path / "d"
    args = ["vae", "--model", "discrete", "--compare", "--estimator", "score,score+rloo:4,iwae-vimco:3,relaxed+t=1",
            "--epochs", "1", "--hidden", "16", "--latent-dim", "4", "--variance-reps", "5", "--test-particles", "5",
            "--measure-on", "score", "--out", str(out), "--quiet"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "Bernoulli latent bits" in printed and "relaxed test ELBO" in printed and "other objective" not in printed
    with open(out / "history.csv") as f:
        history = list(csv.DictReader(f))
    assert list(history[0]) == ["epoch", "estimator", "train_elbo", "test_discrete_elbo_5particles", "test_elbo_se",
                                "relaxed_test_elbo", "relaxed_test_elbo_se", "seconds"]
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["model"] == "discrete" and results["config"]["measure_on"] == ["score"]
    comparisons = {(c["measured"], c["group"]): c for c in results["comparison"] if c["epoch"] == 1}
    assert {c["reference"] for c in comparisons.values()} == {"score"}
    assert comparisons["score+rloo:4", "encoder"]["same_objective"]
    assert not comparisons["relaxed+t=1", "encoder"]["same_objective"]
    assert not comparisons["iwae-vimco:3", "encoder"]["same_objective"]
    assert {r["trained_with"] for r in results["variance"]} == {"score"}
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / CHECKPOINT).is_file()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "discrete", "--estimator", "pathwise"], "site 'z': the pathwise (reparameterized) estimator"),
        (["--estimator", "relaxed+t=0.5"], "applies to the discrete model"),
        (["--model", "discrete", "--estimator", "relaxed"], "relaxed+t=T"),
        (["--model", "discrete", "--estimator", "relaxed+t=0"], "temperature must be positive"),
        (["--model", "discrete", "--estimator", "relaxed+t=hot"], "is not a number"),
        (["--model", "discrete", "--compare", "--estimator", "score,score+ma", "--measure-on", "pathwise"],
         "not among the trained estimators"),
    ],
)
def test_discrete_cli_errors(tmp_path, capsys, extra, message):
    assert cli.main(["vae", "--epochs", "1", "--hidden", "8", "--out", str(tmp_path), "--quiet", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ppl-reparam vae: error: ") and message in err
    assert not (tmp_path / CHECKPOINT).exists()  # nothing written before the error
