"""The NumPyro VAE (ppl_reparam.models.vae_numpyro) and its training (ppl_reparam.numpyro.training), checked
against the Pyro VAE: same parameters, same loss and gradient at the same weights and noise, the same test
ELBO after the same training, checkpoints that resume exactly, an unbiased score-function gradient."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pyro.poutine as poutine
import pytest
import torch
from numpyro.handlers import replay
from numpyro.infer import Trace_ELBO
from numpyro.infer.util import log_density
from numpyro.primitives import Messenger
from test_vae import assert_live_files_follow

from ppl_reparam import models, training
from ppl_reparam.cli.vae import summary
from ppl_reparam.data import load_dataset
from ppl_reparam.models.vae import make_vae as make_pyro_vae
from ppl_reparam.models.vae_numpyro import MLP, data_plate, make_vae
from ppl_reparam.numpyro import PathwiseELBO, ScoreFunctionELBO, force_estimator, gradient_variance
from ppl_reparam.numpyro.training import (
    CHECKPOINT,
    TrainingRun,
    VAEStudy,
    evaluate_elbo,
    load_checkpoint,
    make_run_elbo,
    save_checkpoint,
)
from ppl_reparam.numpyro.variance import init_params
from ppl_reparam.pyro import PathwiseELBO as PyroPathwiseELBO
from ppl_reparam.pyro.training import TrainingRun as PyroTrainingRun
from ppl_reparam.pyro.training import evaluate_elbo as pyro_evaluate_elbo
from ppl_reparam.specs import parse_spec
from ppl_reparam.stats import MeanAgreement
from ppl_reparam.study import VAEConfig

DATA = load_dataset("digits", seed=0)


def train_vae_numpyro(config, out, **options):
    return training.train_vae(config, out, VAEStudy(models.numpyro_vae), **options)


NUM_DATA = len(DATA.train)
TIMING = ("seconds", "seconds_per_estimate", "variance_x_seconds")
"""Columns that hold wall times, which differ between otherwise identical runs."""


pytestmark = pytest.mark.usefixtures("quick_compiles")


def pyro_params(model, guide) -> dict[str, torch.Tensor]:
    """The Pyro VAE's parameters under their param-store names."""
    return dict(model.named_parameters()) | dict(guide.named_parameters())


def test_parameters_named_shaped_and_initialised_as_pyro():
    torch.manual_seed(0)
    expected = {k: tuple(v.shape) for k, v in pyro_params(*make_pyro_vae()).items()}
    vae = make_vae()
    params, _ = init_params(vae.model, vae.guide, jax.random.PRNGKey(0), DATA.train[:5], num_data=NUM_DATA)
    assert {k: v.shape for k, v in params.items()} == expected
    assert make_vae() is vae  # one object per size: compiled functions keyed by its methods are reused
    for name, value in params.items():
        # torch.nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = the weight's columns
        fan_in = params[name.replace(".bias", ".weight")].shape[1]
        bound = 1 / np.sqrt(fan_in)
        assert np.abs(value).max() <= bound
        if value.size >= 1000:  # sd of U(-b, b) is s = b/sqrt(3); a sample sd's se is s sqrt((kurtosis - 1)/4n)
            sd = bound / np.sqrt(3)
            assert abs(np.std(value) - sd) < 6 * sd * np.sqrt(0.2 / value.size)


class _FixPyroNoise(poutine.messenger.Messenger):
    """Draw Pyro's ``z`` as ``loc + scale * eps`` for a given ``eps`` (pathwise)."""

    def __init__(self, eps: np.ndarray):
        super().__init__()
        self.eps = torch.from_numpy(eps)

    def _pyro_sample(self, msg: dict) -> None:
        if msg["name"] == "z":
            normal = msg["fn"].base_dist
            msg["value"] = normal.loc + normal.scale * self.eps
            msg["done"] = True


class _FixNumPyroNoise(Messenger):
    """Draw NumPyro's ``z`` as ``loc + scale * eps`` for a given ``eps`` (pathwise)."""

    def __init__(self, fn, eps: np.ndarray):
        super().__init__(fn)
        self.eps = eps

    def process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and msg["name"] == "z":
            normal = msg["fn"].base_dist
            msg["value"] = normal.loc + normal.scale * self.eps


def test_same_weights_and_noise_give_pyros_loss_and_gradient():
    """The two VAEs are the same function: at Pyro's weights and the same noise eps, -ELBO (plate scaled
    by N/B) and its gradient agree to float32 rounding."""
    x = DATA.train[:50]
    eps = np.random.default_rng(1).standard_normal((len(x), 8)).astype(np.float32)
    torch.manual_seed(0)
    model, guide = make_pyro_vae()
    xt = torch.from_numpy(x)
    with _FixPyroNoise(eps):
        guide_trace = poutine.trace(guide).get_trace(xt, num_data=NUM_DATA)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(xt, num_data=NUM_DATA)
    loss = guide_trace.log_prob_sum() - model_trace.log_prob_sum()
    torch_params = pyro_params(model, guide)
    torch_grads = dict(zip(torch_params, torch.autograd.grad(loss, list(torch_params.values()))))

    vae = make_vae()

    def numpyro_loss(params):
        log_q, guide_trace = log_density(_FixNumPyroNoise(vae.guide, eps), (x,), {"num_data": NUM_DATA}, params)
        log_p, _ = log_density(replay(vae.model, guide_trace), (x,), {"num_data": NUM_DATA}, params)
        return log_q - log_p

    params = {k: jnp.asarray(v.detach().numpy()) for k, v in torch_params.items()}
    value, grads = jax.jit(jax.value_and_grad(numpyro_loss))(params)
    assert float(value) == pytest.approx(loss.item(), rel=1e-5)
    for name, grad in torch_grads.items():
        np.testing.assert_allclose(grads[name], grad.numpy(), rtol=1e-4, atol=1e-4 * np.abs(grad.numpy()).max())


@pytest.mark.slow
def test_test_elbo_after_training_matches_pyro(tmp_path):
    """Both backends train the digits VAE 10 epochs (batch 100, lr 1e-3, pathwise, seed 0: the same split
    and minibatch order); their test ELBOs (100 particles) must agree within TOLERANCE nats per image.

    They differ in initial weights (torch's and JAX's generators) and in the ELBO's draws. The spread this
    allows, measured at 10 epochs over seeds 0-7 on the split of seed 0 (same split, init and draws vary):
    test ELBO sd 0.040 (Pyro, mean -25.317) and 0.036 (NumPyro, mean -25.333); the paired difference
    NumPyro - Pyro at the same seed had mean -0.016, sd 0.042, largest |difference| 0.091. Over seeds 0-7
    with their own splits the sd is 0.26 for both and the paired difference is still sd 0.033, max 0.091.
    With Pyro's initial weights copied into NumPyro (seeds 8-19) the difference was 0.004 +- 0.024 (draws
    only). TOLERANCE = 0.25 is six within-backend sds and 4.6 sds of the difference of two independent runs
    (sqrt(0.040^2 + 0.036^2) = 0.054). Standard errors of the estimates themselves are ~0.003.
    """
    tolerance = 0.25
    config = VAEConfig(
        estimators=("pathwise",), epochs=10, batch_size=100, lr=1e-3, seed=0, variance_reps=0, test_particles=100
    )
    history = train_vae_numpyro(config, tmp_path, progress=False).history
    assert [h["epoch"] for h in history] == list(range(11))
    numpyro_elbo = history[-1]["test_elbo"]
    assert numpyro_elbo > history[0]["test_elbo"] + 20  # it trained: from about -50 to about -25.3

    torch.manual_seed(0)
    model, guide = make_pyro_vae()
    run = PyroTrainingRun("pathwise", model, guide, PyroPathwiseELBO(max_plate_nesting=1), 1e-3, 0)
    for _ in range(10):
        run.train_epoch(DATA.train, 100)
    with run.active():
        pyro_elbo, _ = pyro_evaluate_elbo(model, guide, torch.from_numpy(DATA.test), 100, 0)
    assert abs(numpyro_elbo - pyro_elbo) < tolerance, (numpyro_elbo, pyro_elbo)


def _without_timing(rows: list[dict]) -> str:
    """The rows without wall times, as JSON (exact for floats, and NaN equals NaN)."""
    return json.dumps([{k: v for k, v in r.items() if k not in TIMING} for r in rows])


@pytest.mark.slow
def test_resume_equals_uninterrupted(tmp_path):
    config = VAEConfig(
        estimators=("pathwise", "score"),
        compare=True,
        epochs=2,
        variance_reps=5,
        variance_every=1,
        test_particles=10,
        dynamic_binarization=True,
        seed=3,
    )
    straight = train_vae_numpyro(config, tmp_path / "straight", progress=False)
    first = VAEConfig(**{**config.key(), "epochs": 1})
    train_vae_numpyro(first, tmp_path / "resumed", progress=False)
    assert load_checkpoint(tmp_path / "resumed" / CHECKPOINT)[0]["epoch"] == 1
    resumed = train_vae_numpyro(config, tmp_path / "resumed", resume=True, progress=False)
    assert_live_files_follow(tmp_path / "resumed", resumed)

    assert set(straight.history[0]) == {"epoch", "estimator", "train_elbo", "test_elbo", "test_elbo_se", "seconds"}
    assert [(h["epoch"], h["estimator"]) for h in straight.history] == [
        (e, name) for e in range(3) for name in ("pathwise", "score")
    ]
    assert _without_timing(resumed.history) == _without_timing(straight.history)
    assert _without_timing(resumed.variance) == _without_timing(straight.variance)
    assert _without_timing(resumed.comparison) == _without_timing(straight.comparison)
    assert {(r["epoch"], r["trained_with"], r["measured"], r["group"]) for r in straight.variance} == {
        (e, t, m, g)
        for e in range(3)
        for t in ("pathwise", "score")
        for m in ("pathwise", "score")
        for g in ("encoder", "decoder")
    }
    assert [(c["measured"], c["reference"]) for c in straight.comparison][:1] == [("score", "pathwise")]
    for a, b in zip(straight.runs, resumed.runs):
        for x, y in zip(jax.tree.leaves(a.state), jax.tree.leaves(b.state)):
            np.testing.assert_array_equal(x, y)
        assert a.data_rng.bit_generator.state == b.data_rng.bit_generator.state
    meta, arrays = load_checkpoint(tmp_path / "straight" / CHECKPOINT)
    assert meta["epoch"] == 2 and meta["backend"] == "numpyro"
    assert np.array_equal(arrays["runs/1/params/encoder.net.0.weight"], straight.runs[1].params["encoder.net.0.weight"])
    assert [label for label, _ in straight.images] == [
        "test images",
        "reconstructed (pathwise)",
        "reconstructed (score)",
        "prior samples (pathwise)",
        "prior samples (score)",
    ]
    table = summary(straight, config)  # the Pyro study's printed tables, from these rows
    assert "| score | encoder | 1 |" in table and "| 2 | score | score | pathwise | decoder |" in table

    with pytest.raises(ValueError, match="other settings"):
        train_vae_numpyro(VAEConfig(**{**config.key(), "lr": 1e-2}), tmp_path / "straight", resume=True)
    with pytest.raises(ValueError, match="past --epochs"):
        train_vae_numpyro(first, tmp_path / "straight", resume=True)
    with pytest.raises(ValueError, match="no checkpoint"):
        train_vae_numpyro(config, tmp_path / "nothing", resume=True)


@pytest.mark.slow
def test_score_function_encoder_gradient_is_unbiased():
    """ScoreFunctionELBO's encoder gradient has the pathwise gradient's mean at the same parameters (both
    estimate the gradient of the same ELBO): every element's difference of means within the Bonferroni
    bound at family-wise level 1e-3 (MeanAgreement, about 5.3 standard errors over ~8,500 elements with
    a nonzero standard error), R = 500 estimates each on 20 training images. The same check catches
    NumPyro's own Trace_ELBO on the same guide forced to the score function, which drops the score term:
    max |z| was 72 there against 4.2 for ScoreFunctionELBO."""
    x, vae, reps, confidence = DATA.train[:20], make_vae(), 500, 0.999
    params, _ = init_params(vae.model, vae.guide, jax.random.PRNGKey(0), x, num_data=NUM_DATA)
    encoder = [name for name in params if name.startswith("encoder.")]

    def measure(elbo, guide, seed):
        return gradient_variance(elbo, vae.model, guide, x, params=params, num_reps=reps, seed=seed, num_data=NUM_DATA)

    pathwise = measure(PathwiseELBO(), vae.guide, 1)
    score = MeanAgreement.from_stats(measure(ScoreFunctionELBO(), vae.guide, 2), pathwise, encoder, confidence)
    assert score.agrees, score
    biased = measure(Trace_ELBO(), force_estimator(vae.guide, "score"), 3)
    assert not MeanAgreement.from_stats(biased, pathwise, encoder, confidence).agrees


def test_evaluate_elbo_is_seeded_and_has_a_standard_error():
    vae = make_vae()
    params, _ = init_params(vae.model, vae.guide, jax.random.PRNGKey(0), DATA.test[:5])
    first = evaluate_elbo(vae.model, vae.guide, params, DATA.test, num_particles=20, seed=4)
    assert evaluate_elbo(vae.model, vae.guide, params, DATA.test, num_particles=20, seed=4) == first
    assert first[1] > 0 and -60 < first[0] < -40  # untrained: about -50 nats per image
    with pytest.raises(ValueError, match="at least 2"):
        evaluate_elbo(vae.model, vae.guide, params, DATA.test, num_particles=1)


def test_make_run_elbo_options_and_other_models():
    elbo = make_run_elbo("score+akl:4")
    assert isinstance(elbo, ScoreFunctionELBO) and elbo.num_particles == 4 and elbo.analytic_kl
    assert make_run_elbo(parse_spec("score+akl:4")) is elbo  # one object per spec
    with pytest.raises(ValueError, match="unknown model 'beta'"):
        models.numpyro_vae("beta", 64, (8,), 2)


def test_bad_sizes_runs_and_checkpoints_are_refused(tmp_path):
    with pytest.raises(ValueError, match="layer sizes must be positive"):
        make_vae(hidden=(0,))
    with pytest.raises(ValueError, match="at least two positive layer sizes"):
        MLP("net", (64,))
    with pytest.raises(ValueError, match="a batch of 20 rows out of num_data=10"):
        data_plate("data", 20, 10)
    vae, x = make_vae(), DATA.train[:5]
    with pytest.raises(ValueError, match="learning rate must be positive"):
        TrainingRun("pathwise", vae.model, vae.guide, make_run_elbo("pathwise"), 0.0, 0, x, NUM_DATA)
    run = TrainingRun("pathwise", vae.model, vae.guide, make_run_elbo("pathwise"), 1e-3, 0, x, NUM_DATA)
    meta, arrays = run.state_dict()
    score = TrainingRun("score", vae.model, vae.guide, make_run_elbo("score"), 1e-3, 0, x, NUM_DATA)
    with pytest.raises(ValueError, match="checkpoint of run 'pathwise' loaded into run 'score'"):
        score.load_state_dict(meta, arrays)
    small = make_vae(hidden=(32,))
    other = TrainingRun("pathwise", small.model, small.guide, make_run_elbo("pathwise"), 1e-3, 0, x, NUM_DATA)
    with pytest.raises(ValueError, match="SVI state does not fit this model and optimizer"):
        other.load_state_dict(meta, arrays)
    meta = {"format": 2, "config": VAEConfig().key(), "runs": []}
    save_checkpoint({**meta, "backend": "pyro"}, {}, tmp_path / CHECKPOINT)
    with pytest.raises(ValueError, match="a checkpoint of the pyro backend, not numpyro"):
        train_vae_numpyro(VAEConfig(), tmp_path, resume=True)
    save_checkpoint({**meta, "backend": "numpyro"}, {}, tmp_path / CHECKPOINT)
    with pytest.raises(ValueError, match=r"holds the runs \[\], not the runs \['pathwise'\]"):
        train_vae_numpyro(VAEConfig(), tmp_path, resume=True)
    with pytest.raises(ValueError, match="holds a run.*--resume.*--overwrite"):
        train_vae_numpyro(VAEConfig(), tmp_path)


def test_imports_without_torch_or_pyro():
    """The NumPyro VAEs, their training and `compare --backend numpyro`'s targets load neither torch nor
    Pyro (refused by an import hook here)."""
    code = """
import importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "pyro"}:
            raise ImportError(name + " is blocked for this test")
sys.meta_path.insert(0, Refuse())
from ppl_reparam.models.vae_numpyro import make_vae
from ppl_reparam.models.discrete_vae_numpyro import make_discrete_vae
from ppl_reparam.numpyro.training import VAEStudy, make_run_elbo
from ppl_reparam.training import train_vae
from ppl_reparam.cli.compare import target_of
print(make_vae().encoder.layers, make_run_elbo("score+ma"), make_discrete_vae(temperature=0.5).decoder.layers)
print(target_of("numpyro", "toy", 0, 100, 2.0, None, None).params)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "encoder.net.0" in result.stdout and "decoder.net.2" in result.stdout and "'theta'" in result.stdout


def test_vae_cli_backend_numpyro(tmp_path):
    from ppl_reparam import cli

    args = ["vae", "--backend", "numpyro", "--epochs", "1", "--hidden", "16", "--latent-dim", "2",
            "--variance-reps", "0", "--test-particles", "4", "--out", str(tmp_path), "--quiet"]
    assert cli.main(args) == 0
    assert (tmp_path / "history.csv").exists() and (tmp_path / "checkpoint.npz").exists()


EVERY_SPEC = ("pathwise+stl", "score+akl", "score+b=3", "score+rloo:3", "score+ma", "score+learned", "iwae:3",
              "iwae-vimco:3", "iwae-dreg:3")


def test_every_spec_trains(tmp_path):
    """Every estimator spec trains under the NumPyro backend (their gradients are checked against exact
    ones in test_numpyro_variance_reduction.py and test_numpyro_backend.py)."""
    config = VAEConfig(estimators=EVERY_SPEC, compare=True, epochs=1, hidden=(8,), latent_dim=2, batch_size=700,
                       variance_reps=0, test_particles=4)
    result = train_vae_numpyro(config, tmp_path, progress=False)
    assert [h["estimator"] for h in result.history] == list(EVERY_SPEC) * 2
    assert all(math.isfinite(h["test_elbo"]) and h["test_elbo"] < 0 for h in result.history)
    trained = [h for h in result.history if h["epoch"] == 1]
    assert all(math.isfinite(h["train_elbo"]) for h in trained)


def test_stateful_baselines_resume_bit_for_bit(tmp_path):
    """A moving average's and a learned baseline's states (NumPyro mutable state) are in the checkpoint:
    a resumed study equals the uninterrupted one."""
    config = VAEConfig(estimators=("score+ma", "score+learned"), compare=True, epochs=2, hidden=(8,), latent_dim=2,
                       batch_size=400, variance_reps=0, test_particles=4)
    straight = train_vae_numpyro(config, tmp_path / "straight", progress=False)
    train_vae_numpyro(replace(config, epochs=1), tmp_path / "resumed", progress=False)
    resumed = train_vae_numpyro(config, tmp_path / "resumed", resume=True, progress=False)
    for a, b in zip(straight.history, resumed.history, strict=True):
        a.pop("seconds"), b.pop("seconds")
        np.testing.assert_equal(a, b)
