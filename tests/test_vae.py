"""The digits VAE: model and guide, training, checkpoints and resume, the `vae` command, and the
framework-free aggregates over parameter groups (ppl_reparam.stats)."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
from dataclasses import replace
from statistics import NormalDist

import numpy as np
import pyro
import pytest
import torch
from threadpoolctl import threadpool_limits

from ppl_reparam import cli, models, training
from ppl_reparam.cli.vae import config_from_args
from ppl_reparam.data import load_dataset
from ppl_reparam.models.vae import make_vae
from ppl_reparam.pyro.training import (
    CHECKPOINT,
    TrainingRun,
    VAEStudy,
    evaluate_elbo,
    load_checkpoint,
    make_run_elbo,
    measure_estimators,
)
from ppl_reparam.specs import parse_spec
from ppl_reparam.stats import (
    GradientStats,
    GroupStats,
    MeanAgreement,
    ParamStats,
    _bootstrap_counts,
    _resampled_spread,
    group_samples,
    total_variance_ci,
    variance_ratio,
    variance_ratio_ci,
)
from ppl_reparam.study import VAEConfig

STUDY = VAEStudy(models.pyro_vae)


def train_vae(config, out, **options):
    return training.train_vae(config, out, STUDY, **options)


TINY = VAEConfig(
    estimators=("pathwise", "score"), compare=True, epochs=2, hidden=(16,), latent_dim=4,
    variance_reps=5, variance_every=1, test_particles=10,
)
"""A fast setting: a 64-16-4 VAE on digits, two epochs, every estimator measured every epoch."""


@pytest.fixture(autouse=True)
def one_blas_thread():
    """One BLAS thread too (conftest already gives torch one), as `ppl-reparam vae --threads 1` does."""
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


# ------------------------------------------------------------------------------------ model and guide
def test_default_architecture_and_param_names(digits):
    model, guide = make_vae()
    x = torch.from_numpy(digits.train[:5])
    trace = pyro.poutine.trace(pyro.poutine.replay(model, pyro.poutine.trace(guide).get_trace(x))).get_trace(x)
    shapes = {k: tuple(v.shape) for k, v in pyro.get_param_store().items()}
    assert shapes == {
        "encoder.net.0.weight": (128, 64), "encoder.net.0.bias": (128,),
        "encoder.net.2.weight": (16, 128), "encoder.net.2.bias": (16,),
        "decoder.net.0.weight": (128, 8), "decoder.net.0.bias": (128,),
        "decoder.net.2.weight": (64, 128), "decoder.net.2.bias": (64,),
    }
    assert trace.nodes["z"]["fn"].event_shape == (8,) and trace.nodes["x"]["fn"].event_shape == (64,)


def test_plate_scales_a_minibatch_to_the_full_data(digits):
    """Each particle's loss on a batch of 10 with num_data=100 is 10 times its loss as the whole data
    (same random numbers: same seed)."""
    model, guide = make_vae(hidden=(16,), latent_dim=4)
    x = torch.from_numpy(digits.train[:10])
    elbo = make_run_elbo("pathwise:5")
    with torch.no_grad():
        pyro.set_rng_seed(0)
        scaled, _ = elbo.particle_losses(model, guide, x, num_data=100)
        pyro.set_rng_seed(0)
        plain, _ = elbo.particle_losses(model, guide, x)
    torch.testing.assert_close(scaled, 10 * plain)


# ------------------------------------------------------------------------------------------ training
def test_short_training_improves_the_test_elbo(digits):
    """Three pathwise epochs must raise the test ELBO by more than 5 standard errors of the difference
    of the two estimates (independent particles: se = sqrt(se_0^2 + se_3^2)); with no improvement
    that would happen with probability below 3e-7."""
    pyro.set_rng_seed(0)
    model, guide = make_vae()
    run = TrainingRun("pathwise", model, guide, make_run_elbo("pathwise"), lr=1e-3, seed=0)
    x_test = torch.from_numpy(digits.test)
    with run.active():
        before, se_before = evaluate_elbo(model, guide, x_test, num_particles=50, seed=1)
    for _ in range(3):
        train_elbo = run.train_epoch(digits.train, batch_size=100)
    with run.active():
        after, se_after = evaluate_elbo(model, guide, x_test, num_particles=50, seed=2)
    assert np.isfinite(train_elbo) and run.epoch == 3
    assert after - before > 5 * np.hypot(se_before, se_after), (before, after, se_before, se_after)


def test_runs_share_initial_weights_but_not_parameters(digits):
    runs = STUDY.build_runs(TINY, load_dataset("digits"))
    x = torch.from_numpy(digits.train[:100])
    for run in runs:
        with run.active():
            run.elbo.loss(run.model, run.guide, x)
    first, second = (r.scope["params"] for r in runs)
    assert all(torch.equal(first[k], second[k]) and first[k] is not second[k] for k in first)
    runs[0].train_epoch(digits.train, 100)
    assert not torch.equal(first["decoder.net.2.bias"], second["decoder.net.2.bias"])
    assert len(pyro.get_param_store().keys()) == 0  # scopes leave the global store as it was


def _params(result):
    return [{k: v.detach().clone() for k, v in r.scope["params"].items()} for r in result.runs]


def _timeless(rows):
    """Rows without wall times (seconds, and the work-normalized variance), as reprs (floats print
    exactly, NaN equals NaN)."""
    return [repr({k: v for k, v in row.items() if "seconds" not in k}) for row in rows]


def _assert_same(a, b):
    assert _timeless(a.history) == _timeless(b.history)
    assert _timeless(a.variance) == _timeless(b.variance) and a.comparison == b.comparison
    for pa, pb in zip(_params(a), _params(b)):
        assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def assert_live_files_follow(folder, result):
    """Each measured run's VarianceMonitor wrote live/<run>/variance.csv and variance.png: the study's
    variance rows of that run (a resumed run's monitor goes on from the checkpoint's rows)."""
    runs = sorted({r["trained_with"] for r in result.variance})
    assert runs and sorted(p.name for p in (folder / training.LIVE).iterdir()) == sorted(map(training.live_name, runs))
    for run in runs:
        live = folder / training.LIVE / training.live_name(run)
        with open(live / "variance.csv") as f:
            written = list(csv.DictReader(f))
        expected = [{"step": r["epoch"], **{k: v for k, v in r.items() if k not in ("epoch", "trained_with")}}
                    for r in result.variance if r["trained_with"] == run]
        assert [{k: v for k, v in r.items() if "seconds" not in k} for r in written] == [
            {k: str(v) for k, v in r.items() if "seconds" not in k} for r in expected
        ]
        assert (live / "variance.png").stat().st_size > 0


def test_resume_equals_uninterrupted(tmp_path):
    """Bitwise: the checkpoint holds parameters, Adam state and every RNG state, so the resumed run
    draws the same numbers in the same order; the live monitor files go on from the checkpoint."""
    full = train_vae(TINY, tmp_path / "full")
    train_vae(replace(TINY, epochs=1), tmp_path / "split")
    assert load_checkpoint(tmp_path / "split" / CHECKPOINT)["epoch"] == 1
    resumed = train_vae(TINY, tmp_path / "split", resume=True)
    _assert_same(full, resumed)
    assert_live_files_follow(tmp_path / "full", full)
    assert_live_files_follow(tmp_path / "split", resumed)
    dynamic = replace(TINY, dynamic_binarization=True, estimators=("score",), compare=False, variance_reps=0)
    full = train_vae(dynamic, tmp_path / "dyn-full")
    train_vae(replace(dynamic, epochs=1), tmp_path / "dyn-split")
    _assert_same(full, train_vae(dynamic, tmp_path / "dyn-split", resume=True))


def test_interrupted_run_keeps_last_checkpoint_and_resumes(tmp_path, monkeypatch):
    """Ctrl-C in the second epoch's second run: the epoch-1 checkpoint stays whole, and resuming from
    it gives the uninterrupted result."""
    full = train_vae(TINY, tmp_path / "full")
    original = TrainingRun.train_epoch
    calls = []

    def interrupt(self, *args, **kwargs):
        calls.append(self.name)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TrainingRun, "train_epoch", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_vae(TINY, tmp_path / "cut")
    monkeypatch.setattr(TrainingRun, "train_epoch", original)
    assert load_checkpoint(tmp_path / "cut" / CHECKPOINT)["epoch"] == 1
    written = sorted(str(p.relative_to(tmp_path / "cut")) for p in (tmp_path / "cut").rglob("*") if p.is_file())
    assert written == [CHECKPOINT, *(f"live/{run}/variance.{ext}" for run in ("pathwise", "score")
                                     for ext in ("csv", "png"))]  # no temporary files left
    _assert_same(full, train_vae(TINY, tmp_path / "cut", resume=True))


def test_sigterm_stops_the_command_like_ctrl_c(tmp_path, monkeypatch, capsys):
    original = TrainingRun.train_epoch

    def terminate(self, *args, **kwargs):
        if self.epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TrainingRun, "train_epoch", terminate)
    args = ["vae", "--epochs", "3", "--hidden", "16", "--variance-reps", "0", "--test-particles", "10",
            "--out", str(tmp_path), "--quiet"]
    assert cli.main(args) == 130
    assert "interrupted" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / CHECKPOINT)["epoch"] == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    monkeypatch.setattr(TrainingRun, "train_epoch", original)
    assert cli.main([*args, "--resume"]) == 0
    assert load_checkpoint(tmp_path / CHECKPOINT)["epoch"] == 3


def test_measure_estimators_on_the_vae(digits):
    """Decoder: the two estimators are the same estimator (the decoder's gradient does not go through
    the guide's sample), so the 99.9% interval of their variance ratio must cover 1. Encoder: the
    score function's variance is larger (its 99.9% interval lies above 1). Both unbiased: no element's
    mean differs beyond the Bonferroni bound at family-wise level 0.001."""
    pyro.set_rng_seed(0)
    model, guide = make_vae(hidden=(16,), latent_dim=4)
    run = TrainingRun("pathwise", model, guide, make_run_elbo("pathwise"), lr=1e-3, seed=0)
    x = torch.from_numpy(digits.train[:100])
    rows, comparisons = measure_estimators(
        run, ["pathwise", "score"], x, len(digits.train), num_reps=60, seed=0, confidence=0.999
    )
    assert {(r["measured"], r["group"]) for r in rows} == {
        (e, g) for e in ("pathwise", "score") for g in ("encoder", "decoder")
    }
    by_group = {c["group"]: c for c in comparisons}
    assert by_group["encoder"]["ratio_ci_low"] > 1
    decoder = by_group["decoder"]
    assert decoder["ratio_ci_low"] < 1 < decoder["ratio_ci_high"]
    assert decoder["means_agree"] and by_group["encoder"]["means_agree"]


# ----------------------------------------------------------------------------------------- the CLI
def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "vae"
    args = ["vae", "--compare", "--epochs", "2", "--hidden", "16", "--latent-dim", "4", "--variance-reps", "5",
            "--variance-every", "1", "--test-particles", "10", "--out", str(out), "--quiet"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "test ELBO by PathwiseELBO with 10 particles" in printed and "ratio" in printed
    names = {"history.csv", "variance.csv", "comparison.csv", "results.json", "elbo.png", "variance.png",
             "summary.png", "images.png", CHECKPOINT, "manifest.json", training.LIVE}
    assert {p.name for p in out.iterdir()} == names
    with open(out / "history.csv") as f:
        history = list(csv.DictReader(f))
    assert list(history[0]) == ["epoch", "estimator", "train_elbo", "test_elbo_pathwise_10particles",
                                "test_elbo_se", "seconds"]
    assert [(h["epoch"], h["estimator"]) for h in history] == [
        (str(e), s) for e in range(3) for s in ("pathwise", "score")
    ]
    results = json.loads((out / "results.json").read_text())
    assert results["test_elbo_estimator"] == "PathwiseELBO, 10 particles per image"
    assert {(c["epoch"], c["trained_with"], c["group"]) for c in results["comparison"]} == {
        (e, t, g) for e in range(3) for t in ("pathwise", "score") for g in ("encoder", "decoder")
    }
    for png in ("elbo.png", "variance.png", "images.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--estimator", "reinforce"], "unknown base 'reinforce'"),
        (["--estimator", "pathwise,score"], "need --compare"),
        (["--data", "no/such/file.idx"], "no such file"),
        (["--resume"], "no checkpoint"),
        (["--variance-reps", "3"], "at least 5"),
        (["--lr", "0"], "argument --lr: must be a finite number in (0, 10]"),
    ],
)
def test_cli_errors_exit_2_with_a_message(tmp_path, capsys, extra, message):
    assert cli.main(["vae", "--epochs", "1", "--out", str(tmp_path), "--quiet", *extra]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("extra", [["--epochs", "0"], ["--batch-size", "-1"], ["--hidden", "a,b"]])
def test_cli_argparse_errors(tmp_path, capsys, extra):
    assert cli.main(["vae", "--out", str(tmp_path), *extra]) == 2
    assert "error" in capsys.readouterr().err


# ------------------------------------------------------------------------------ estimator specs in the VAE
def _config(*args):
    """The VAEConfig the `vae` command builds from ``args``."""
    parser = cli.build_parser()
    return config_from_args(parser.parse_args(["vae", *args]))


def test_issue_form_objective_iwae_k_estimator_dreg():
    """`--objective iwae --k 5 --estimator dreg` is the spec iwae-dreg:5 (canonical form "iwae-dreg":
    K = 5 is the IWAE bases' default)."""
    config = _config("--objective", "iwae", "--k", "5", "--estimator", "dreg")
    assert [parse_spec(e) for e in config.estimators] == [parse_spec("iwae-dreg:5")]
    assert config.estimators == ("iwae-dreg",)


@pytest.mark.parametrize(
    "args, estimators",
    [
        (["--objective", "iwae", "--estimator", "pathwise,dreg", "--compare"], ("iwae", "iwae-dreg")),
        (["--objective", "iwae", "--k", "8", "--estimator", "pathwise,score", "--compare"],
         ("iwae:8", "iwae-vimco:8")),
        (["--estimator", "score,score+rloo", "--num-particles", "4", "--compare"], ("score:4", "score+rloo:4")),
        (["--estimator", "score+rloo:4,pathwise+stl", "--compare"], ("score+rloo:4", "pathwise+stl")),
        (["--estimator", "pathwise,score", "--compare", "--analytic-kl"], ("pathwise+akl", "score+akl")),
        (["--compare"], ("pathwise", "score")),
        (["--model", "discrete"], ("score",)),
        (["--model", "discrete", "--objective", "iwae", "--k", "4"], ("iwae-vimco:4",)),
    ],
)
def test_estimator_options_resolve_to_specs(args, estimators):
    """A spec's own ':K' is its particle count; --num-particles fills in specs without one."""
    assert _config(*args).estimators == estimators


@pytest.mark.parametrize(
    "args, message",
    [
        (["--estimator", "score+rloo:4", "--num-particles", "4"], "drop --num-particles or the ':K'"),
        (["--objective", "iwae", "--num-particles", "5"], "from --k, not --num-particles"),
        (["--k", "5"], "give it with --objective iwae"),
        (["--objective", "iwae", "--estimator", "rloo"], "choose from pathwise, score, vimco, dreg"),
        (["--objective", "iwae", "--analytic-kl"], "not to --objective iwae"),
        (["--estimator", "iwae-dreg:5", "--analytic-kl"], "applies to score and pathwise specs"),
        (["--objective", "iwae", "--estimator", "score,vimco", "--compare"], "each at most once"),  # both VIMCO
    ],
)
def test_contradictory_estimator_options(args, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _config(*args)


def test_checkpoints_of_earlier_versions_fold_their_options_into_specs():
    """Before specs, checkpoints stored num_particles and analytic_kl apart, and no model."""
    old = {**{k: v for k, v in TINY.key().items() if k not in ("model", "measure_on")},
           "estimators": ("pathwise", "score"), "num_particles": 4, "analytic_kl": True}
    key = VAEConfig.key_of_checkpoint(old)
    assert key["estimators"] == ("pathwise+akl:4", "score+akl:4") and key["model"] == "gaussian"
    assert VAEConfig(**key).key() == key
    assert VAEConfig.key_of_checkpoint({**old, "num_particles": 1, "analytic_kl": False}) == TINY.key()


def test_specs_train_and_resume_equals_uninterrupted(tmp_path):
    """score+rloo:4 and iwae-dreg:5 (and IWAE with VIMCO) train on the tiny VAE, runs named by
    their specs; the resumed run equals the uninterrupted one bitwise."""
    config = replace(TINY, estimators=("score+rloo:4", "iwae-dreg:5", "iwae-vimco:3"))
    full = train_vae(config, tmp_path / "full")
    assert [r.name for r in full.runs] == ["score+rloo:4", "iwae-dreg", "iwae-vimco:3"]
    assert all(np.isfinite(h["train_elbo"]) for h in full.history if h["epoch"] > 0)
    train_vae(replace(config, epochs=1), tmp_path / "split")
    _assert_same(full, train_vae(config, tmp_path / "split", resume=True))


def test_every_spec_is_compared_with_pathwise(digits):
    """With pathwise measured, every other spec gets a ratio row against it, flagged by whether it
    estimates the same objective's gradient; per-sample ratios scale the estimate's variance by the
    particles (rloo:4 over pathwise:1)."""
    pyro.set_rng_seed(0)
    model, guide = make_vae(hidden=(16,), latent_dim=4)
    run = TrainingRun("pathwise", model, guide, make_run_elbo("pathwise"), lr=1e-3, seed=0)
    x = torch.from_numpy(digits.train[:50])
    rows, comparisons = measure_estimators(
        run, ["pathwise", "score+rloo:4", "pathwise+stl", "iwae-dreg:3"], x, len(digits.train), num_reps=6, seed=0
    )
    flags = {(c["measured"], c["group"]): c["same_objective"] for c in comparisons}
    assert flags == {(m, g): m != "iwae-dreg:3" for m in ("score+rloo:4", "pathwise+stl", "iwae-dreg:3")
                     for g in ("encoder", "decoder")}
    assert {c["reference"] for c in comparisons} == {"pathwise"}
    by = {(r["measured"], r["group"]): r for r in rows}
    rloo, ref = by["score+rloo:4", "encoder"], by["pathwise", "encoder"]
    ratio = next(c for c in comparisons if (c["measured"], c["group"]) == ("score+rloo:4", "encoder"))
    assert ratio["variance_ratio"] == pytest.approx(4 * rloo["total_variance"] / ref["total_variance"], rel=1e-9)
    assert rloo["per_sample_variance"] == pytest.approx(4 * rloo["total_variance"])


def test_resume_refuses_other_settings(tmp_path):
    quick = replace(TINY, variance_reps=0)
    train_vae(quick, tmp_path)
    with pytest.raises(ValueError, match="other settings.*'lr'"):
        train_vae(replace(quick, epochs=3, lr=0.01), tmp_path, resume=True)
    with pytest.raises(ValueError, match="past --epochs"):
        train_vae(replace(quick, epochs=1), tmp_path, resume=True)


# ------------------------------------------------------------------------------------------ aggregates
def _stats(samples: dict[str, np.ndarray]) -> GradientStats:
    return GradientStats.from_samples(samples, num_particles=1, seconds=0.0)


def test_group_stats_sums_variances_and_averages_snr():
    rng = np.random.default_rng(0)
    stats = _stats({"enc.a": rng.normal(1.0, 2.0, (50, 3, 2)), "enc.b": rng.normal(0.0, 1.0, (50, 4)),
                    "dec.c": rng.normal(size=(50, 5))})
    group = GroupStats.from_stats(stats, ["enc.a", "enc.b"], num_boot=200)
    variances = np.concatenate([stats["enc.a"].variance.ravel(), stats["enc.b"].variance.ravel()])
    snrs = np.concatenate([stats["enc.a"].snr.ravel(), stats["enc.b"].snr.ravel()])
    assert group.total_variance == pytest.approx(variances.sum(), rel=1e-12)
    assert group.mean_snr == pytest.approx(snrs.mean(), rel=1e-12)
    assert (group.num_elements, group.num_reps, group.num_particles) == (10, 50, 1)
    low, high = group.total_variance_ci
    assert low < group.total_variance < high
    assert group_samples(stats, ["enc.b", "dec.c"]).shape == (50, 9)


def test_group_needs_the_raw_samples():
    kept = ParamStats.from_samples(np.ones((6, 2)) + np.arange(6)[:, None], 1)
    bare = ParamStats(kept.mean, kept.variance, kept.variance_ci, 1, 6)
    assert bare.samples is None and kept.samples.shape == (6, 2)
    with pytest.raises(ValueError, match="raw gradient samples were not kept"):
        group_samples({"p": bare}, ["p"])
    with pytest.raises(ValueError, match="empty"):
        group_samples({"p": kept}, [])


def test_vectorized_bootstrap_matches_a_direct_resample():
    """The Gram-matrix shortcut gives each resample's total variance and spreads d*_r exactly (to
    float64 rounding) as recomputing them from the resampled rows."""
    rng = np.random.default_rng(1)
    samples = rng.standard_t(3, size=(20, 7)) * 5 + 100
    counts = _bootstrap_counts(20, 100, seed=2)
    spread, total = _resampled_spread(samples, counts)
    for b in range(3):
        rows = np.repeat(samples, counts[b].astype(int), axis=0)
        assert total[b] == pytest.approx(rows.var(axis=0, ddof=1).sum(), rel=1e-9)
        np.testing.assert_allclose(spread[b], ((samples - rows.mean(axis=0)) ** 2).sum(1), rtol=1e-9)


def _coverage_tolerance(m: int, level: float = 0.95) -> float:
    """Three binomial standard errors of an observed coverage over m independent intervals."""
    return 3 * np.sqrt(level * (1 - level) / m)


def test_total_variance_interval_covers_the_truth():
    """Over 200 synthetic measurements (100 repetitions of 20 Gaussian elements, known variances),
    the 95% interval must cover the true total variance 95% +- 3 binomial standard errors (0.046)."""
    rng = np.random.default_rng(3)
    scales = np.linspace(0.5, 3.0, 20)
    truth = (scales**2).sum()
    m = 200
    covered = sum(
        low <= truth <= high
        for low, high in (total_variance_ci(rng.normal(size=(100, 20)) * scales, num_boot=500, seed=i)[1]
                          for i in range(m))
    )
    assert abs(covered / m - 0.95) < _coverage_tolerance(m)


def test_variance_ratio_interval_covers_the_truth():
    """Ratio of a Gaussian group's total variance (true 4 * 10) to another's (true 1 * 10), paired
    rows drawn with correlation 0.5: coverage 95% +- 3 binomial standard errors over 200 draws."""
    rng = np.random.default_rng(4)
    m = 200
    covered = 0
    for i in range(m):
        common = rng.normal(size=(100, 10))
        a = 2 * (np.sqrt(0.5) * common + np.sqrt(0.5) * rng.normal(size=(100, 10)))
        b = np.sqrt(0.5) * common + np.sqrt(0.5) * rng.normal(size=(100, 10))
        ratio, (low, high) = variance_ratio_ci(a, b, num_boot=500, seed=i)
        covered += low <= 4.0 <= high
    assert abs(covered / m - 0.95) < _coverage_tolerance(m)


def test_variance_ratio_from_stats_and_errors():
    rng = np.random.default_rng(5)
    a = _stats({"w": 3 * rng.normal(size=(80, 30))})
    b = _stats({"w": rng.normal(size=(80, 30))})
    ratio, (low, high) = variance_ratio(a, b, ["w"], num_boot=500)
    assert ratio == pytest.approx(a["w"].variance.sum() / b["w"].variance.sum())
    assert low < 9 < high
    with pytest.raises(ValueError, match="equal repetitions"):
        variance_ratio_ci(np.ones((10, 2)), np.ones((12, 2)))
    with pytest.raises(ValueError, match="zero"):
        variance_ratio_ci(rng.normal(size=(10, 2)), np.ones((10, 2)))
    assert total_variance_ci(np.ones((10, 3))) == (0.0, (0.0, 0.0))


def test_mean_agreement():
    """Same mean: E[z^2] = 1 with sd sqrt(2 / 2000) = 0.032 over 2000 independent elements, so
    |mean_z2 - 1| < 0.13 (4 sd), and the share of |z| > 1.96 is 0.05 +- 4 * 0.0049. Every element
    shifted by 10 standard errors: mean_z2 far above 1. One element shifted by 1 / sqrt(5 / 200) =
    6.3 standard errors: beyond the Bonferroni bound 4.06 for 2000 elements."""
    rng = np.random.default_rng(6)
    a = _stats({"w": rng.normal(size=(200, 2000))})
    b = _stats({"w": rng.normal(size=(200, 2000)) * 2})
    agree = MeanAgreement.from_stats(a, b, ["w"])
    assert abs(agree.mean_z2 - 1) < 4 * np.sqrt(2 / 2000)
    assert abs(agree.fraction_outside - 0.05) < 4 * np.sqrt(0.05 * 0.95 / 2000)
    assert agree.num_elements == 2000 and agree.confidence == 0.95
    assert agree.bonferroni_z == pytest.approx(NormalDist().inv_cdf(1 - 0.05 / 4000)) and agree.agrees
    shifted = _stats({"w": rng.normal(size=(200, 2000)) + 10 * np.sqrt(5 / 200)})
    assert MeanAgreement.from_stats(shifted, b, ["w"]).mean_z2 > 50
    one_off = _stats({"w": np.concatenate([rng.normal(size=(200, 1)) + 1.0, rng.normal(size=(200, 1999))], 1)})
    assert not MeanAgreement.from_stats(one_off, b, ["w"]).agrees  # one element 6 standard errors away
