"""``ppl-reparam compare``: every model end to end on small settings in both backends, the measurement's
guarantees (same parameters, baseline warm-up, checkpoints), parity between the backends, and the errors."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pyro
import pytest
import torch
from closed_form import CONFIDENCE, check_against_closed_form
from jax import random
from numpyro.handlers import seed, trace

from ppl_reparam import models, training
from ppl_reparam.analytic import gradient_moments
from ppl_reparam.cli import main
from ppl_reparam.cli.compare import BACKENDS, _numpyro_toy_target, _vae_target, measure, parse_estimators, target_of
from ppl_reparam.numpyro.training import VAEStudy as NumPyroVAEStudy
from ppl_reparam.numpyro.training import compiled_gradient_variance, make_run_elbo, warm_up_baseline
from ppl_reparam.pyro.training import VAEStudy
from ppl_reparam.pyro.variance import trace_params
from ppl_reparam.study import VAEConfig

pytestmark = pytest.mark.usefixtures("quick_compiles")

PNG = b"\x89PNG\r\n\x1a\n"


def _rows(out):
    with open(out / "compare.csv") as f:
        return list(csv.DictReader(f))


def test_toy_end_to_end(tmp_path, capsys):
    """On the toy at theta = 2 the per-sample gradients of pathwise (2x) and sticking the landing
    (2 theta + eps) are normal with variances 4 and 1; the sample variance of R = 200 normal draws
    has relative standard deviation sqrt(2 / (R - 1)) = 0.1, so each must lie within 5 of those
    (50%) of the truth."""
    out = tmp_path / "toy"
    code = main(["compare", "--model", "toy", "--estimators", "score+akl,pathwise,pathwise+stl,iwae-dreg:5",
                 "--reps", "200", "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "toy Gaussian at theta = 2" in printed and "per-sample ratio to reference" in printed
    rows = {r["measured"]: r for r in _rows(out)}
    assert list(rows) == ["score+akl", "pathwise", "pathwise+stl", "iwae-dreg"]
    assert {r["group"] for r in rows.values()} == {"theta"}
    tolerance = 5 * np.sqrt(2 / 199)
    for spec, truth in (("pathwise", 4.0), ("pathwise+stl", 1.0)):
        assert abs(float(rows[spec]["per_sample_variance"]) / truth - 1) < tolerance, rows[spec]
    assert rows["iwae-dreg"]["particles"] == "5"
    saved = json.loads((out / "compare.json").read_text())
    assert saved["model"] == "toy" and saved["reps"] == 200 and len(saved["rows"]) == 4
    by = {c["measured"]: c for c in saved["comparison"]}
    assert set(by) == {"score+akl", "pathwise+stl", "iwae-dreg"} and not by["iwae-dreg"]["same_objective"]
    for row in saved["rows"]:
        assert row["variance_x_seconds"] == pytest.approx(row["total_variance"] * row["seconds_per_estimate"])
    assert (out / "compare.md").read_text().startswith("Gradient variance on toy Gaussian")
    assert (out / "compare.png").read_bytes()[:8] == PNG


def test_vae_end_to_end(tmp_path, capsys):
    out = tmp_path / "vae"
    assert main(["compare", "--model", "vae", "--estimators", "pathwise,score,iwae:3", "--reps", "5",
                 "--batch-size", "20", "--out", str(out), "--quiet"]) == 0
    assert "gaussian VAE 64-128-8 at its initial weights (seed 0)" in capsys.readouterr().out
    rows = _rows(out)
    assert [(r["measured"], r["group"]) for r in rows] == [
        (s, g) for s in ("pathwise", "score", "iwae:3") for g in ("encoder", "decoder")
    ]
    assert (out / "compare.png").read_bytes()[:8] == PNG


def test_discrete_end_to_end_on_the_same_parameters(tmp_path, capsys):
    """Every spec, the moving-average baseline's warm-up included, leaves the parameters as they were
    (so each was measured at the same values)."""
    out = tmp_path / "discrete"
    assert main(["compare", "--model", "discrete", "--estimators", "score,score+ma,iwae-vimco:3,relaxed+t=0.5",
                 "--reps", "5", "--batch-size", "20", "--warmup", "20", "--out", str(out), "--quiet"]) == 0
    assert "discrete VAE 64-128-16" in capsys.readouterr().out
    assert {r["measured"] for r in _rows(out)} == {"score", "score+ma", "iwae-vimco:3", "relaxed+t=0.5"}
    target = _vae_target("discrete", seed=0, batch_size=20, checkpoint=None, run_name=None)
    specs = parse_estimators("score+ma,relaxed+t=0.5", "discrete")
    with target.active():
        trace_params(target.model, target.guide, *target.args, **target.kwargs)  # creates them in the scope
        before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    measure(target, specs, reps=5, seed=0, warmup=20)
    with target.active():
        after = dict(pyro.get_param_store().items())
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_baseline_warm_up_fits_the_moving_average():
    """Unwarmed, the moving average is 0, so score+ma is the plain score function; warmed up at these
    parameters, its per-sample variance's interval lies wholly below the unwarmed one's. Another spec's
    warm-up does not change the score function's draws (each spec has its own seed)."""
    target = _vae_target("discrete", seed=0, batch_size=20, checkpoint=None, run_name=None)
    specs = parse_estimators("score,score+ma", "discrete")
    cold, _ = measure(target, specs, reps=20, seed=0, warmup=0)
    warm, _ = measure(target, specs, reps=20, seed=0, warmup=200)
    cold = {r["measured"]: r for r in cold if r["group"] == "encoder"}
    warm = {r["measured"]: r for r in warm if r["group"] == "encoder"}
    assert warm["score+ma"]["per_sample_ci_high"] < cold["score+ma"]["per_sample_ci_low"]
    assert warm["score"]["total_variance"] == cold["score"]["total_variance"]


def test_from_a_checkpoint(tmp_path, capsys):
    """At a `vae` run's trained weights: its own spec keeps the trained baseline (no warm-up)."""
    config = VAEConfig(estimators=("pathwise", "score+ma"), compare=True, epochs=1, hidden=(16,), latent_dim=4,
                       variance_reps=0, test_particles=5)
    result = training.train_vae(config, tmp_path / "run", VAEStudy(models.pyro_vae))
    trained = result.runs[1].elbo.baseline.averages["z"]
    target = _vae_target("vae", seed=0, batch_size=20, checkpoint=str(tmp_path / "run"), run_name="score+ma")
    assert torch.equal(target.trained["score+ma"].baseline.averages["z"], trained)
    assert "run score+ma of" in target.description and "at epoch 1" in target.description
    out = tmp_path / "cmp"
    assert main(["compare", "--model", "vae", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"),
                 "--run", "score+ma", "--estimators", "pathwise,score+ma", "--reps", "5", "--out", str(out),
                 "--quiet"]) == 0
    assert "gaussian VAE 64-16-4, run score+ma" in capsys.readouterr().out
    with pytest.raises(ValueError, match="give --model vae"):
        _vae_target("discrete", 0, 20, str(tmp_path / "run"), None)
    with pytest.raises(ValueError, match=r"--run 'score'.*\['pathwise', 'score\+ma'\]"):
        _vae_target("vae", 0, 20, str(tmp_path / "run"), "score")
    with pytest.raises(ValueError, match="checkpoint.pt of the pyro backend; give --backend pyro .* numpyro backend"):
        target_of("numpyro", "vae", 0, 20, 2.0, str(tmp_path / "run"), None)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "discrete", "--estimators", "score,pathwise"],
         "site 'z': the pathwise (reparameterized) estimator needs rsample"),
        (["--model", "discrete", "--estimators", "iwae-dreg:3"], "IWAE(estimator='dreg') needs reparameterized"),
        (["--model", "vae", "--estimators", "pathwise,relaxed+t=0.5"], "applies to the discrete model"),
        (["--model", "toy", "--estimators", "score+rloo"], "needs K >= 2 particles"),
        (["--model", "toy", "--estimators", "reinforce"], "unknown base 'reinforce'"),
        (["--model", "toy", "--estimators", "score,score:1"], "given twice"),
        (["--model", "toy", "--reps", "3"], "argument --reps: must be an integer in [5, 1000000]"),
        (["--model", "toy", "--checkpoint", "x.pt"], "apply to the VAEs"),
        (["--model", "vae", "--checkpoint", "no/such/checkpoint.pt"], "no such file"),
        (["--model", "vae", "--run", "score"], "give --checkpoint too"),
        (["--backend", "numpyro", "--model", "discrete", "--estimators", "score,pathwise"],
         "site 'z': the pathwise (reparameterized) estimator needs a reparameterized sampler"),
        (["--backend", "numpyro", "--model", "toy", "--estimators", "score+rloo"], "needs K >= 2 particles"),
        (["--backend", "numpyro", "--model", "vae", "--checkpoint", "no/such/checkpoint.npz"], "no such file"),
        (["--backend", "numpyro", "--model", "vae", "--checkpoint", "run/checkpoint.pt"],
         "run/checkpoint.pt is a checkpoint.pt of the pyro backend; give --backend pyro"),
        (["--model", "discrete", "--checkpoint", "run/checkpoint.npz"],
         "run/checkpoint.npz is a checkpoint.npz of the numpyro backend; give --backend numpyro"),
    ],
)
def test_errors_exit_2_with_the_message(tmp_path, capsys, args, message):
    reps = [] if "--reps" in args else ["--reps", "5"]
    assert main(["compare", *args, *reps, "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ppl-reparam compare: error: ") and message in err, err
    assert not (tmp_path / "compare.csv").exists()


@pytest.mark.parametrize("args, message", [(["--model", "gamma"], "invalid choice: 'gamma'"),
                                           (["--model", "toy", "--backend", "stan"], "invalid choice: 'stan'")])
def test_unknown_model_or_backend_is_a_usage_error(capsys, args, message):
    assert main(["compare", *args]) == 2
    assert message in capsys.readouterr().err


def test_relaxed_specs_parse_in_canonical_form():
    assert [str(s) for s in parse_estimators("relaxed+t=0.50:3, relaxed+t=2", "discrete")] == [
        "relaxed+t=0.5:3", "relaxed+t=2"]


# ----------------------------------------------------------------------------------- the NumPyro backend
THETA, TOY_REPS, TOY_PARTICLES = 2.0, 1000, 100
TOY_EXACT = {"score+akl": gradient_moments("score", THETA, analytic_kl=True),
             "score": gradient_moments("score", THETA, analytic_kl=False)}


def test_toy_per_sample_variances_match_the_closed_forms_in_both_backends(tmp_path, capsys):
    """`compare --model toy` through each backend, score function with closed-form (87) and Monte Carlo
    (54.49) entropy, 1000 estimates of 100 particles each: each backend's variance of the estimate lies
    within 6 exact standard deviations of the sample variance of the closed form, the tolerance of
    tests/closed_form.py: sqrt(mu_4/R - sigma^4 (R-3)/(R(R-1))) from the exact fourth central moment of a
    100-particle estimate (kurtosis 3.24 and 3.21: the sample variance is close to a scaled chi-square,
    4.7% of sigma^2 per standard deviation, so 28%); the per-sample variance is that times 100."""
    specs = ",".join(f"{name}:{TOY_PARTICLES}" for name in TOY_EXACT)
    for backend in BACKENDS:
        out = tmp_path / backend
        assert main(["compare", "--backend", backend, "--model", "toy", "--estimators", specs, "--reps",
                     str(TOY_REPS), "--out", str(out), "--quiet"]) == 0
        rows = {r["measured"]: r for r in _rows(out)}
        assert list(rows) == [f"{name}:{TOY_PARTICLES}" for name in TOY_EXACT]
        for name, exact in TOY_EXACT.items():
            of_mean = exact.of_mean(TOY_PARTICLES)
            variance = float(rows[f"{name}:{TOY_PARTICLES}"]["total_variance"])
            assert abs(variance - of_mean.variance) <= 6 * of_mean.sample_variance_sd(TOY_REPS), (backend, name)
            assert float(rows[f"{name}:{TOY_PARTICLES}"]["per_sample_variance"]) == pytest.approx(
                variance * TOY_PARTICLES)
        saved = json.loads((out / "compare.json").read_text())
        assert saved["backend"] == backend and saved["reps"] == TOY_REPS
    header = (tmp_path / "numpyro" / "compare.md").read_text().splitlines()[0]
    assert header.startswith("Gradient variance on toy Gaussian") and "compilation excluded" in header


def test_numpyro_warm_up_learns_the_mean_cost_at_fixed_parameters():
    """score+ma:100 on the NumPyro toy at theta = 2 (Monte Carlo entropy): the cost of x is
    c = x^2 + log q(x) = 3.081 + 4 eps + eps^2/2, mean mu = theta^2 + 1/2 - log(2 pi)/2 = 3.581 and
    variance 16.5. After n = 200 warm-up updates from 0, each with the mean cost of 100 particles, the
    moving average (beta = 0.9) has mean (1 - beta^n) mu and sd sqrt((1 - beta)(1 - beta^2n)/(1 + beta)
    16.5/100) = 0.093: it must lie within 5 of those of mu. Measured with that state (the parameters did
    not move: they are passed explicitly), the gradient is the closed form's for the constant baseline
    b it holds (tests/closed_form.py: mean, variance and Bonett interval); unwarmed, b = 0."""
    target = _numpyro_toy_target(THETA)
    spec = parse_estimators("score+ma:100", "toy")[0]
    model, guide = target.at(spec)
    elbo = target.make_elbo(spec)
    mu, sd = THETA**2 + 0.5 - 0.5 * math.log(2 * math.pi), math.sqrt(0.1 / 1.9 * 16.5 / 100)
    for steps in (0, 200):
        warmed = warm_up_baseline(elbo, model, guide, target.params, steps=steps, seed=1)
        b = float(trace(seed(warmed, random.PRNGKey(0))).get_trace()["_baseline.x"]["value"])
        assert abs(b - mu) < 5 * sd if steps else b == 0.0
        stats = compiled_gradient_variance(elbo, model, warmed, params=target.params, num_reps=2000, seed=2,
                                           confidence=CONFIDENCE)
        exact = gradient_moments("score", THETA, analytic_kl=False, baseline=b)
        check_against_closed_form(stats["theta"], exact, n=100, reps=2000)


VAE_SPREAD = {"encoder": 0.58, "decoder": 0.071}
"""Seed-to-seed sd of the log of the score / pathwise per-sample variance ratio at initial weights for
NumPyro - Pyro (see the test)."""


def test_vae_score_to_pathwise_ratio_agrees_between_backends(tmp_path, capsys):
    """`compare --model vae --estimators pathwise,score` at the initial weights of seed 0 in each backend
    (50 repetitions, a batch of 20 digits): each backend's score / pathwise per-sample variance ratio lies
    in the other's 95% interval widened by a factor exp(6 s) on each side, s the sd of the difference of
    the two backends' log ratios from seed to seed.

    The backends draw different initial weights (torch's and JAX's generators), and the ratio moves with
    them: over seeds 0-11 at these settings the sd of the log ratio was 0.357 (NumPyro, geometric mean
    6,906) and 0.458 (Pyro, 7,689; largest 25,215 at seed 1) for the encoder, 0.057 (0.983) and 0.042
    (0.989) for the decoder. So s = sqrt(0.357^2 + 0.458^2) = 0.58 (encoder) and 0.071 (decoder), and a
    difference beyond 6 s (even with zero-width intervals) has a normal tail of 2e-9; the factors are 33
    (encoder: a score-function variance off by more than that fails) and 1.53 (decoder: where the two
    estimators are the same one, the ratio is 1 in both)."""
    ratios = {}
    for backend in BACKENDS:
        out = tmp_path / backend
        assert main(["compare", "--backend", backend, "--model", "vae", "--estimators", "pathwise,score", "--reps",
                     "50", "--batch-size", "20", "--out", str(out), "--quiet"]) == 0
        assert "gaussian VAE 64-128-8 at its initial weights (seed 0)" in capsys.readouterr().out
        assert [(r["measured"], r["group"]) for r in _rows(out)] == [
            (s, g) for s in ("pathwise", "score") for g in ("encoder", "decoder")]
        comparison = json.loads((out / "compare.json").read_text())["comparison"]
        ratios[backend] = {c["group"]: (c["variance_ratio"], c["ratio_ci_low"], c["ratio_ci_high"])
                           for c in comparison}
    for group, spread in VAE_SPREAD.items():
        widen = math.exp(6 * spread)
        for one, other in (("pyro", "numpyro"), ("numpyro", "pyro")):
            ratio, (_, low, high) = ratios[one][group][0], ratios[other][group]
            assert low / widen <= ratio <= high * widen, (group, ratios)


def test_numpyro_discrete_from_a_checkpoint(tmp_path, capsys):
    """At a NumPyro `vae` run's weights (checkpoint.npz): the run's spec measures with its trained
    baseline state (never warmed up), a relaxed spec on the relaxation at its temperature; the other
    backend's command names the backend the checkpoint belongs to."""
    config = VAEConfig(model="discrete", estimators=("score+ma",), epochs=1, hidden=(16,), latent_dim=4,
                       variance_reps=0, test_particles=5)
    run = training.train_vae(config, tmp_path / "run", NumPyroVAEStudy(models.numpyro_vae), progress=False).runs[0]
    target = target_of("numpyro", "discrete", 0, 20, THETA, str(tmp_path / "run"), "score+ma")
    assert "discrete VAE 64-16-4, run score+ma of" in target.description and "at epoch 1" in target.description
    assert all(np.array_equal(target.params[k], v) for k, v in run.params.items())
    elbo, guide = target.trained["score+ma"]
    assert elbo is make_run_elbo("score+ma")
    state = trace(seed(guide, random.PRNGKey(0))).get_trace(np.zeros((2, 64), np.float32))["_baseline.z"]["value"]
    assert np.array_equal(state, run.state.mutable_state["_baseline.z"]) and np.any(state != 0)
    specs = parse_estimators("score+ma", "discrete")
    cold, _ = measure(target, specs, reps=5, seed=0, warmup=0)
    warm, _ = measure(target, specs, reps=5, seed=0, warmup=20)
    assert [r["total_variance"] for r in cold] == [r["total_variance"] for r in warm]  # trained: no warm-up

    out = tmp_path / "cmp"
    assert main(["compare", "--backend", "numpyro", "--model", "discrete", "--checkpoint", str(tmp_path / "run"),
                 "--run", "score+ma", "--estimators", "score,score+ma,relaxed+t=0.5", "--reps", "5", "--batch-size",
                 "20", "--out", str(out), "--quiet"]) == 0
    assert "discrete VAE 64-16-4, run score+ma" in capsys.readouterr().out
    comparison = {(c["measured"], c["group"]): c for c in json.loads((out / "compare.json").read_text())["comparison"]}
    assert comparison["score+ma", "encoder"]["same_objective"]
    assert not comparison["relaxed+t=0.5", "encoder"]["same_objective"]
    assert (out / "compare.png").read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="checkpoint.npz of the numpyro backend; give --backend numpyro"):
        target_of("pyro", "discrete", 0, 20, THETA, str(tmp_path / "run"), None)
    with pytest.raises(ValueError, match="give --model discrete"):
        target_of("numpyro", "vae", 0, 20, THETA, str(tmp_path / "run"), None)
