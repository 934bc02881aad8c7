"""A corpus of small Pyro model/guide pairs with varied dependency structure, for property tests.

Each entry of :data:`CORPUS` is a :class:`Case`. Every guide creates its parameters with ``pyro.param``
(or through an AutoGuide / ``pyro.module``) from fixed values, never random ones, so that after
``pyro.clear_param_store()`` two runs see identical parameters. Guides that hold state (AutoGuides,
``torch.nn`` modules) are built by a maker function: :func:`fresh` calls it again and returns a new
(model, guide) pair with the same initial parameters. Clear the param store before each fresh pair
when comparing two ELBOs (``pyro.module`` keeps the first module's tensors in the store).

The structures covered: global and independent latents, discrete and continuous sites, plates
(sibling, same dim, different dims, nested, subsampled), sequential and Markov chains, guide-only
auxiliary sites (AutoNormal, AutoDiagonalNormal, a hand-written one), ``to_event``, masks,
``poutine.scale``, and small versions of Pyro's example programs. Models adapted from Pyro's or
NumPyro's examples and tests say so in their docstrings: both are Apache-2.0, Copyright Contributors to
the Pyro project.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal, init_to_value
from torch import nn
from torch.nn.functional import softplus


@dataclass(frozen=True)
class Case:
    """One model/guide pair and the arguments both are called with."""

    name: str
    model: Callable
    guide: Callable
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    max_plate_nesting: int | None = None


CORPUS: list[Case] = []
_MAKERS: dict[str, Callable[[], tuple[Callable, Callable]]] = {}


def fresh(case: Case) -> tuple[Callable, Callable]:
    """A newly built (model, guide) for ``case``: new AutoGuide / ``nn.Module`` instances with the same
    fixed initial parameters (for plain functions, new closures equivalent to ``case.model``, ``case.guide``)."""
    return _MAKERS[case.name]()


def _case(args: tuple = (), kwargs: dict[str, Any] | None = None, max_plate_nesting: int | None = None):
    """Register the decorated maker (returning (model, guide)) as a corpus entry named after it."""

    def register(make: Callable[[], tuple[Callable, Callable]]):
        case_name = make.__name__
        if case_name in _MAKERS:
            raise ValueError(f"duplicate corpus case {case_name!r}")
        _MAKERS[case_name] = make
        model, guide = make()
        CORPUS.append(Case(case_name, model, guide, tuple(args), dict(kwargs or {}), max_plate_nesting))
        return make

    return register


def _seeded(seed: int, build: Callable[[], Any]) -> Any:
    """``build()`` under a fixed torch seed, leaving the global RNG state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _pattern(shape, mean: float, spread: float) -> torch.Tensor:
    """A fixed, non-constant tensor: ``mean + spread * cos(0, 1, 2, ...)`` (a stand-in for random inits)."""
    n = int(np.prod(shape)) if len(shape) else 1
    return (mean + spread * torch.cos(torch.arange(float(n)))).reshape(shape)


# ---------------------------------------------------------------------------------------- basics
Y3 = torch.tensor([0.3, -0.5, 1.2])


@_case(args=(Y3,), max_plate_nesting=1)
def single_global():
    """One global Normal latent; three Normal observations of it in a plate."""

    def model(y):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(y)):
            pyro.sample("obs", dist.Normal(z, 1.0), obs=y)

    def guide(y):
        loc = pyro.param("z_loc", torch.tensor(0.2))
        scale = pyro.param("z_scale", torch.tensor(0.8), constraint=constraints.positive)
        pyro.sample("z", dist.Normal(loc, scale))

    return model, guide


@_case(args=(torch.tensor(0.8), torch.tensor(-0.4)), max_plate_nesting=0)
def bernoulli_and_normal():
    """Two independent latents (one Bernoulli, one Normal), each with its own observation."""

    def model(y_b, y_z):
        b = pyro.sample("b", dist.Bernoulli(0.4))
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("obs_b", dist.Normal(2.0 * b - 1.0, 0.7), obs=y_b)
        pyro.sample("obs_z", dist.Normal(z, 1.0), obs=y_z)

    def guide(y_b, y_z):
        logit = pyro.param("b_logit", torch.tensor(0.3))
        loc = pyro.param("z_loc", torch.tensor(-0.1))
        scale = pyro.param("z_scale", torch.tensor(0.9), constraint=constraints.positive)
        pyro.sample("b", dist.Bernoulli(logits=logit))
        pyro.sample("z", dist.Normal(loc, scale))

    return model, guide


@_case(args=(torch.tensor([0.9, -0.2, 1.4, 0.1, -1.0]),), max_plate_nesting=0)
def five_bernoullis():
    """Five independent Bernoulli latents, sites ``z_0`` .. ``z_4``, each with its own Normal observation."""

    def model(y):
        for i in range(5):
            z = pyro.sample(f"z_{i}", dist.Bernoulli(0.3 + 0.1 * i))
            pyro.sample(f"obs_{i}", dist.Normal(z, 0.5), obs=y[i])

    def guide(y):
        probs = pyro.param("z_probs", torch.tensor([0.6, 0.3, 0.7, 0.5, 0.2]), constraint=constraints.unit_interval)
        for i in range(5):
            pyro.sample(f"z_{i}", dist.Bernoulli(probs[i]))

    return model, guide


# ---------------------------------------------------------------------------------------- plates
YA = torch.tensor([0.5, -0.3, 1.1])
YB = torch.tensor([-0.8, 0.4])


@_case(args=(YA, YB), max_plate_nesting=1)
def plates_same_dim():
    """Two latents in two non-nested plates of different sizes (3 and 2) that share dim -1."""

    def model(ya, yb):
        with pyro.plate("a", 3, dim=-1):
            za = pyro.sample("za", dist.Normal(0.0, 1.0))
            pyro.sample("obs_a", dist.Normal(za, 1.0), obs=ya)
        with pyro.plate("b", 2, dim=-1):
            zb = pyro.sample("zb", dist.Normal(0.0, 1.0))
            pyro.sample("obs_b", dist.Normal(zb, 1.0), obs=yb)

    def guide(ya, yb):
        la = pyro.param("za_loc", torch.tensor([0.1, -0.2, 0.3]))
        sa = pyro.param("za_scale", torch.tensor([0.7, 0.8, 0.9]), constraint=constraints.positive)
        lb = pyro.param("zb_loc", torch.tensor([-0.4, 0.2]))
        sb = pyro.param("zb_scale", torch.tensor([0.6, 1.1]), constraint=constraints.positive)
        with pyro.plate("a", 3, dim=-1):
            pyro.sample("za", dist.Normal(la, sa))
        with pyro.plate("b", 2, dim=-1):
            pyro.sample("zb", dist.Normal(lb, sb))

    return model, guide


@_case(args=(YA, YB.unsqueeze(-1)), max_plate_nesting=2)
def plates_different_dims():
    """Two latents in two non-nested plates of different sizes at different dims (-1 and -2)."""

    def model(ya, yb):
        with pyro.plate("a", 3, dim=-1):
            za = pyro.sample("za", dist.Normal(0.0, 1.0))
            pyro.sample("obs_a", dist.Normal(za, 1.0), obs=ya)
        with pyro.plate("b", 2, dim=-2):
            zb = pyro.sample("zb", dist.Normal(0.0, 1.0))
            pyro.sample("obs_b", dist.Normal(zb, 1.0), obs=yb)

    def guide(ya, yb):
        la = pyro.param("za_loc", torch.tensor([0.1, -0.2, 0.3]))
        sa = pyro.param("za_scale", torch.tensor([0.7, 0.8, 0.9]), constraint=constraints.positive)
        lb = pyro.param("zb_loc", torch.tensor([[-0.4], [0.2]]))
        sb = pyro.param("zb_scale", torch.tensor([[0.6], [1.1]]), constraint=constraints.positive)
        with pyro.plate("a", 3, dim=-1):
            pyro.sample("za", dist.Normal(la, sa))
        with pyro.plate("b", 2, dim=-2):
            pyro.sample("zb", dist.Normal(lb, sb))

    return model, guide


Y23 = torch.tensor([[0.2, -0.7, 1.0], [0.5, 0.1, -0.3]])


@_case(args=(YA, Y23), max_plate_nesting=2)
def outer_next_to_nested():
    """A latent in an outer plate (3, dim -1) next to an independent one in plates nested in it (2 x 3)."""

    def model(ya, yab):
        with pyro.plate("a", 3, dim=-1):
            u = pyro.sample("u", dist.Normal(0.0, 1.0))
            pyro.sample("obs_u", dist.Normal(u, 1.0), obs=ya)
            with pyro.plate("b", 2, dim=-2):
                v = pyro.sample("v", dist.Normal(0.0, 1.0))
                pyro.sample("obs_v", dist.Normal(v, 1.0), obs=yab)

    def guide(ya, yab):
        lu = pyro.param("u_loc", torch.tensor([0.3, -0.1, 0.2]))
        su = pyro.param("u_scale", torch.tensor([0.8, 0.9, 0.7]), constraint=constraints.positive)
        lv = pyro.param("v_loc", _pattern((2, 3), 0.0, 0.3))
        sv = pyro.param("v_scale", _pattern((2, 3), 0.8, 0.1), constraint=constraints.positive)
        with pyro.plate("a", 3, dim=-1):
            pyro.sample("u", dist.Normal(lu, su))
            with pyro.plate("b", 2, dim=-2):
                pyro.sample("v", dist.Normal(lv, sv))

    return model, guide


@_case(args=(Y23,), max_plate_nesting=2)
def nested_both_levels():
    """Nested plates with latents at both levels: m[a] in plate a, z[b, a] ~ N(m[a], .) in plates a x b."""

    def model(y):
        with pyro.plate("a", 3, dim=-1):
            m = pyro.sample("m", dist.Normal(0.0, 1.0))
            with pyro.plate("b", 2, dim=-2):
                z = pyro.sample("z", dist.Normal(m, 0.5))
                pyro.sample("obs", dist.Normal(z, 1.0), obs=y)

    def guide(y):
        lm = pyro.param("m_loc", torch.tensor([0.1, 0.2, -0.3]))
        sm = pyro.param("m_scale", torch.tensor([0.9, 0.8, 0.7]), constraint=constraints.positive)
        lz = pyro.param("z_loc", _pattern((2, 3), 0.1, 0.2))
        wz = pyro.param("z_weight", torch.tensor(0.5))
        sz = pyro.param("z_scale", _pattern((2, 3), 0.5, 0.1), constraint=constraints.positive)
        with pyro.plate("a", 3, dim=-1):
            m = pyro.sample("m", dist.Normal(lm, sm))
            with pyro.plate("b", 2, dim=-2):
                pyro.sample("z", dist.Normal(lz + wz * m, sz))

    return model, guide


Y100 = torch.sin(torch.arange(100.0)) + 0.5


@_case(args=(Y100,), max_plate_nesting=1)
def subsample_local_global():
    """A subsampled plate (5 of 100) with a local latent per data point and a global latent."""

    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 3.0))
        with pyro.plate("data", len(y), subsample_size=5) as ind:
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("obs", dist.Normal(z, 0.5), obs=y[ind])

    def guide(y):
        mu_loc = pyro.param("mu_loc", torch.tensor(0.4))
        mu_scale = pyro.param("mu_scale", torch.tensor(0.3), constraint=constraints.positive)
        z_loc = pyro.param("z_loc", _pattern((len(y),), 0.5, 0.5))
        z_scale = pyro.param("z_scale", torch.full((len(y),), 0.6), constraint=constraints.positive)
        mu = pyro.sample("mu", dist.Normal(mu_loc, mu_scale))
        with pyro.plate("data", len(y), subsample_size=5) as ind:
            pyro.sample("z", dist.Normal(z_loc[ind] + 0.1 * mu, z_scale[ind]))

    return model, guide


@_case(args=(Y100,), max_plate_nesting=1)
def subsample_global_only():
    """A subsampled plate (5 of 100) holding only observations; one global latent. The guide opens the
    same plate with no site in it, so the subsample indices come from the guide trace."""

    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 3.0))
        with pyro.plate("data", len(y), subsample_size=5) as ind:
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=y[ind])

    def guide(y):
        loc = pyro.param("mu_loc", torch.tensor(0.3))
        scale = pyro.param("mu_scale", torch.tensor(0.2), constraint=constraints.positive)
        pyro.sample("mu", dist.Normal(loc, scale))
        with pyro.plate("data", len(y), subsample_size=5):
            pass

    return model, guide


# ---------------------------------------------------------------------------------------- sequences
@_case(args=(torch.tensor([0.7, 1.2, -0.9, 0.4]),), max_plate_nesting=0)
def markov_bernoulli_sequence():
    """Sequential Bernoulli sites in a Python loop under ``pyro.markov``: z_t depends on z_{t-1} in the
    model; a mean-field guide."""

    def model(y):
        z = torch.tensor(0.0)
        for t in pyro.markov(range(len(y))):
            z = pyro.sample(f"z_{t}", dist.Bernoulli(0.2 + 0.6 * z))
            pyro.sample(f"obs_{t}", dist.Normal(2.0 * z - 1.0, 1.0), obs=y[t])

    def guide(y):
        probs = pyro.param("z_probs", torch.tensor([0.6, 0.7, 0.3, 0.5]), constraint=constraints.unit_interval)
        for t in pyro.markov(range(len(y))):
            pyro.sample(f"z_{t}", dist.Bernoulli(probs[t]))

    return model, guide


class _FakeNormal(dist.Normal):
    """A Normal without ``rsample`` (as Pyro's and NumPyro's TraceGraph tests use)."""

    has_rsample = False


def gaussian_chain_targets(n: int, loc0: float, data: list[float]):
    """The chain's prior precisions and exact posterior (lambdas, kappas, locs, precisions), indexed 1..n.

    Adapted from NumPyro's test/infer/test_svi.py::test_tracegraph_gaussian_chain (Apache-2.0,
    Copyright Contributors to the Pyro project)."""
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
        mask = rng.binomial(1, 0.3, (n,))
        if 0.5 < mask.sum() < 0.4 * n:
            return mask


CHAIN_N, CHAIN_LOC0, CHAIN_DATA = 7, 0.2, [-0.1, 0.03, 0.2, 0.1]
CHAIN_OFFSETS = [0.0, 0.12, -0.05, 0.08, -0.11, 0.03, 0.06, -0.09]
"""Fixed stand-ins for the test's ``0.1 * random.normal(key)`` parameter perturbations."""


@_case(args=(torch.tensor(CHAIN_DATA),), kwargs={"difficulty": 0.6}, max_plate_nesting=1)
def gaussian_chain():
    """A chain of 7 Gaussian latents, z_k ~ N(z_{k-1}, .), observed through z_7; the guide runs in
    reverse, z_k ~ N(kappa_k z_{k+1} + loc_k, .), the nodes that the test's seeded mask does not flag
    natively non-reparameterized (FakeNormal).

    Adapted from NumPyro's test/infer/test_svi.py::test_tracegraph_gaussian_chain (Apache-2.0,
    Copyright Contributors to the Pyro project), initial values perturbed by fixed offsets."""
    n = CHAIN_N
    lambdas, kappas, locs, posts = gaussian_chain_targets(n, CHAIN_LOC0, CHAIN_DATA)
    reparam = gaussian_chain_reparam_mask(n)

    def model(data, difficulty=0.0):
        next_mean = torch.tensor(CHAIN_LOC0)
        for k in range(1, n + 1):
            next_mean = pyro.sample(f"loc_latent_{k}", dist.Normal(next_mean, lambdas[k - 1] ** -0.5))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Normal(next_mean, lambdas[n] ** -0.5), obs=data)
        return next_mean

    def guide(data, difficulty=0.0):
        previous = None
        for k in reversed(range(1, n + 1)):
            shift = difficulty * (CHAIN_OFFSETS[k] - 0.53)
            loc_q = pyro.param(f"loc_q_{k}", torch.tensor(locs[k] + shift))
            log_sig_q = pyro.param(f"log_sig_q_{k}", torch.tensor(-0.5 * math.log(posts[k]) + shift))
            if k == n:
                mean = loc_q
            else:
                kappa_q = pyro.param(f"kappa_q_{k}", torch.tensor(kappas[k] + shift))
                mean = kappa_q * previous + loc_q
            family = dist.Normal if reparam[k - 1] else _FakeNormal
            previous = pyro.sample(f"loc_latent_{k}", family(mean, log_sig_q.exp()))
        return previous

    return model, guide


HMM_Y = torch.tensor([-0.9, 0.1, 1.3, 1.1])
HMM_TRANS = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.7, 0.2], [0.2, 0.1, 0.7]])
HMM_LOCS = torch.tensor([-1.0, 0.0, 1.0])


@_case(args=(HMM_Y,), max_plate_nesting=0)
def hmm_categorical():
    """A hidden Markov chain of 4 Categorical states (3 values) with Normal emissions, under
    ``pyro.markov``; the guide's state t depends on its state t-1."""

    def model(y):
        x = torch.tensor(0)
        for t in pyro.markov(range(len(y))):
            x = pyro.sample(f"x_{t}", dist.Categorical(HMM_TRANS[x]))
            pyro.sample(f"y_{t}", dist.Normal(HMM_LOCS[x], 0.5), obs=y[t])

    def guide(y):
        init = torch.full((len(y), 3, 3), 0.2) + 0.4 * torch.eye(3)
        init[:, :, 2] += torch.linspace(0.0, 0.3, len(y)).unsqueeze(-1)
        q = pyro.param("q_trans", init / init.sum(-1, keepdim=True), constraint=constraints.simplex)
        x = torch.tensor(0)
        for t in pyro.markov(range(len(y))):
            x = pyro.sample(f"x_{t}", dist.Categorical(q[t, x]))

    return model, guide


# ---------------------------------------------------------------------------------------- mixed and special sites
@_case(args=(torch.tensor([0.8, 1.3]),), max_plate_nesting=1)
def categorical_normal_mix():
    """A Categorical c and a Normal x whose loc and scale are indexed by c, in the model and the guide."""

    def model(y):
        c = pyro.sample("c", dist.Categorical(torch.tensor([0.3, 0.5, 0.2])))
        x = pyro.sample("x", dist.Normal(torch.tensor([-1.0, 0.0, 2.0])[c], torch.tensor([0.5, 1.0, 0.7])[c]))
        with pyro.plate("data", len(y)):
            pyro.sample("obs", dist.Normal(x, 0.5), obs=y)

    def guide(y):
        probs = pyro.param("c_probs", torch.tensor([0.2, 0.5, 0.3]), constraint=constraints.simplex)
        locs = pyro.param("x_locs", torch.tensor([-0.5, 0.6, 1.5]))
        scales = pyro.param("x_scales", torch.tensor([0.4, 0.6, 0.5]), constraint=constraints.positive)
        c = pyro.sample("c", dist.Categorical(probs))
        pyro.sample("x", dist.Normal(locs[c], scales[c]))

    return model, guide


Y4 = torch.tensor([1.1, 0.4, 2.0, 0.9])


def _loc_scale_model(y):
    loc = pyro.sample("loc", dist.Normal(0.0, 2.0))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("obs", dist.Normal(loc, scale), obs=y)


@_case(args=(Y4,), max_plate_nesting=1)
def auto_normal_positive():
    """AutoNormal on a model with a real and a positive (LogNormal) latent: guide-only auxiliary sites
    ``*_unconstrained`` feeding Delta sites through an exp transform."""
    guide = AutoNormal(
        _loc_scale_model, init_loc_fn=init_to_value(values={"loc": torch.tensor(0.5), "scale": torch.tensor(1.2)})
    )
    return _loc_scale_model, guide


COUNTS3 = torch.tensor([2.0, 0.0, 5.0])


def _poisson_rates_model(counts):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("groups", len(counts)):
        lam = pyro.sample("lam", dist.Gamma(2.0, 1.0))
        pyro.sample("obs", dist.Poisson(lam * mu.exp()), obs=counts)


@_case(args=(COUNTS3,), max_plate_nesting=1)
def auto_diagonal_normal_positive():
    """AutoDiagonalNormal on a global real latent and a plate of Gamma (positive) latents: one guide-only
    auxiliary site ``_AutoDiagonalNormal_latent`` feeding Delta sites through transforms."""
    values = {"mu": torch.tensor(0.1), "lam": torch.tensor([1.5, 0.5, 3.0])}
    guide = AutoDiagonalNormal(_poisson_rates_model, init_loc_fn=init_to_value(values=values))
    return _poisson_rates_model, guide


@_case(args=(COUNTS3,), max_plate_nesting=1)
def auxiliary_guide_site():
    """A hand-written AutoDiagonalNormal: one guide-only ``is_auxiliary`` site (a Normal with event shape
    (4,)) feeding Delta sites, a global real one and a plate of positive (exp-transformed) ones."""

    def guide(counts):
        loc = pyro.param("aux_loc", torch.tensor([0.1, 0.4, -0.7, 1.1]))
        sd = pyro.param("aux_scale", torch.full((4,), 0.1), constraint=constraints.positive)
        latent = pyro.sample("_aux_latent", dist.Normal(loc, sd).to_event(1), infer={"is_auxiliary": True})
        pyro.sample("mu", dist.Delta(latent[0]))
        with pyro.plate("groups", len(counts)):
            # lam = exp(u): the Delta carries log|d u / d lam| = -u, as AutoContinuous guides do
            pyro.sample("lam", dist.Delta(latent[1:].exp(), log_density=-latent[1:]))

    return _poisson_rates_model, guide


Y_EVENT = torch.tensor([[0.3, 0.1, 0.6], [0.2, 0.5, 0.2]])


@_case(args=(Y_EVENT,), max_plate_nesting=1)
def to_event_sites():
    """``to_event`` sites: a Normal with event shape (3,) in a plate of 2, and a global Dirichlet."""

    def model(y):
        w = pyro.sample("w", dist.Dirichlet(torch.ones(3)))
        with pyro.plate("rows", 2):
            z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
            pyro.sample("obs", dist.Normal(w + 0.1 * z, 0.5).to_event(1), obs=y)

    def guide(y):
        conc = pyro.param("w_conc", torch.tensor([2.0, 3.0, 4.0]), constraint=constraints.positive)
        loc = pyro.param("z_loc", _pattern((2, 3), 0.0, 0.4))
        scale = pyro.param("z_scale", _pattern((2, 3), 0.7, 0.1), constraint=constraints.positive)
        pyro.sample("w", dist.Dirichlet(conc))
        with pyro.plate("rows", 2):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return model, guide


LATENT_MASK = torch.tensor([True, False, True, True])
OBS_MASK = torch.tensor([True, True, False, True])


@_case(args=(Y4, LATENT_MASK, OBS_MASK), max_plate_nesting=1)
def masked_sites():
    """Masks: a latent masked with ``.mask(...)`` in model and guide, observations under ``poutine.mask``."""

    def model(y, latent_mask, obs_mask):
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).mask(latent_mask))
            with poutine.mask(mask=obs_mask):
                pyro.sample("obs", dist.Normal(z, 1.0), obs=y)

    def guide(y, latent_mask, obs_mask):
        loc = pyro.param("z_loc", torch.tensor([0.5, 0.1, 0.9, 0.4]))
        scale = pyro.param("z_scale", torch.tensor([0.7, 0.8, 0.6, 0.9]), constraint=constraints.positive)
        with pyro.plate("data", len(y)):
            pyro.sample("z", dist.Normal(loc, scale).mask(latent_mask))

    return model, guide


@_case(args=(torch.tensor([0.6, -0.2]),), max_plate_nesting=1)
def scaled_sites():
    """``poutine.scale``: a Normal latent scaled by 0.5 in model and guide, an unscaled Bernoulli latent,
    observations scaled by 3."""

    def model(y):
        with poutine.scale(scale=0.5):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
        b = pyro.sample("b", dist.Bernoulli(0.5))
        with poutine.scale(scale=3.0), pyro.plate("data", len(y)):
            pyro.sample("obs", dist.Normal(z + b, 1.0), obs=y)

    def guide(y):
        loc = pyro.param("z_loc", torch.tensor(0.1))
        scale = pyro.param("z_scale", torch.tensor(0.9), constraint=constraints.positive)
        p = pyro.param("b_prob", torch.tensor(0.3), constraint=constraints.unit_interval)
        with poutine.scale(scale=0.5):
            pyro.sample("z", dist.Normal(loc, scale))
        pyro.sample("b", dist.Bernoulli(p))

    return model, guide


# ---------------------------------------------------------------------------------------- Pyro's examples
SCHOOLS_Y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SCHOOLS_SIGMA = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
SCHOOLS_DATA = torch.stack([SCHOOLS_Y, SCHOOLS_SIGMA], dim=1)


def eight_schools_model(data):
    """Non-centered eight schools: theta_j = mu + tau * eta_j.

    Adapted from Pyro's examples/eight_schools (Apache-2.0, Copyright Contributors to the Pyro project).
    mu and tau are global, outside the plate, as in mcmc.py (svi.py draws them inside the plate)."""
    y, sigma = data[:, 0], data[:, 1]
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    tau = pyro.sample("tau", dist.HalfCauchy(25.0))
    with pyro.plate("data", len(y)):
        eta = pyro.sample("eta", dist.Normal(0.0, 1.0))
        pyro.sample("obs", dist.Normal(mu + tau * eta, sigma), obs=y)


def eight_schools_guide(data):
    """The hand-written mean-field guide of Pyro's examples/eight_schools/svi.py, tau through an exp
    transform; fixed initial values instead of torch.randn / torch.rand."""
    n = data.shape[0]
    loc_eta = pyro.param("loc_eta", _pattern((n,), 0.0, 0.5))
    scale_eta = pyro.param("scale_eta", torch.full((n,), 0.1), constraint=constraints.positive)
    loc_mu = pyro.param("loc_mu", torch.tensor(4.0))
    scale_mu = pyro.param("scale_mu", torch.tensor(0.5), constraint=constraints.positive)
    loc_logtau = pyro.param("loc_logtau", torch.tensor(1.0))
    scale_logtau = pyro.param("scale_logtau", torch.tensor(0.2), constraint=constraints.positive)
    pyro.sample("mu", dist.Normal(loc_mu, scale_mu))
    pyro.sample(
        "tau", dist.TransformedDistribution(dist.Normal(loc_logtau, scale_logtau), [dist.transforms.ExpTransform()])
    )
    with pyro.plate("data", n):
        pyro.sample("eta", dist.Normal(loc_eta, scale_eta))


@_case(args=(SCHOOLS_DATA,), max_plate_nesting=1)
def eight_schools():
    """Pyro's eight schools example (non-centered) with its hand-written guide; a TransformedDistribution site."""
    return eight_schools_model, eight_schools_guide


@_case(args=(SCHOOLS_DATA,), max_plate_nesting=1)
def eight_schools_auto_normal():
    """Pyro's eight schools example (non-centered) with AutoNormal: auxiliary sites, HalfCauchy transform."""
    values = {"mu": torch.tensor(4.0), "tau": torch.tensor(3.0), "eta": _pattern((8,), 0.0, 0.5)}
    return eight_schools_model, AutoNormal(eight_schools_model, init_loc_fn=init_to_value(values=values))


class SparseGammaDEF:
    """Sparse gamma deep exponential family at a tiny size (layers 3-2-2, 10 "pixels").

    Adapted from Pyro's examples/sparse_gamma_def.py (Apache-2.0, Copyright Contributors to the Pyro
    project): the same model and custom mean-field Gamma guide; ``rand_tensor`` initialisation replaced
    by the fixed :func:`_pattern`."""

    def __init__(self, top_width=3, mid_width=2, bottom_width=2, image_size=10):
        self.top_width = top_width
        self.mid_width = mid_width
        self.bottom_width = bottom_width
        self.image_size = image_size
        self.alpha_z = torch.tensor(0.1)
        self.beta_z = torch.tensor(0.1)
        self.alpha_w = torch.tensor(0.1)
        self.beta_w = torch.tensor(0.3)
        self.alpha_init = 0.5
        self.mean_init = 0.0
        self.sigma_init = 0.1

    def model(self, x):
        x_size = x.size(0)
        with pyro.plate("w_top_plate", self.top_width * self.mid_width):
            w_top = pyro.sample("w_top", dist.Gamma(self.alpha_w, self.beta_w))
        with pyro.plate("w_mid_plate", self.mid_width * self.bottom_width):
            w_mid = pyro.sample("w_mid", dist.Gamma(self.alpha_w, self.beta_w))
        with pyro.plate("w_bottom_plate", self.bottom_width * self.image_size):
            w_bottom = pyro.sample("w_bottom", dist.Gamma(self.alpha_w, self.beta_w))
        with pyro.plate("data", x_size):
            z_top = pyro.sample("z_top", dist.Gamma(self.alpha_z, self.beta_z).expand([self.top_width]).to_event(1))
            mean_mid = torch.matmul(z_top, w_top.reshape(self.top_width, self.mid_width))
            z_mid = pyro.sample("z_mid", dist.Gamma(self.alpha_z, self.beta_z / mean_mid).to_event(1))
            mean_bottom = torch.matmul(z_mid, w_mid.reshape(self.mid_width, self.bottom_width))
            z_bottom = pyro.sample("z_bottom", dist.Gamma(self.alpha_z, self.beta_z / mean_bottom).to_event(1))
            mean_obs = torch.matmul(z_bottom, w_bottom.reshape(self.bottom_width, self.image_size))
            pyro.sample("obs", dist.Poisson(mean_obs).to_event(1), obs=x)

    def guide(self, x):
        x_size = x.size(0)

        def sample_zs(name, width):
            alpha_z_q = pyro.param(f"alpha_z_q_{name}", _pattern((x_size, width), self.alpha_init, self.sigma_init))
            mean_z_q = pyro.param(f"mean_z_q_{name}", _pattern((x_size, width), self.mean_init, self.sigma_init))
            alpha_z_q, mean_z_q = softplus(alpha_z_q), softplus(mean_z_q)
            pyro.sample(f"z_{name}", dist.Gamma(alpha_z_q, alpha_z_q / mean_z_q).to_event(1))

        def sample_ws(name, width):
            alpha_w_q = pyro.param(f"alpha_w_q_{name}", _pattern((width,), self.alpha_init, self.sigma_init))
            mean_w_q = pyro.param(f"mean_w_q_{name}", _pattern((width,), self.mean_init, self.sigma_init))
            alpha_w_q, mean_w_q = softplus(alpha_w_q), softplus(mean_w_q)
            pyro.sample(f"w_{name}", dist.Gamma(alpha_w_q, alpha_w_q / mean_w_q))

        with pyro.plate("w_top_plate", self.top_width * self.mid_width):
            sample_ws("top", self.top_width * self.mid_width)
        with pyro.plate("w_mid_plate", self.mid_width * self.bottom_width):
            sample_ws("mid", self.mid_width * self.bottom_width)
        with pyro.plate("w_bottom_plate", self.bottom_width * self.image_size):
            sample_ws("bottom", self.bottom_width * self.image_size)
        with pyro.plate("data", x_size):
            sample_zs("top", self.top_width)
            sample_zs("mid", self.mid_width)
            sample_zs("bottom", self.bottom_width)


SGDEF_COUNTS = _seeded(0, lambda: torch.poisson(torch.full((8, 10), 1.5)))


@_case(args=(SGDEF_COUNTS,), max_plate_nesting=1)
def sparse_gamma_def():
    """Pyro's sparse gamma DEF: three global Gamma weight plates and three chained local Gamma layers
    (to_event) in a data plate of 8, Poisson observations of shape 8 x 10."""
    sgdef = SparseGammaDEF()
    return sgdef.model, sgdef.guide


class _Exp(nn.Module):
    def forward(self, x):
        return torch.exp(x)


class _Split(nn.Module):
    """A linear layer whose output is split into (loc, exp(log_scale)) halves."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.linear = nn.Linear(n_in, 2 * n_out)
        self.exp = _Exp()

    def forward(self, x):
        loc, log_scale = self.linear(x).chunk(2, dim=-1)
        return loc, self.exp(log_scale)


class SSVAE(nn.Module):
    """The semi-supervised VAE (M2) of Kingma et al. 2014 at a tiny size: 6 binary "pixels", 3 classes,
    a 2-dimensional z, one hidden layer of 4.

    Adapted from Pyro's examples/vae/ss_vae_M2.py (Apache-2.0, Copyright Contributors to the Pyro
    project): the same model and guide (y a OneHotCategorical site), the example's MLP helper replaced by
    ``nn.Sequential``."""

    def __init__(self, output_size=3, input_size=6, z_dim=2, hidden=4):
        super().__init__()
        self.output_size, self.input_size, self.z_dim = output_size, input_size, z_dim
        self.encoder_y = nn.Sequential(
            nn.Linear(input_size, hidden), nn.Softplus(), nn.Linear(hidden, output_size), nn.Softmax(dim=-1)
        )
        self.encoder_z = nn.Sequential(
            nn.Linear(input_size + output_size, hidden), nn.Softplus(), _Split(hidden, z_dim)
        )
        self.decoder = nn.Sequential(
            nn.Linear(z_dim + output_size, hidden), nn.Softplus(), nn.Linear(hidden, input_size), nn.Sigmoid()
        )

    def model(self, xs, ys=None):
        pyro.module("ss_vae", self)
        batch_size = xs.size(0)
        with pyro.plate("data"):
            prior_loc = torch.zeros(batch_size, self.z_dim)
            prior_scale = torch.ones(batch_size, self.z_dim)
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            alpha_prior = torch.ones(batch_size, self.output_size) / (1.0 * self.output_size)
            ys = pyro.sample("y", dist.OneHotCategorical(alpha_prior), obs=ys)
            loc = self.decoder(torch.cat([zs, ys], dim=-1))
            pyro.sample("x", dist.Bernoulli(loc, validate_args=False).to_event(1), obs=xs)
            return loc

    def guide(self, xs, ys=None):
        with pyro.plate("data"):
            if ys is None:
                alpha = self.encoder_y(xs)
                ys = pyro.sample("y", dist.OneHotCategorical(alpha))
            loc, scale = self.encoder_z(torch.cat([xs, ys], dim=-1))
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


SS_XS = torch.tensor(
    [
        [1.0, 0.0, 1.0, 1.0, 0.0, 0.0],
        [0.0, 1.0, 1.0, 0.0, 1.0, 0.0],
        [1.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        [0.0, 0.0, 1.0, 1.0, 1.0, 1.0],
    ]
)
SS_YS = torch.eye(3)[torch.tensor([0, 2, 1, 2])]


def _ss_vae():
    ss_vae = _seeded(0, SSVAE)
    return ss_vae.model, ss_vae.guide


@_case(args=(SS_XS,), max_plate_nesting=1)
def ss_vae_m2_unlabelled():
    """Pyro's ss_vae_M2, unlabelled batch: the guide samples a OneHotCategorical y from an encoder, then
    z given (x, y); an unsized ``pyro.plate("data")``."""
    return _ss_vae()


@_case(args=(SS_XS,), kwargs={"ys": SS_YS}, max_plate_nesting=1)
def ss_vae_m2_labelled():
    """Pyro's ss_vae_M2, labelled batch (``ys`` given): y observed in the model, the guide samples z only."""
    return _ss_vae()


LITTLE_G, TIME_SIGMA = 9.8, 0.02
INCLINE_T = torch.tensor([1.03, 0.99, 1.01, 1.04])


def simulate_descent(mu, length=2.0, phi=math.pi / 6.0, dt=0.005):
    """Descent time of the box for friction ``mu``: the example's Euler loop (displacement += v dt;
    v += a dt; T += dt until displacement >= length) stepped in closed form, n = the first step count
    with a dt^2 n (n - 1) / 2 >= length, so the result is a (piecewise constant) tensor function of mu.
    A box that does not slide takes 1e5 s, as in the example."""
    acceleration = LITTLE_G * math.sin(phi) - LITTLE_G * math.cos(phi) * mu
    slides = acceleration > 0
    safe = torch.where(slides, acceleration, torch.ones_like(acceleration))
    steps = torch.ceil((1.0 + torch.sqrt(1.0 + 8.0 * length / (safe * dt**2))) / 2.0)
    return torch.where(slides, steps * dt, torch.full_like(steps, 1.0e5))


@_case(args=(INCLINE_T,), max_plate_nesting=0)
def inclined_plane():
    """Pyro's inclined-plane example: friction mu ~ Uniform(0, 1) drives a non-differentiable simulator
    (zero pathwise gradient) observed 4 times in separate sites; a logit-normal guide.

    Adapted from Pyro's examples/inclined_plane.py (Apache-2.0, Copyright Contributors to the Pyro
    project), with a guide added (the example uses importance sampling from the prior)."""

    def model(observed):
        mu = pyro.sample("mu", dist.Uniform(0.0, 1.0))
        for i in range(len(observed)):
            pyro.sample(f"obs_{i}", dist.Normal(simulate_descent(mu), TIME_SIGMA), obs=observed[i])
        return mu

    def guide(observed):
        loc = pyro.param("mu_logit_loc", torch.tensor(-2.0))
        sd = pyro.param("mu_logit_scale", torch.tensor(0.3), constraint=constraints.positive)
        pyro.sample("mu", dist.TransformedDistribution(dist.Normal(loc, sd), dist.transforms.SigmoidTransform()))

    return model, guide


class _TinyVAE(nn.Module):
    """A 4-pixel Bernoulli VAE with a 2-dimensional latent and a 3-unit encoder hidden layer."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 3), nn.Softplus(), _Split(3, 2))
        self.decoder = nn.Sequential(nn.Linear(2, 4), nn.Sigmoid())

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


VAE_X = torch.tensor(
    [[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [1.0, 0.0, 1.0, 1.0]]
)


@_case(args=(VAE_X,), max_plate_nesting=1)
def tiny_vae():
    """A tiny VAE: torch.nn encoder (guide) and decoder (model), seeded init, a local latent per data point."""
    vae = _seeded(0, _TinyVAE)
    return vae.model, vae.guide
