"""A corpus of small NumPyro model/guide pairs with varied dependency structure, for property tests.

The NumPyro counterpart of ``corpus_pyro``: the same structures where they translate, plus NumPyro's
own ``test_tracegraph_gaussian_chain`` model and guide. Each entry of :data:`CORPUS` is a :class:`Case`.
Every parameter starts from a fixed value (``numpyro.param`` with a fixed array, AutoGuides with
``init_to_value``), so ``SVI(...).init`` gives the same parameters under any key. Neural networks are
written with ``numpyro.param`` weights whose initial values are fixed arrays (no flax / haiku).

Differences from the Pyro corpus: no ``pyro.markov`` (NumPyro's ``markov`` needs funsor; the sequences are
plain Python loops); NumPyro's AutoNormal draws each latent directly (a TransformedDistribution site), so
the guide-only auxiliary sites are AutoDiagonalNormal's ``_auto_latent`` (on a one-latent model, see
``auto_diagonal_normal_positive``) and a hand-written ``is_auxiliary`` site; NumPyro has no
OneHotCategorical (ss_vae_M2's y is a Categorical, one-hot encoded after sampling); every plate is sized
(Pyro's ss_vae_M2 uses ``plate("data")`` without a size). Models adapted from Pyro's or NumPyro's
examples and tests say so in their docstrings: Pyro and NumPyro are Apache-2.0, Copyright Contributors
to the Pyro project.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.handlers import mask, scale
from numpyro.infer.autoguide import AutoDiagonalNormal, AutoNormal
from numpyro.infer.initialization import init_to_value


@dataclass(frozen=True)
class Case:
    """One model/guide pair and the arguments both are called with."""

    name: str
    model: Callable
    guide: Callable
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


CORPUS: list[Case] = []

SCALED_OR_MASKED_GUIDE_SITES = frozenset({"subsample_local_global", "masked_sites", "scaled_sites"})
"""Cases with a guide latent under a scale (a subsampled plate, ``handlers.scale``) or a mask.

NumPyro's TraceGraph_ELBO builds the score-function term of a guide site from the site's *scaled and
masked* ``log_prob`` (``numpyro.infer.util.get_importance_trace`` scales it, a MaskedDistribution zeroes
it), while Pyro leaves the score function unscaled and unmasked (``ScoreParts.scale_and_mask``: "the
``score_function`` term should not be scaled or masked"). On these cases NumPyro's TraceGraph_ELBO and
an ELBO following Pyro's convention give different gradients on the same draws; on the others they agree."""

_MAKERS: dict[str, Callable[[], tuple[Callable, Callable]]] = {}


def fresh(case: Case) -> tuple[Callable, Callable]:
    """A newly built (model, guide) for ``case``: new AutoGuide instances with the same fixed initial values
    (for plain functions, new closures equivalent to ``case.model``, ``case.guide``)."""
    return _MAKERS[case.name]()


def _case(args: tuple = (), kwargs: dict[str, Any] | None = None):
    """Register the decorated maker (returning (model, guide)) as a corpus entry named after it."""

    def register(make: Callable[[], tuple[Callable, Callable]]):
        if make.__name__ in _MAKERS:
            raise ValueError(f"duplicate corpus case {make.__name__!r}")
        _MAKERS[make.__name__] = make
        model, guide = make()
        CORPUS.append(Case(make.__name__, model, guide, tuple(args), dict(kwargs or {})))
        return make

    return register


def _pattern(shape, mean: float, spread: float) -> jax.Array:
    """A fixed, non-constant array: ``mean + spread * cos(0, 1, 2, ...)`` (a stand-in for random inits)."""
    n = int(np.prod(shape)) if len(shape) else 1
    return jnp.asarray((mean + spread * np.cos(np.arange(n, dtype=np.float32))).reshape(shape), dtype=jnp.float32)


def _dense_init(rng: np.random.RandomState, n_in: int, n_out: int) -> tuple[jax.Array, jax.Array]:
    """Fixed weights for a dense layer, drawn once at import like torch's default init, U(+-1/sqrt(n_in))."""
    bound = 1.0 / math.sqrt(n_in)
    w = rng.uniform(-bound, bound, (n_in, n_out)).astype(np.float32)
    b = rng.uniform(-bound, bound, (n_out,)).astype(np.float32)
    return jnp.asarray(w), jnp.asarray(b)


def _dense(name: str, init: tuple[jax.Array, jax.Array], x: jax.Array) -> jax.Array:
    """A dense layer whose weight and bias are ``numpyro.param`` sites ``{name}_w``, ``{name}_b``."""
    w = numpyro.param(f"{name}_w", init[0])
    b = numpyro.param(f"{name}_b", init[1])
    return x @ w + b


# ---------------------------------------------------------------------------------------- basics
Y3 = jnp.array([0.3, -0.5, 1.2])


@_case(args=(Y3,))
def single_global():
    """One global Normal latent; three Normal observations of it in a plate."""

    def model(y):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", y.shape[0]):
            numpyro.sample("obs", dist.Normal(z, 1.0), obs=y)

    def guide(y):
        loc = numpyro.param("z_loc", jnp.array(0.2))
        sd = numpyro.param("z_scale", jnp.array(0.8), constraint=constraints.positive)
        numpyro.sample("z", dist.Normal(loc, sd))

    return model, guide


@_case(args=(jnp.array(0.8), jnp.array(-0.4)))
def bernoulli_and_normal():
    """Two independent latents (one Bernoulli, one Normal), each with its own observation."""

    def model(y_b, y_z):
        b = numpyro.sample("b", dist.Bernoulli(0.4))
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("obs_b", dist.Normal(2.0 * b - 1.0, 0.7), obs=y_b)
        numpyro.sample("obs_z", dist.Normal(z, 1.0), obs=y_z)

    def guide(y_b, y_z):
        logit = numpyro.param("b_logit", jnp.array(0.3))
        loc = numpyro.param("z_loc", jnp.array(-0.1))
        sd = numpyro.param("z_scale", jnp.array(0.9), constraint=constraints.positive)
        numpyro.sample("b", dist.Bernoulli(logits=logit))
        numpyro.sample("z", dist.Normal(loc, sd))

    return model, guide


@_case(args=(jnp.array([0.9, -0.2, 1.4, 0.1, -1.0]),))
def five_bernoullis():
    """Five independent Bernoulli latents, sites ``z_0`` .. ``z_4``, each with its own Normal observation."""

    def model(y):
        for i in range(5):
            z = numpyro.sample(f"z_{i}", dist.Bernoulli(0.3 + 0.1 * i))
            numpyro.sample(f"obs_{i}", dist.Normal(z, 0.5), obs=y[i])

    def guide(y):
        probs = numpyro.param("z_probs", jnp.array([0.6, 0.3, 0.7, 0.5, 0.2]), constraint=constraints.unit_interval)
        for i in range(5):
            numpyro.sample(f"z_{i}", dist.Bernoulli(probs[i]))

    return model, guide


# ---------------------------------------------------------------------------------------- plates
YA = jnp.array([0.5, -0.3, 1.1])
YB = jnp.array([-0.8, 0.4])


@_case(args=(YA, YB))
def plates_same_dim():
    """Two latents in two non-nested plates of different sizes (3 and 2) that share dim -1."""

    def model(ya, yb):
        with numpyro.plate("a", 3, dim=-1):
            za = numpyro.sample("za", dist.Normal(0.0, 1.0))
            numpyro.sample("obs_a", dist.Normal(za, 1.0), obs=ya)
        with numpyro.plate("b", 2, dim=-1):
            zb = numpyro.sample("zb", dist.Normal(0.0, 1.0))
            numpyro.sample("obs_b", dist.Normal(zb, 1.0), obs=yb)

    def guide(ya, yb):
        la = numpyro.param("za_loc", jnp.array([0.1, -0.2, 0.3]))
        sa = numpyro.param("za_scale", jnp.array([0.7, 0.8, 0.9]), constraint=constraints.positive)
        lb = numpyro.param("zb_loc", jnp.array([-0.4, 0.2]))
        sb = numpyro.param("zb_scale", jnp.array([0.6, 1.1]), constraint=constraints.positive)
        with numpyro.plate("a", 3, dim=-1):
            numpyro.sample("za", dist.Normal(la, sa))
        with numpyro.plate("b", 2, dim=-1):
            numpyro.sample("zb", dist.Normal(lb, sb))

    return model, guide


@_case(args=(YA, jnp.array([[-0.8], [0.4]])))
def plates_different_dims():
    """Two latents in two non-nested plates of different sizes at different dims (-1 and -2)."""

    def model(ya, yb):
        with numpyro.plate("a", 3, dim=-1):
            za = numpyro.sample("za", dist.Normal(0.0, 1.0))
            numpyro.sample("obs_a", dist.Normal(za, 1.0), obs=ya)
        with numpyro.plate("b", 2, dim=-2):
            zb = numpyro.sample("zb", dist.Normal(0.0, 1.0))
            numpyro.sample("obs_b", dist.Normal(zb, 1.0), obs=yb)

    def guide(ya, yb):
        la = numpyro.param("za_loc", jnp.array([0.1, -0.2, 0.3]))
        sa = numpyro.param("za_scale", jnp.array([0.7, 0.8, 0.9]), constraint=constraints.positive)
        lb = numpyro.param("zb_loc", jnp.array([[-0.4], [0.2]]))
        sb = numpyro.param("zb_scale", jnp.array([[0.6], [1.1]]), constraint=constraints.positive)
        with numpyro.plate("a", 3, dim=-1):
            numpyro.sample("za", dist.Normal(la, sa))
        with numpyro.plate("b", 2, dim=-2):
            numpyro.sample("zb", dist.Normal(lb, sb))

    return model, guide


Y23 = jnp.array([[0.2, -0.7, 1.0], [0.5, 0.1, -0.3]])


@_case(args=(YA, Y23))
def outer_next_to_nested():
    """A latent in an outer plate (3, dim -1) next to an independent one in plates nested in it (2 x 3)."""

    def model(ya, yab):
        with numpyro.plate("a", 3, dim=-1):
            u = numpyro.sample("u", dist.Normal(0.0, 1.0))
            numpyro.sample("obs_u", dist.Normal(u, 1.0), obs=ya)
            with numpyro.plate("b", 2, dim=-2):
                v = numpyro.sample("v", dist.Normal(0.0, 1.0))
                numpyro.sample("obs_v", dist.Normal(v, 1.0), obs=yab)

    def guide(ya, yab):
        lu = numpyro.param("u_loc", jnp.array([0.3, -0.1, 0.2]))
        su = numpyro.param("u_scale", jnp.array([0.8, 0.9, 0.7]), constraint=constraints.positive)
        lv = numpyro.param("v_loc", _pattern((2, 3), 0.0, 0.3))
        sv = numpyro.param("v_scale", _pattern((2, 3), 0.8, 0.1), constraint=constraints.positive)
        with numpyro.plate("a", 3, dim=-1):
            numpyro.sample("u", dist.Normal(lu, su))
            with numpyro.plate("b", 2, dim=-2):
                numpyro.sample("v", dist.Normal(lv, sv))

    return model, guide


@_case(args=(Y23,))
def nested_both_levels():
    """Nested plates with latents at both levels: m[a] in plate a, z[b, a] ~ N(m[a], .) in plates a x b."""

    def model(y):
        with numpyro.plate("a", 3, dim=-1):
            m = numpyro.sample("m", dist.Normal(0.0, 1.0))
            with numpyro.plate("b", 2, dim=-2):
                z = numpyro.sample("z", dist.Normal(m, 0.5))
                numpyro.sample("obs", dist.Normal(z, 1.0), obs=y)

    def guide(y):
        lm = numpyro.param("m_loc", jnp.array([0.1, 0.2, -0.3]))
        sm = numpyro.param("m_scale", jnp.array([0.9, 0.8, 0.7]), constraint=constraints.positive)
        lz = numpyro.param("z_loc", _pattern((2, 3), 0.1, 0.2))
        wz = numpyro.param("z_weight", jnp.array(0.5))
        sz = numpyro.param("z_scale", _pattern((2, 3), 0.5, 0.1), constraint=constraints.positive)
        with numpyro.plate("a", 3, dim=-1):
            m = numpyro.sample("m", dist.Normal(lm, sm))
            with numpyro.plate("b", 2, dim=-2):
                numpyro.sample("z", dist.Normal(lz + wz * m, sz))

    return model, guide


Y100 = jnp.asarray(np.sin(np.arange(100.0)) + 0.5, dtype=jnp.float32)


@_case(args=(Y100,))
def subsample_local_global():
    """A subsampled plate (5 of 100) with a local latent per data point and a global latent."""

    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
        with numpyro.plate("data", y.shape[0], subsample_size=5) as ind:
            z = numpyro.sample("z", dist.Normal(mu, 1.0))
            numpyro.sample("obs", dist.Normal(z, 0.5), obs=y[ind])

    def guide(y):
        mu_loc = numpyro.param("mu_loc", jnp.array(0.4))
        mu_scale = numpyro.param("mu_scale", jnp.array(0.3), constraint=constraints.positive)
        z_loc = numpyro.param("z_loc", _pattern((y.shape[0],), 0.5, 0.5))
        z_scale = numpyro.param("z_scale", jnp.full((y.shape[0],), 0.6), constraint=constraints.positive)
        mu = numpyro.sample("mu", dist.Normal(mu_loc, mu_scale))
        with numpyro.plate("data", y.shape[0], subsample_size=5) as ind:
            numpyro.sample("z", dist.Normal(z_loc[ind] + 0.1 * mu, z_scale[ind]))

    return model, guide


@_case(args=(Y100,))
def subsample_global_only():
    """A subsampled plate (5 of 100) holding only observations; one global latent. The guide opens the
    same plate with no site in it, so the subsample indices come from the guide trace."""

    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
        with numpyro.plate("data", y.shape[0], subsample_size=5) as ind:
            numpyro.sample("obs", dist.Normal(mu, 1.0), obs=y[ind])

    def guide(y):
        loc = numpyro.param("mu_loc", jnp.array(0.3))
        sd = numpyro.param("mu_scale", jnp.array(0.2), constraint=constraints.positive)
        numpyro.sample("mu", dist.Normal(loc, sd))
        with numpyro.plate("data", y.shape[0], subsample_size=5):
            pass

    return model, guide


# ---------------------------------------------------------------------------------------- sequences
@_case(args=(jnp.array([0.7, 1.2, -0.9, 0.4]),))
def markov_bernoulli_sequence():
    """Sequential Bernoulli sites in a Python loop: z_t depends on z_{t-1} in the model; a mean-field guide."""

    def model(y):
        z = jnp.array(0.0)
        for t in range(y.shape[0]):
            z = numpyro.sample(f"z_{t}", dist.Bernoulli(0.2 + 0.6 * z))
            numpyro.sample(f"obs_{t}", dist.Normal(2.0 * z - 1.0, 1.0), obs=y[t])

    def guide(y):
        probs = numpyro.param("z_probs", jnp.array([0.6, 0.7, 0.3, 0.5]), constraint=constraints.unit_interval)
        for t in range(y.shape[0]):
            numpyro.sample(f"z_{t}", dist.Bernoulli(probs[t]))

    return model, guide


class _FakeNormal(dist.Normal):
    """A Normal without a reparameterized sampler (as in NumPyro's TraceGraph tests)."""

    reparametrized_params = []


def gaussian_chain_targets(n: int, loc0: float, data: list[float]):
    """The exact posterior of the Gaussian chain as (lambdas, kappas, locs, precisions), indexed 1..n.

    From NumPyro's test/infer/test_svi.py::test_tracegraph_gaussian_chain (Apache-2.0, Copyright
    Contributors to the Pyro project)."""
    lambdas = [1.5 * (k + 1) / n for k in range(n + 1)]
    tilde = [lambdas[0]]
    for k in range(1, n):
        tilde.append(lambdas[k] * tilde[k - 1] / (lambdas[k] + tilde[k - 1]))
    posts = [math.nan] + [lambdas[k] + tilde[k - 1] for k in range(1, n)]
    posts.append(len(data) * lambdas[n] + tilde[n - 1])
    kappas = [math.nan] + [lambdas[k] / posts[k] for k in range(1, n)]
    locs = [math.nan] + [loc0 * tilde[k - 1] / posts[k] for k in range(1, n)]
    locs.append(sum(data) * lambdas[n] / posts[n] + loc0 * tilde[n - 1] / posts[n])
    return lambdas, kappas, locs, posts


def gaussian_chain_reparam_mask(n: int) -> np.ndarray:
    """Which guide nodes the NumPyro test leaves reparameterized (its np.random.seed(0) draw)."""
    rng = np.random.RandomState(0)
    while True:
        m = rng.binomial(1, 0.3, (n,))
        if 0.5 < m.sum() < 0.4 * n:
            return m


CHAIN_N, CHAIN_LOC0, CHAIN_DATA = 7, 0.2, [-0.1, 0.03, 0.2, 0.1]
CHAIN_OFFSETS = [0.0, 0.12, -0.05, 0.08, -0.11, 0.03, 0.06, -0.09]
"""Fixed stand-ins for the test's ``0.1 * random.normal(key)`` parameter perturbations."""


@_case(args=(jnp.array(CHAIN_DATA),), kwargs={"difficulty": 0.6})
def gaussian_chain():
    """NumPyro's own TraceGraph test: a chain of 7 Gaussian latents (shape (1,)), z_k ~ N(z_{k-1}, .),
    observed through z_7; the guide runs in reverse, z_k ~ N(kappa_k z_{k+1} + loc_k, .), the nodes that the
    test's seeded mask does not flag natively non-reparameterized (FakeNormal).

    From NumPyro's test/infer/test_svi.py::test_tracegraph_gaussian_chain (Apache-2.0, Copyright
    Contributors to the Pyro project); the parameter inits' random perturbations replaced by fixed offsets."""
    n = CHAIN_N
    lambdas, kappas, locs, posts = gaussian_chain_targets(n, CHAIN_LOC0, CHAIN_DATA)
    lambdas = [jnp.array([x]) for x in lambdas]
    reparam = gaussian_chain_reparam_mask(n)

    def model(data, difficulty=0.0):
        next_mean = CHAIN_LOC0
        for k in range(1, n + 1):
            latent_dist = dist.Normal(next_mean, jnp.power(lambdas[k - 1], -0.5))
            next_mean = numpyro.sample(f"loc_latent_{k}", latent_dist)
        with numpyro.plate("data", data.shape[0]):
            numpyro.sample("obs", dist.Normal(next_mean, jnp.power(lambdas[n], -0.5)), obs=data)
        return next_mean

    def guide(data, difficulty=0.0):
        previous_sample = None
        for k in reversed(range(1, n + 1)):
            shift = difficulty * (CHAIN_OFFSETS[k] - 0.53)
            loc_q = numpyro.param(f"loc_q_{k}", jnp.array([locs[k] + shift]))
            log_sig_q = numpyro.param(f"log_sig_q_{k}", jnp.array([-0.5 * math.log(posts[k]) + shift]))
            sig_q = jnp.exp(log_sig_q)
            if k == n:
                mean_function = loc_q
            else:
                kappa_q = numpyro.param(f"kappa_q_{k}", jnp.array([kappas[k] + shift]))
                mean_function = kappa_q * previous_sample + loc_q
            family = dist.Normal if reparam[k - 1] == 1 else _FakeNormal
            previous_sample = numpyro.sample(f"loc_latent_{k}", family(mean_function, sig_q))
        return previous_sample

    return model, guide


HMM_Y = jnp.array([-0.9, 0.1, 1.3, 1.1])
HMM_TRANS = jnp.array([[0.7, 0.2, 0.1], [0.1, 0.7, 0.2], [0.2, 0.1, 0.7]])
HMM_LOCS = jnp.array([-1.0, 0.0, 1.0])


def _hmm_guide_init(t_len: int) -> jax.Array:
    init = np.full((t_len, 3, 3), 0.2) + 0.4 * np.eye(3)
    init[:, :, 2] += np.linspace(0.0, 0.3, t_len)[:, None]
    return jnp.asarray(init / init.sum(-1, keepdims=True), dtype=jnp.float32)


@_case(args=(HMM_Y,))
def hmm_categorical():
    """A hidden Markov chain of 4 Categorical states (3 values) with Normal emissions, in a Python loop;
    the guide's state t depends on its state t-1."""

    def model(y):
        x = 0
        for t in range(y.shape[0]):
            x = numpyro.sample(f"x_{t}", dist.Categorical(HMM_TRANS[x]))
            numpyro.sample(f"y_{t}", dist.Normal(HMM_LOCS[x], 0.5), obs=y[t])

    def guide(y):
        q = numpyro.param("q_trans", _hmm_guide_init(y.shape[0]), constraint=constraints.simplex)
        x = 0
        for t in range(y.shape[0]):
            x = numpyro.sample(f"x_{t}", dist.Categorical(q[t, x]))

    return model, guide


# ---------------------------------------------------------------------------------------- mixed and special sites
@_case(args=(jnp.array([0.8, 1.3]),))
def categorical_normal_mix():
    """A Categorical c and a Normal x whose loc and scale are indexed by c, in the model and the guide."""

    def model(y):
        c = numpyro.sample("c", dist.Categorical(jnp.array([0.3, 0.5, 0.2])))
        x = numpyro.sample("x", dist.Normal(jnp.array([-1.0, 0.0, 2.0])[c], jnp.array([0.5, 1.0, 0.7])[c]))
        with numpyro.plate("data", y.shape[0]):
            numpyro.sample("obs", dist.Normal(x, 0.5), obs=y)

    def guide(y):
        probs = numpyro.param("c_probs", jnp.array([0.2, 0.5, 0.3]), constraint=constraints.simplex)
        locs = numpyro.param("x_locs", jnp.array([-0.5, 0.6, 1.5]))
        scales = numpyro.param("x_scales", jnp.array([0.4, 0.6, 0.5]), constraint=constraints.positive)
        c = numpyro.sample("c", dist.Categorical(probs))
        numpyro.sample("x", dist.Normal(locs[c], scales[c]))

    return model, guide


Y4 = jnp.array([1.1, 0.4, 2.0, 0.9])


def _loc_scale_model(y):
    loc = numpyro.sample("loc", dist.Normal(0.0, 2.0))
    sd = numpyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("obs", dist.Normal(loc, sd), obs=y)


@_case(args=(Y4,))
def auto_normal_positive():
    """AutoNormal on a model with a real and a positive (LogNormal) latent; in NumPyro the positive one is
    a TransformedDistribution(Normal, exp) site (no auxiliary site)."""
    values = {"loc": jnp.array(0.5), "scale": jnp.array(1.2)}
    return _loc_scale_model, AutoNormal(_loc_scale_model, init_loc_fn=init_to_value(values=values))


def _positive_scale_model(y):
    sigma = numpyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("obs", dist.Normal(1.0, sigma), obs=y)


@_case(args=(Y4,))
def auto_diagonal_normal_positive():
    """AutoDiagonalNormal on a model with one positive (LogNormal) latent: a guide-only auxiliary site
    ``_auto_latent`` of shape (1,) feeding a Delta site through an exp transform.

    One latent only: NumPyro's ``_auto_latent`` is a Normal with batch shape (latent_dim,), not an event,
    so NumPyro's TraceGraph_ELBO adds its per-element log-density to each element's cost (with more
    latents of other shapes it fails with a broadcasting error); see ``auxiliary_guide_site``."""
    values = {"sigma": jnp.array(1.2)}
    return _positive_scale_model, AutoDiagonalNormal(_positive_scale_model, init_loc_fn=init_to_value(values=values))


COUNTS3 = jnp.array([2.0, 0.0, 5.0])


def _poisson_rates_model(counts):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("groups", counts.shape[0]):
        lam = numpyro.sample("lam", dist.Gamma(2.0, 1.0))
        numpyro.sample("obs", dist.Poisson(lam * jnp.exp(mu)), obs=counts)


@_case(args=(COUNTS3,))
def auxiliary_guide_site():
    """A hand-written AutoDiagonalNormal: one guide-only ``is_auxiliary`` site (a Normal with event shape
    (4,)) feeding Delta sites, a global real one and a plate of positive (exp-transformed) ones."""

    def guide(counts):
        loc = numpyro.param("aux_loc", jnp.array([0.1, 0.4, -0.7, 1.1]))
        sd = numpyro.param("aux_scale", jnp.full((4,), 0.1), constraint=constraints.positive)
        latent = numpyro.sample("_aux_latent", dist.Normal(loc, sd).to_event(1), infer={"is_auxiliary": True})
        numpyro.sample("mu", dist.Delta(latent[0]))
        with numpyro.plate("groups", counts.shape[0]):
            # lam = exp(u): the Delta carries log|d u / d lam| = -u, as AutoContinuous guides do
            numpyro.sample("lam", dist.Delta(jnp.exp(latent[1:]), log_density=-latent[1:]))

    return _poisson_rates_model, guide


Y_EVENT = jnp.array([[0.3, 0.1, 0.6], [0.2, 0.5, 0.2]])


@_case(args=(Y_EVENT,))
def to_event_sites():
    """``to_event`` sites: a Normal with event shape (3,) in a plate of 2, and a global Dirichlet."""

    def model(y):
        w = numpyro.sample("w", dist.Dirichlet(jnp.ones(3)))
        with numpyro.plate("rows", 2):
            z = numpyro.sample("z", dist.Normal(jnp.zeros(3), 1.0).to_event(1))
            numpyro.sample("obs", dist.Normal(w + 0.1 * z, 0.5).to_event(1), obs=y)

    def guide(y):
        conc = numpyro.param("w_conc", jnp.array([2.0, 3.0, 4.0]), constraint=constraints.positive)
        loc = numpyro.param("z_loc", _pattern((2, 3), 0.0, 0.4))
        sd = numpyro.param("z_scale", _pattern((2, 3), 0.7, 0.1), constraint=constraints.positive)
        numpyro.sample("w", dist.Dirichlet(conc))
        with numpyro.plate("rows", 2):
            numpyro.sample("z", dist.Normal(loc, sd).to_event(1))

    return model, guide


LATENT_MASK = jnp.array([True, False, True, True])
OBS_MASK = jnp.array([True, True, False, True])


@_case(args=(Y4, LATENT_MASK, OBS_MASK))
def masked_sites():
    """Masks: a latent masked with ``.mask(...)`` in model and guide, observations under ``handlers.mask``."""

    def model(y, latent_mask, obs_mask):
        with numpyro.plate("data", y.shape[0]):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0).mask(latent_mask))
            with mask(mask=obs_mask):
                numpyro.sample("obs", dist.Normal(z, 1.0), obs=y)

    def guide(y, latent_mask, obs_mask):
        loc = numpyro.param("z_loc", jnp.array([0.5, 0.1, 0.9, 0.4]))
        sd = numpyro.param("z_scale", jnp.array([0.7, 0.8, 0.6, 0.9]), constraint=constraints.positive)
        with numpyro.plate("data", y.shape[0]):
            numpyro.sample("z", dist.Normal(loc, sd).mask(latent_mask))

    return model, guide


@_case(args=(jnp.array([0.6, -0.2]),))
def scaled_sites():
    """``handlers.scale``: a Normal latent scaled by 0.5 in model and guide, an unscaled Bernoulli latent,
    observations scaled by 3."""

    def model(y):
        with scale(scale=0.5):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        b = numpyro.sample("b", dist.Bernoulli(0.5))
        with scale(scale=3.0), numpyro.plate("data", y.shape[0]):
            numpyro.sample("obs", dist.Normal(z + b, 1.0), obs=y)

    def guide(y):
        loc = numpyro.param("z_loc", jnp.array(0.1))
        sd = numpyro.param("z_scale", jnp.array(0.9), constraint=constraints.positive)
        p = numpyro.param("b_prob", jnp.array(0.3), constraint=constraints.unit_interval)
        with scale(scale=0.5):
            numpyro.sample("z", dist.Normal(loc, sd))
        numpyro.sample("b", dist.Bernoulli(p))

    return model, guide


# ---------------------------------------------------------------------------------------- Pyro's examples
SCHOOLS_Y = jnp.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SCHOOLS_SIGMA = jnp.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
SCHOOLS_DATA = jnp.asarray(np.stack([SCHOOLS_Y, SCHOOLS_SIGMA], axis=1))


def eight_schools_model(data):
    """Non-centered eight schools: theta_j = mu + tau * eta_j.

    Adapted from Pyro's examples/eight_schools (Apache-2.0, Copyright Contributors to the Pyro project).
    mu and tau are global, outside the plate, as in mcmc.py (svi.py draws them inside the plate)."""
    y, sigma = data[:, 0], data[:, 1]
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(25.0))
    with numpyro.plate("data", y.shape[0]):
        eta = numpyro.sample("eta", dist.Normal(0.0, 1.0))
        numpyro.sample("obs", dist.Normal(mu + tau * eta, sigma), obs=y)


def eight_schools_guide(data):
    """The hand-written mean-field guide of Pyro's examples/eight_schools/svi.py, tau through an exp
    transform; fixed initial values instead of random ones."""
    n = data.shape[0]
    loc_eta = numpyro.param("loc_eta", _pattern((n,), 0.0, 0.5))
    scale_eta = numpyro.param("scale_eta", jnp.full((n,), 0.1), constraint=constraints.positive)
    loc_mu = numpyro.param("loc_mu", jnp.array(4.0))
    scale_mu = numpyro.param("scale_mu", jnp.array(0.5), constraint=constraints.positive)
    loc_logtau = numpyro.param("loc_logtau", jnp.array(1.0))
    scale_logtau = numpyro.param("scale_logtau", jnp.array(0.2), constraint=constraints.positive)
    numpyro.sample("mu", dist.Normal(loc_mu, scale_mu))
    tau_dist = dist.TransformedDistribution(dist.Normal(loc_logtau, scale_logtau), dist.transforms.ExpTransform())
    numpyro.sample("tau", tau_dist)
    with numpyro.plate("data", n):
        numpyro.sample("eta", dist.Normal(loc_eta, scale_eta))


@_case(args=(SCHOOLS_DATA,))
def eight_schools():
    """Pyro's eight schools example (non-centered) with its hand-written guide; a TransformedDistribution site."""
    return eight_schools_model, eight_schools_guide


@_case(args=(SCHOOLS_DATA,))
def eight_schools_auto_normal():
    """Pyro's eight schools example (non-centered) with NumPyro's AutoNormal (HalfCauchy through a transform)."""
    values = {"mu": jnp.array(4.0), "tau": jnp.array(3.0), "eta": _pattern((8,), 0.0, 0.5)}
    return eight_schools_model, AutoNormal(eight_schools_model, init_loc_fn=init_to_value(values=values))


class SparseGammaDEF:
    """Sparse gamma deep exponential family at a tiny size (layers 3-2-2, 10 "pixels").

    Adapted from Pyro's examples/sparse_gamma_def.py (Apache-2.0, Copyright Contributors to the Pyro
    project): the same model and custom mean-field Gamma guide, in NumPyro; ``rand_tensor``
    initialisation replaced by the fixed :func:`_pattern`."""

    def __init__(self, top_width=3, mid_width=2, bottom_width=2, image_size=10):
        self.top_width = top_width
        self.mid_width = mid_width
        self.bottom_width = bottom_width
        self.image_size = image_size
        self.alpha_z = 0.1
        self.beta_z = 0.1
        self.alpha_w = 0.1
        self.beta_w = 0.3
        self.alpha_init = 0.5
        self.mean_init = 0.0
        self.sigma_init = 0.1

    def model(self, x):
        x_size = x.shape[0]
        with numpyro.plate("w_top_plate", self.top_width * self.mid_width):
            w_top = numpyro.sample("w_top", dist.Gamma(self.alpha_w, self.beta_w))
        with numpyro.plate("w_mid_plate", self.mid_width * self.bottom_width):
            w_mid = numpyro.sample("w_mid", dist.Gamma(self.alpha_w, self.beta_w))
        with numpyro.plate("w_bottom_plate", self.bottom_width * self.image_size):
            w_bottom = numpyro.sample("w_bottom", dist.Gamma(self.alpha_w, self.beta_w))
        with numpyro.plate("data", x_size):
            z_top = numpyro.sample("z_top", dist.Gamma(self.alpha_z, self.beta_z).expand([self.top_width]).to_event(1))
            mean_mid = jnp.matmul(z_top, w_top.reshape(self.top_width, self.mid_width))
            z_mid = numpyro.sample("z_mid", dist.Gamma(self.alpha_z, self.beta_z / mean_mid).to_event(1))
            mean_bottom = jnp.matmul(z_mid, w_mid.reshape(self.mid_width, self.bottom_width))
            z_bottom = numpyro.sample("z_bottom", dist.Gamma(self.alpha_z, self.beta_z / mean_bottom).to_event(1))
            mean_obs = jnp.matmul(z_bottom, w_bottom.reshape(self.bottom_width, self.image_size))
            numpyro.sample("obs", dist.Poisson(mean_obs).to_event(1), obs=x)

    def guide(self, x):
        x_size = x.shape[0]

        def sample_zs(name, width):
            alpha = numpyro.param(f"alpha_z_q_{name}", _pattern((x_size, width), self.alpha_init, self.sigma_init))
            mean = numpyro.param(f"mean_z_q_{name}", _pattern((x_size, width), self.mean_init, self.sigma_init))
            alpha, mean = jax.nn.softplus(alpha), jax.nn.softplus(mean)
            numpyro.sample(f"z_{name}", dist.Gamma(alpha, alpha / mean).to_event(1))

        def sample_ws(name, width):
            alpha = numpyro.param(f"alpha_w_q_{name}", _pattern((width,), self.alpha_init, self.sigma_init))
            mean = numpyro.param(f"mean_w_q_{name}", _pattern((width,), self.mean_init, self.sigma_init))
            alpha, mean = jax.nn.softplus(alpha), jax.nn.softplus(mean)
            numpyro.sample(f"w_{name}", dist.Gamma(alpha, alpha / mean))

        with numpyro.plate("w_top_plate", self.top_width * self.mid_width):
            sample_ws("top", self.top_width * self.mid_width)
        with numpyro.plate("w_mid_plate", self.mid_width * self.bottom_width):
            sample_ws("mid", self.mid_width * self.bottom_width)
        with numpyro.plate("w_bottom_plate", self.bottom_width * self.image_size):
            sample_ws("bottom", self.bottom_width * self.image_size)
        with numpyro.plate("data", x_size):
            sample_zs("top", self.top_width)
            sample_zs("mid", self.mid_width)
            sample_zs("bottom", self.bottom_width)


SGDEF_COUNTS = jnp.asarray(np.random.RandomState(0).poisson(1.5, (8, 10)), dtype=jnp.float32)


@_case(args=(SGDEF_COUNTS,))
def sparse_gamma_def():
    """Pyro's sparse gamma DEF: three global Gamma weight plates and three chained local Gamma layers
    (to_event) in a data plate of 8, Poisson observations of shape 8 x 10."""
    sgdef = SparseGammaDEF()
    return sgdef.model, sgdef.guide


_NET_RNG = np.random.RandomState(0)
SS_INIT = {
    "encoder_y_0": _dense_init(_NET_RNG, 6, 4),
    "encoder_y_1": _dense_init(_NET_RNG, 4, 3),
    "encoder_z_0": _dense_init(_NET_RNG, 6 + 3, 4),
    "encoder_z_1": _dense_init(_NET_RNG, 4, 2 * 2),
    "decoder_0": _dense_init(_NET_RNG, 2 + 3, 4),
    "decoder_1": _dense_init(_NET_RNG, 4, 6),
}
"""Fixed initial weights of the tiny ss_vae_M2 networks (6 pixels, 3 classes, z of 2, one hidden layer of 4)."""


def _ss_net(name: str, x: jax.Array) -> jax.Array:
    hidden = jax.nn.softplus(_dense(f"{name}_0", SS_INIT[f"{name}_0"], x))
    return _dense(f"{name}_1", SS_INIT[f"{name}_1"], hidden)


def ss_vae_model(xs, ys=None):
    """The semi-supervised VAE (M2) of Kingma et al. 2014 at a tiny size.

    Adapted from Pyro's examples/vae/ss_vae_M2.py (Apache-2.0, Copyright Contributors to the Pyro
    project): the same model and guide, the networks written with ``numpyro.param`` weights; NumPyro has no
    OneHotCategorical, so y is a Categorical site and one-hot encoded after sampling."""
    batch_size, z_dim, output_size = xs.shape[0], 2, 3
    with numpyro.plate("data", batch_size):
        zs = numpyro.sample("z", dist.Normal(jnp.zeros((batch_size, z_dim)), 1.0).to_event(1))
        alpha_prior = jnp.ones((batch_size, output_size)) / output_size
        labels = numpyro.sample("y", dist.Categorical(alpha_prior), obs=None if ys is None else jnp.argmax(ys, -1))
        ys = jax.nn.one_hot(labels, output_size)
        loc = jax.nn.sigmoid(_ss_net("decoder", jnp.concatenate([zs, ys], axis=-1)))
        numpyro.sample("x", dist.Bernoulli(loc).to_event(1), obs=xs)
        return loc


def ss_vae_guide(xs, ys=None):
    """q(y | x) (only when ``ys`` is None) and q(z | x, y), as in Pyro's examples/vae/ss_vae_M2.py."""
    with numpyro.plate("data", xs.shape[0]):
        if ys is None:
            alpha = jax.nn.softmax(_ss_net("encoder_y", xs), axis=-1)
            ys = jax.nn.one_hot(numpyro.sample("y", dist.Categorical(alpha)), alpha.shape[-1])
        loc, log_scale = jnp.split(_ss_net("encoder_z", jnp.concatenate([xs, ys], axis=-1)), 2, axis=-1)
        numpyro.sample("z", dist.Normal(loc, jnp.exp(log_scale)).to_event(1))


SS_XS = jnp.array(
    [
        [1.0, 0.0, 1.0, 1.0, 0.0, 0.0],
        [0.0, 1.0, 1.0, 0.0, 1.0, 0.0],
        [1.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        [0.0, 0.0, 1.0, 1.0, 1.0, 1.0],
    ]
)
SS_YS = jnp.asarray(np.eye(3, dtype=np.float32)[[0, 2, 1, 2]])


@_case(args=(SS_XS,))
def ss_vae_m2_unlabelled():
    """Pyro's ss_vae_M2, unlabelled batch: the guide samples a Categorical y from an encoder, then z given
    (x, one_hot(y))."""
    return ss_vae_model, ss_vae_guide


@_case(args=(SS_XS,), kwargs={"ys": SS_YS})
def ss_vae_m2_labelled():
    """Pyro's ss_vae_M2, labelled batch (``ys`` given): y observed in the model, the guide samples z only."""
    return ss_vae_model, ss_vae_guide


LITTLE_G, TIME_SIGMA = 9.8, 0.02
INCLINE_T = jnp.array([1.03, 0.99, 1.01, 1.04])


def simulate_descent(mu, length=2.0, phi=math.pi / 6.0, dt=0.005):
    """Descent time of the box for friction ``mu``: the example's Euler loop (displacement += v dt;
    v += a dt; T += dt until displacement >= length) stepped in closed form, n = the first step count
    with a dt^2 n (n - 1) / 2 >= length, so the result is a (piecewise constant) function of mu.
    A box that does not slide takes 1e5 s, as in the example."""
    acceleration = LITTLE_G * math.sin(phi) - LITTLE_G * math.cos(phi) * mu
    slides = acceleration > 0
    safe = jnp.where(slides, acceleration, 1.0)
    steps = jnp.ceil((1.0 + jnp.sqrt(1.0 + 8.0 * length / (safe * dt**2))) / 2.0)
    return jnp.where(slides, steps * dt, 1.0e5)


@_case(args=(INCLINE_T,))
def inclined_plane():
    """Pyro's inclined-plane example: friction mu ~ Uniform(0, 1) drives a non-differentiable simulator
    (zero pathwise gradient) observed 4 times in separate sites; a logit-normal guide.

    Adapted from Pyro's examples/inclined_plane.py (Apache-2.0, Copyright Contributors to the Pyro
    project), with a guide added (the example uses importance sampling from the prior)."""

    def model(observed):
        mu = numpyro.sample("mu", dist.Uniform(0.0, 1.0))
        for i in range(observed.shape[0]):
            numpyro.sample(f"obs_{i}", dist.Normal(simulate_descent(mu), TIME_SIGMA), obs=observed[i])
        return mu

    def guide(observed):
        loc = numpyro.param("mu_logit_loc", jnp.array(-2.0))
        sd = numpyro.param("mu_logit_scale", jnp.array(0.3), constraint=constraints.positive)
        numpyro.sample("mu", dist.TransformedDistribution(dist.Normal(loc, sd), dist.transforms.SigmoidTransform()))

    return model, guide


VAE_INIT = {
    "encoder_0": _dense_init(_NET_RNG, 4, 3),
    "encoder_1": _dense_init(_NET_RNG, 3, 4),
    "decoder": _dense_init(_NET_RNG, 2, 4),
}
VAE_X = jnp.array(
    [[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [1.0, 0.0, 1.0, 1.0]]
)


@_case(args=(VAE_X,))
def tiny_vae():
    """A tiny VAE: an encoder network (guide) and a decoder (model) with fixed initial weights, a local
    latent per data point in a data plate."""

    def model(x):
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(jnp.zeros(2), 1.0).to_event(1))
            probs = jax.nn.sigmoid(_dense("decoder", VAE_INIT["decoder"], z))
            numpyro.sample("x", dist.Bernoulli(probs).to_event(1), obs=x)

    def guide(x):
        hidden = jax.nn.softplus(_dense("encoder_0", VAE_INIT["encoder_0"], x))
        loc, log_scale = jnp.split(_dense("encoder_1", VAE_INIT["encoder_1"], hidden), 2, axis=-1)
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("z", dist.Normal(loc, jnp.exp(log_scale)).to_event(1))

    return model, guide
