"""IWAE with pathwise, VIMCO and DReG gradients against the exact gradient of the bound.

K = 2 on conjugate Normal models: the bound is a 2-dimensional Gaussian integral, computed to
near machine precision by Gauss-Hermite quadrature (80 nodes a dimension) and differentiated by
autograd. K = 3 on a Bernoulli latent: the bound is a finite sum over {0, 1}^3. Each measured mean
must lie within 5.5 standard errors of the exact gradient (two-sided tail 3.8e-8 per element).
"""

import itertools
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy.special import logsumexp

from ppl_reparam import iwae as core
from ppl_reparam.pyro import gradient_variance
from ppl_reparam.pyro.iwae import IWAE, vimco_signal
from ppl_reparam.pyro.variance import trace_params

K_SE = 5.5
DATA = torch.tensor([0.4, 1.5, -0.2])


def model():
    z = pyro.sample("z", dist.Normal(pyro.param("mu", torch.tensor(2.0)), 1.0))
    with pyro.plate("obs", len(DATA)):
        pyro.sample("x", dist.Normal(z, 1.0), obs=DATA)


def guide():
    m = pyro.param("m", torch.tensor(0.1))
    s = pyro.param("s", torch.tensor(0.9), constraint=dist.constraints.positive)
    pyro.sample("z", dist.Normal(m, s))


def iwae_2(m, s, data, mu=None):
    """L_2 for z ~ N(mu, 1), x_j ~ N(z, 1) and q = N(m, s), by 2-d Gauss-Hermite quadrature (float64)."""
    t, w = np.polynomial.hermite.hermgauss(80)
    eps = torch.tensor(t * math.sqrt(2.0))
    weights = torch.tensor(w / math.sqrt(math.pi))
    m, s = m.double(), s.double()
    z = m + s * eps
    mu = torch.zeros((), dtype=torch.float64) if mu is None else mu.double()
    log_w = (dist.Normal(mu, 1.0).log_prob(z) + dist.Normal(z[:, None], 1.0).log_prob(data.double()).sum(-1)
             - dist.Normal(m, s).log_prob(z))
    bound = torch.logsumexp(torch.stack(torch.broadcast_tensors(log_w[:, None], log_w[None, :])), 0) - math.log(2)
    return (weights[:, None] * weights[None, :] * bound).sum()


def exact_iwae_2():
    return -iwae_2(pyro.param("m"), pyro.param("s"), DATA, pyro.param("mu"))


def assert_matches_exact(stats, leaves, exact_loss):
    exact = torch.autograd.grad(exact_loss(), list(leaves.values()))
    for name, grad in zip(leaves, exact):
        s = stats[name]
        assert abs(s.mean - grad.item()) <= K_SE * s.standard_error, (name, s.mean, grad, s.standard_error)


@pytest.mark.parametrize("estimator", ["pathwise", "score", "dreg"])
def test_gradient_of_iwae_2_is_unbiased(estimator):
    # The guide's parameters m, s and the model's prior mean mu.
    guide()
    stats = gradient_variance(IWAE(num_particles=2, estimator=estimator), model, guide, num_reps=800, seed=0)
    assert_matches_exact(stats, trace_params(model, guide), exact_iwae_2)


@pytest.mark.parametrize("estimator", ["pathwise", "dreg"])
def test_subsampled_local_latents(estimator):
    # z_i ~ N(0, 1), x_i ~ N(z_i, 1) for 4 points, 2 a minibatch (scale 2): the bound is per point and
    # the exact gradient is that of sum_i L_2,i (each by quadrature). DReG replays the model on the
    # same minibatch.
    data = torch.tensor([0.4, 1.5, -0.2, 2.0])

    def local_model():
        with pyro.plate("data", 4, subsample_size=2) as idx:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=data[idx])

    def local_guide():
        m = pyro.param("m", torch.tensor([0.1, 0.5, -0.3, 1.0]))
        s = pyro.param("s", torch.full((4,), 0.8), constraint=dist.constraints.positive)
        with pyro.plate("data", 4, subsample_size=2) as idx:
            pyro.sample("z", dist.Normal(m[idx], s[idx]))

    def exact():
        m, s = pyro.param("m"), pyro.param("s")
        return -sum(iwae_2(m[i], s[i], data[i : i + 1]) for i in range(4))

    local_guide()
    stats = gradient_variance(IWAE(num_particles=2, estimator=estimator), local_model, local_guide,
                              num_reps=800, seed=0)
    leaves = trace_params(local_model, local_guide)
    grads = torch.autograd.grad(exact(), list(leaves.values()))
    for name, grad in zip(leaves, grads):
        st = stats[name]
        assert (abs(st.mean - grad.numpy()) <= K_SE * st.standard_error).all(), (name, st.mean, grad)


def test_loss_estimates_the_bound():
    # The mean of 800 loss estimates is within 5 standard errors of -L_2.
    guide()
    pyro.set_rng_seed(0)
    losses = torch.tensor([IWAE(num_particles=2).loss(model, guide) for _ in range(800)])
    assert abs(losses.mean() - exact_iwae_2().item()) <= 5 * losses.std() / math.sqrt(len(losses))


def test_vimco_signal_against_its_definition():
    log_w = torch.tensor([[0.3, -1.0], [2.0, 0.5], [-0.7, 0.1], [1.1, 1.9]])  # K = 4 samples, 2 elements
    k = log_w.shape[0]
    expected = torch.empty_like(log_w)
    for i in range(k):
        others = torch.cat([log_w[:i], log_w[i + 1 :]])
        replaced = torch.cat([others, others.mean(0, keepdim=True)])
        expected[i] = torch.logsumexp(log_w, 0) - torch.logsumexp(replaced, 0)
    torch.testing.assert_close(vimco_signal(log_w), expected)


@pytest.mark.parametrize("shape", [(4,), (5, 3, 2)])
@pytest.mark.parametrize("backend", ["pyro", "numpyro"])
def test_core_vimco_signal_against_numpy(backend, shape):
    # ppl_reparam.iwae.vimco_signal on each backend's arrays (torch float64, JAX float32) against its
    # definition in NumPy float64, on random log weights of K = shape[0] samples.
    log_w = np.random.default_rng(0).normal(scale=3.0, size=shape)
    expected = np.empty_like(log_w)
    for k in range(shape[0]):
        others = np.delete(log_w, k, axis=0)
        replaced = np.concatenate([others, others.mean(0, keepdims=True)])
        expected[k] = logsumexp(log_w, 0) - logsumexp(replaced, 0)
    if backend == "pyro":
        from ppl_reparam.pyro.iwae import OPS

        np.testing.assert_allclose(core.vimco_signal(torch.from_numpy(log_w), OPS).numpy(), expected, rtol=1e-12)
    else:
        jnp = pytest.importorskip("jax.numpy")
        from ppl_reparam.numpyro.iwae import OPS

        signal = core.vimco_signal(jnp.asarray(log_w, dtype=jnp.float32), OPS)
        np.testing.assert_allclose(np.asarray(signal), expected, rtol=1e-5, atol=1e-5)


def test_batch_dims_left_of_max_plate_nesting_are_a_value_error():
    # x's log density has a batch dim of 5 that no plate declares, left of max_plate_nesting = 1 where
    # Pyro's shape checks do not look: the log weights would be (5, K, 1), not (K, 1).
    def wide_model():
        with pyro.plate("data", 4):
            pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(torch.zeros(5, 1, 1), 1.0), obs=torch.zeros(5, 1, 1))

    def plate_guide():
        with pyro.plate("data", 4):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match=r"shape \(5, 3, 1\), not \(3, \.\.\.\).*sites \['x'\].*to_event"):
        IWAE(num_particles=3, max_plate_nesting=1).loss(wide_model, plate_guide)


def test_dreg_has_lower_variance_than_pathwise_for_the_guide():
    # Tucker et al.: DReG's guide gradient beats the IWAE pathwise one; the upper 1-1e-6 bound of the
    # DReG variance must lie below the lower bound of the pathwise one (K = 8, where the gap is large).
    guide()
    measured = {
        e: gradient_variance(IWAE(num_particles=8, estimator=e), model, guide, num_reps=400, seed=1,
                             confidence=1 - 1e-6)["m"]
        for e in ("pathwise", "dreg")
    }
    assert measured["dreg"].variance_ci[1] < measured["pathwise"].variance_ci[0]


def test_vimco_on_a_bernoulli_latent_against_enumeration():
    # z ~ Bernoulli(0.3), x ~ N(2 z, 1), x = 1.2; guide Bernoulli(sigmoid(phi)); K = 3.
    x = torch.tensor(1.2)
    k = 3

    def bern_model():
        z = pyro.sample("z", dist.Bernoulli(0.3))
        pyro.sample("x", dist.Normal(2 * z, 1.0), obs=x)

    def bern_guide():
        pyro.sample("z", dist.Bernoulli(logits=pyro.param("phi", torch.tensor(0.4))))

    def exact():
        q = dist.Bernoulli(logits=pyro.param("phi"))
        total = 0.0
        for zs in itertools.product([0.0, 1.0], repeat=k):
            z = torch.tensor(zs)
            log_w = dist.Bernoulli(0.3).log_prob(z) + dist.Normal(2 * z, 1.0).log_prob(x) - q.log_prob(z)
            total = total + q.log_prob(z).sum().exp() * (torch.logsumexp(log_w, 0) - math.log(k))
        return -total

    bern_guide()
    stats = gradient_variance(IWAE(num_particles=k, estimator="score"), bern_model, bern_guide, num_reps=800)
    assert_matches_exact(stats, trace_params(bern_model, bern_guide), exact)
    with pytest.raises(ValueError, match=r"IWAE\(estimator='dreg'\) needs reparameterized guide sites.*site 'z'"):
        IWAE(num_particles=k, estimator="dreg").loss(bern_model, bern_guide)


def test_iwae_argument_errors():
    with pytest.raises(ValueError, match="K >= 2"):
        IWAE(num_particles=1)
    with pytest.raises(ValueError, match="unknown IWAE estimator 'reinforce'"):
        IWAE(estimator="reinforce")


def test_per_data_point_bound_with_local_latents():
    # Every site in the data plate: the bound is taken per data point (z_i independent), so it
    # equals the sum of per-point bounds; with a guide equal to the posterior, w is constant and the
    # bound is log p(x) exactly: sum_i log N(x_i; 0, 2).
    data = torch.tensor([0.3, -1.0, 2.2])

    def local_model():
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=data)

    def posterior_guide():
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Normal(data / 2, math.sqrt(0.5)))

    loss = IWAE(num_particles=4).loss(local_model, posterior_guide)
    assert loss == pytest.approx(-dist.Normal(0.0, math.sqrt(2.0)).log_prob(data).sum().item(), rel=1e-5)
