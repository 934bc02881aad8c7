"""``ppl-reparam compare``: every model end to end on small settings, the measurement's guarantees
(same parameters, baseline warm-up, checkpoints) and its errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyro
import pytest
import torch

from ppl_reparam import models, training
from ppl_reparam.cli import main
from ppl_reparam.cli.compare import _vae_target, measure, parse_estimators
from ppl_reparam.pyro.training import VAEStudy
from ppl_reparam.pyro.variance import trace_params
from ppl_reparam.study import VAEConfig

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


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "discrete", "--estimators", "score,pathwise"],
         "site 'z': the pathwise (reparameterized) estimator needs rsample"),
        (["--model", "discrete", "--estimators", "iwae-dreg:3"], "IWAE(estimator='dreg') needs reparameterized"),
        (["--model", "vae", "--estimators", "pathwise,relaxed+t=0.5"], "applies to the discrete model"),
        (["--model", "toy", "--estimators", "score+rloo"], "needs num_particles >= 2"),
        (["--model", "toy", "--estimators", "reinforce"], "unknown base 'reinforce'"),
        (["--model", "toy", "--estimators", "score,score:1"], "given twice"),
        (["--model", "toy", "--reps", "3"], "--reps must be at least 5"),
        (["--model", "toy", "--checkpoint", "x.pt"], "apply to the VAEs"),
        (["--model", "vae", "--checkpoint", "no/such/checkpoint.pt"], "no such file"),
        (["--model", "vae", "--run", "score"], "give --checkpoint too"),
    ],
)
def test_errors_exit_2_with_the_message(tmp_path, capsys, args, message):
    reps = [] if "--reps" in args else ["--reps", "5"]
    assert main(["compare", *args, *reps, "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ppl-reparam compare: error: ") and message in err, err
    assert not (tmp_path / "compare.csv").exists()


def test_unknown_model_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["compare", "--model", "gamma"])
    assert info.value.code == 2
    assert "invalid choice: 'gamma'" in capsys.readouterr().err


def test_relaxed_specs_parse_in_canonical_form():
    assert [str(s) for s in parse_estimators("relaxed+t=0.50:3, relaxed+t=2", "discrete")] == [
        "relaxed+t=0.5:3", "relaxed+t=2"]
