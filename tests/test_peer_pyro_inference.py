"""Convergence of SVI under this package's ELBOs on Pyro's conjugate-model inference tests.

Adapted from Pyro's ``tests/infer/test_inference.py`` (Copyright Contributors to the Pyro project,
Apache-2.0; https://github.com/pyro-ppl/pyro). How the cases were adapted:

- Conjugate models whose posterior is known in closed form; the guide starts near it and SVI must
  end within Pyro's tolerance after Pyro's number of steps, with Pyro's optimizer settings.
  ``Trace_ELBO`` on a reparameterized guide becomes ``PathwiseELBO``; on a non-reparameterized guide
  (``fakes.Nonreparameterized*``) ``ScoreFunctionELBO``; ``TraceMeanField_ELBO`` becomes
  ``analytic_kl=True``. Each test fixes its seed (Pyro's suite runs in float64; these in float32).
- Kept, one variant each for the time budget (an SVI step costs 2-4 ms here, so each of these takes
  6-25 s): Normal-Normal with ``.to_event(1)`` and a data plate, under ``analytic_kl=True``
  (``test_elbo_analytic_kl``, 3000 steps); Exponential-Gamma under the score function
  (``nonreparam``, 10000 steps); Bernoulli-Beta through Beta's implicit reparameterization with
  ``num_particles=2, vectorize_particles=True, max_plate_nesting=1``
  (``test_elbo_reparameterized_vectorized``, 5000 steps). Also the fixed model/guide parameters test
  and the safety tests (duplicate names, extra guide sites), which are cheap, under both ELBOs.
- Left out for time; each was checked to pass Pyro's bar when porting: Normal-Normal pathwise (5000
  steps; its initial guide is already within Pyro's tolerance, so it only catches divergence) and
  score function (15000 steps); Bernoulli-Beta score function, vectorized (5000 steps) and not
  (10000 steps); pathwise Exponential-Gamma (5000 steps). Not run: the non-vectorized pathwise
  Bernoulli-Beta (10000 steps) and Poisson-Gamma (the Exponential-Gamma structure again,
  10000-25000 steps). Exponential-Gamma with ``ShapeAugmentedGamma`` (RSVI, 5000 steps) passes too,
  though these ELBOs do not read its ``score_parts`` rejection correction (same seed, 200000
  particles: d/d alpha 1.1842 against Trace_ELBO's 1.1817), a difference Pyro's bar cannot see.
- Left out as not applicable: Renyi, ReweightedWakeSleep, MMD, tail-adaptive, energy distance (other
  objectives), the JIT ELBOs (marked xfail in Pyro), ``test_reparam_stable`` and the ``*_plating_sum``
  examples (Renyi / AutoDelta smoke runs).
"""

import math

import pyro
import pyro.distributions as dist
import pyro.optim as optim
import pytest
import torch
from pyro.distributions.testing import fakes
from pyro.infer import SVI
from torch.distributions import constraints

from ppl_reparam.pyro import PathwiseELBO, ScoreFunctionELBO


def param_mse(name, target):
    return torch.sum(torch.pow(target - pyro.param(name), 2.0)).item()


def param_abs_error(name, target):
    return torch.sum(torch.abs(target - pyro.param(name))).item()


# --------------------------------------------------------------------------- NormalNormal
LAM0 = torch.tensor([0.1, 0.1])  # precision of prior
LOC0 = torch.tensor([0.0, 0.5])  # prior mean
LAM = torch.tensor([6.0, 4.0])  # known precision of observation noise
NN_DATA = torch.tensor([[-0.1, 0.3], [0.00, 0.4], [0.20, 0.5], [0.10, 0.7]])
ANALYTIC_LAM_N = LAM0 + len(NN_DATA) * LAM
ANALYTIC_LOG_SIG_N = -0.5 * torch.log(ANALYTIC_LAM_N)
ANALYTIC_LOC_N = NN_DATA.sum(0) * (LAM / ANALYTIC_LAM_N) + LOC0 * (LAM0 / ANALYTIC_LAM_N)


@pytest.mark.parametrize(
    "make_elbo,n_steps",
    [
        (lambda: PathwiseELBO(analytic_kl=True), 3000),  # Pyro: test_elbo_analytic_kl (TraceMeanField_ELBO)
    ],
    ids=["pathwise-analytic_kl"],
)
def test_normal_normal(make_elbo, n_steps):
    pyro.set_rng_seed(0)

    def model():
        loc_latent = pyro.sample("loc_latent", dist.Normal(LOC0, torch.pow(LAM0, -0.5)).to_event(1))
        with pyro.plate("data", len(NN_DATA)):
            pyro.sample("obs", dist.Normal(loc_latent, torch.pow(LAM, -0.5)).to_event(1), obs=NN_DATA)
        return loc_latent

    def guide():
        loc_q = pyro.param("loc_q", ANALYTIC_LOC_N.detach() + 0.134)
        log_sig_q = pyro.param("log_sig_q", ANALYTIC_LOG_SIG_N.detach() - 0.14)
        pyro.sample("loc_latent", dist.Normal(loc_q, torch.exp(log_sig_q)).to_event(1))

    svi = SVI(model, guide, optim.Adam({"lr": 0.001}), loss=make_elbo())
    for _ in range(n_steps):
        svi.step()

    assert param_mse("loc_q", ANALYTIC_LOC_N) == pytest.approx(0.0, abs=0.05)
    assert param_mse("log_sig_q", ANALYTIC_LOG_SIG_N) == pytest.approx(0.0, abs=0.05)


# ------------------------------------------------------------------------ ExponentialGamma
@pytest.mark.parametrize(
    "gamma_dist,make_elbo,n_steps",
    [
        (fakes.NonreparameterizedGamma, lambda: ScoreFunctionELBO(max_plate_nesting=1), 10000),  # Pyro: nonreparam
    ],
    ids=["score"],
)
def test_exponential_gamma(gamma_dist, make_elbo, n_steps):
    pyro.set_rng_seed(0)
    alpha0 = torch.tensor(1.0)  # gamma prior hyperparameter
    beta0 = torch.tensor(1.0)  # gamma prior hyperparameter
    n_data = 2
    data = torch.tensor([3.0, 2.0])  # two observations
    alpha_n = alpha0 + torch.tensor(float(n_data))  # posterior alpha
    beta_n = beta0 + torch.sum(data)  # posterior beta
    prec = 0.2 if gamma_dist.has_rsample else 0.25

    def model(alpha0, beta0, alpha_n, beta_n):
        lambda_latent = pyro.sample("lambda_latent", gamma_dist(alpha0, beta0))
        with pyro.plate("data", n_data):
            pyro.sample("obs", dist.Exponential(lambda_latent), obs=data)
        return lambda_latent

    def guide(alpha0, beta0, alpha_n, beta_n):
        alpha_q = pyro.param("alpha_q", alpha_n * math.exp(0.17), constraint=constraints.positive)
        beta_q = pyro.param("beta_q", beta_n / math.exp(0.143), constraint=constraints.positive)
        pyro.sample("lambda_latent", gamma_dist(alpha_q, beta_q))

    svi = SVI(model, guide, optim.Adam({"lr": 0.0003, "betas": (0.97, 0.999)}), loss=make_elbo())
    for _ in range(n_steps):
        svi.step(alpha0, beta0, alpha_n, beta_n)

    assert pyro.param("alpha_q").item() == pytest.approx(alpha_n.item(), abs=prec)
    assert pyro.param("beta_q").item() == pytest.approx(beta_n.item(), abs=prec)


# --------------------------------------------------------------------------- BernoulliBeta
@pytest.mark.parametrize(
    "reparameterized,make_elbo",
    [
        # Pyro: test_elbo_reparameterized_vectorized (Trace_ELBO on Beta: implicit reparameterization)
        (True, lambda: PathwiseELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1)),
    ],
    ids=["pathwise-vectorized"],
)
def test_bernoulli_beta(reparameterized, make_elbo):
    pyro.set_rng_seed(0)
    n_steps = 5000
    alpha0 = torch.tensor(1.0)  # beta prior hyperparameter
    beta0 = torch.tensor(1.0)  # beta prior hyperparameter
    data = torch.tensor([0.0, 1.0, 1.0, 1.0])
    alpha_n = alpha0 + data.sum()  # posterior alpha
    beta_n = beta0 - data.sum() + torch.tensor(float(len(data)))  # posterior beta
    log_alpha_n, log_beta_n = torch.log(alpha_n), torch.log(beta_n)
    Beta = dist.Beta if reparameterized else fakes.NonreparameterizedBeta

    def model():
        p_latent = pyro.sample("p_latent", Beta(alpha0, beta0))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Bernoulli(p_latent), obs=data)
        return p_latent

    def guide():
        alpha_q_log = pyro.param("alpha_q_log", log_alpha_n + 0.17)
        beta_q_log = pyro.param("beta_q_log", log_beta_n - 0.143)
        pyro.sample("p_latent", Beta(torch.exp(alpha_q_log), torch.exp(beta_q_log)))

    svi = SVI(model, guide, optim.Adam({"lr": 0.001, "betas": (0.97, 0.999)}), loss=make_elbo())
    for _ in range(n_steps):
        svi.step()

    assert param_abs_error("alpha_q_log", log_alpha_n) == pytest.approx(0.0, abs=0.08)
    assert param_abs_error("beta_q_log", log_beta_n) == pytest.approx(0.0, abs=0.08)


# ---------------------------------------------------------------------- TestFixedModelGuide
ALPHA_Q_LOG_0 = 0.17 * torch.ones(1)
BETA_Q_LOG_0 = 0.19 * torch.ones(1)
ALPHA_P_LOG_0 = 0.11 * torch.ones(1)
BETA_P_LOG_0 = 0.13 * torch.ones(1)


def fixedness_holds(elbo, fixed_parts):
    """Pyro's TestFixedModelGuide.do_test_fixedness: parameters with learning rate 0 stay put."""
    pyro.clear_param_store()
    data = torch.tensor([2.0])

    def model():
        alpha_p_log = pyro.param("alpha_p_log", ALPHA_P_LOG_0.clone())
        beta_p_log = pyro.param("beta_p_log", BETA_P_LOG_0.clone())
        alpha_p, beta_p = torch.exp(alpha_p_log), torch.exp(beta_p_log)
        lambda_latent = pyro.sample("lambda_latent", dist.Gamma(alpha_p, beta_p))
        pyro.sample("obs", dist.Poisson(lambda_latent), obs=data)
        return lambda_latent

    def guide():
        alpha_q_log = pyro.param("alpha_q_log", ALPHA_Q_LOG_0.clone())
        beta_q_log = pyro.param("beta_q_log", BETA_Q_LOG_0.clone())
        alpha_q, beta_q = torch.exp(alpha_q_log), torch.exp(beta_q_log)
        pyro.sample("lambda_latent", dist.Gamma(alpha_q, beta_q))

    def per_param_args(param_name):
        if "model" in fixed_parts and "p_" in param_name:
            return {"lr": 0.0}
        if "guide" in fixed_parts and "q_" in param_name:
            return {"lr": 0.0}
        return {"lr": 0.01}

    svi = SVI(model, guide, optim.Adam(per_param_args), loss=elbo)
    for _ in range(3):
        svi.step()

    model_unchanged = torch.equal(pyro.param("alpha_p_log").data, ALPHA_P_LOG_0) and torch.equal(
        pyro.param("beta_p_log").data, BETA_P_LOG_0
    )
    guide_unchanged = torch.equal(pyro.param("alpha_q_log").data, ALPHA_Q_LOG_0) and torch.equal(
        pyro.param("beta_q_log").data, BETA_Q_LOG_0
    )
    # Added: what is not fixed moves (so that the check cannot pass on an ELBO with no gradients).
    moved = ("model" in fixed_parts or not model_unchanged) and ("guide" in fixed_parts or not guide_unchanged)
    error = ("model" in fixed_parts and not model_unchanged) or ("guide" in fixed_parts and not guide_unchanged)
    return moved and not error


@pytest.mark.parametrize("make_elbo", [ScoreFunctionELBO, PathwiseELBO], ids=["score", "pathwise"])
@pytest.mark.parametrize(
    "fixed_parts", [["model"], ["guide"], ["model", "guide"], ["bogus_tag"]],
    ids=["model_fixed", "guide_fixed", "both_fixed", "free"],
)
def test_fixed_model_guide(make_elbo, fixed_parts):
    pyro.set_rng_seed(0)
    assert fixedness_holds(make_elbo(), fixed_parts)


# ------------------------------------------------------------------------------ SafetyTests
def _safety_guide():
    p = pyro.param("p", torch.ones(1, requires_grad=True))
    pyro.sample("loc_q", dist.Normal(torch.zeros(1), p))
    pyro.sample("loc_q_2", dist.Normal(torch.zeros(1), p))


@pytest.mark.parametrize("make_elbo", [ScoreFunctionELBO, PathwiseELBO], ids=["score", "pathwise"])
def test_duplicate_names(make_elbo):
    def model_dup():
        pyro.param("loc_q", torch.ones(1, requires_grad=True))
        pyro.sample("loc_q", dist.Normal(torch.zeros(1), torch.ones(1)))

    svi = SVI(model_dup, _safety_guide, optim.Adam({"lr": 0.001}), loss=make_elbo())
    with pytest.raises(RuntimeError):
        svi.step()


@pytest.mark.parametrize("make_elbo", [ScoreFunctionELBO, PathwiseELBO], ids=["score", "pathwise"])
def test_extra_samples(make_elbo):
    def model():
        pyro.sample("loc_q", dist.Normal(torch.zeros(1), torch.ones(1)))

    svi = SVI(model, _safety_guide, optim.Adam({"lr": 0.001}), loss=make_elbo())
    with pytest.warns(Warning):
        svi.step()


@pytest.mark.parametrize("make_elbo", [ScoreFunctionELBO, PathwiseELBO], ids=["score", "pathwise"])
def test_duplicate_obs_name(make_elbo):
    def model_obs_dup():
        pyro.sample("loc_q", dist.Normal(torch.zeros(1), torch.ones(1)))
        pyro.sample("loc_q", dist.Normal(torch.zeros(1), torch.ones(1)), obs=torch.zeros(1))

    svi = SVI(model_obs_dup, _safety_guide, optim.Adam({"lr": 0.001}), loss=make_elbo())
    with pytest.raises(RuntimeError):
        svi.step()
