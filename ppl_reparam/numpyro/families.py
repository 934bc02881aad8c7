r"""``ppl-reparam families`` on the NumPyro backend: each family of
:data:`ppl_reparam.families.FAMILIES` that NumPyro has, as a NumPyro distribution builder and test
function, measured by :mod:`ppl_reparam.numpyro.mc_gradients` with JAX in float64 (as the Pyro
backend's torch; NumPyro's default is float32). The study itself (exact gradients, notes, rows,
table) is :mod:`ppl_reparam.families`.

NumPyro 0.22 (with JAX 0.10) has Normal, LogNormal, Exponential, Gamma, Beta, Dirichlet (the last
three by JAX's implicit reparameterization of ``jax.random.gamma``), Poisson (no reparameterized
sampler) and RelaxedBernoulli (``RelaxedBernoulliLogits``: a logistic sample through a sigmoid,
explicit). It has no RelaxedOneHotCategorical, no straight-through distribution and no
OneHotCategorical; those families' rows say so (:data:`MISSING`) and carry no estimate.

NumPyro's Beta and Dirichlet are normalised Gamma draws, :math:`x = G_a/(G_a + G_b)`, and JAX
differentiates each Gamma draw implicitly; torch differentiates the Beta CDF at ``x`` itself,
:math:`\partial_a x = -\partial_a F(x; a, b)/q(x)` (the Dirichlet's marginal Beta CDFs). Both are
unbiased. For a one-dimensional ``x`` every reparameterization has the same conditional mean
velocity :math:`E[\partial_a x \mid x] = -\partial_a F/q` (the continuity equation
:math:`\partial_a q + \partial_x(q\,v) = 0` fixes it), so torch's per-sample gradient
:math:`f'(x)\,v(x)` is the conditional expectation of NumPyro's given ``x`` and has the smaller
variance (Rao-Blackwell; :data:`NOTES`). For the Dirichlet they are different estimators with no
such order.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from ..families import Backend, rebar_cost
from .mc_gradients import DistBuilder, Function, pathwise_jacobians, score_function_jacobians


@contextmanager
def _float64() -> Iterator[None]:
    """JAX with 64-bit floats in the block; the previous setting restored after."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


@dataclass(frozen=True)
class Implementation:
    """One family in NumPyro (an :class:`ppl_reparam.families.Implementation`); ``build`` and
    ``function`` are static arguments of the compiled estimators, so module-level functions compile
    once per process."""

    build: DistBuilder
    """Parameters ``(P,)`` -> one distribution of batch shape ``()``."""
    function: Function
    """One sample ``event_shape`` -> ``f``, a scalar."""

    def pathwise(self, params: tuple[float, ...], num_samples: int, seed: int) -> np.ndarray:
        """Per-sample pathwise gradients ``(num_samples, P)`` in float64, by :func:`pathwise_jacobians`."""
        with _float64():
            p = jnp.asarray(params, dtype=jnp.float64)
            return np.asarray(pathwise_jacobians(self.function, self.build, p, num_samples, seed=seed))

    def score(self, params: tuple[float, ...], num_samples: int, seed: int) -> np.ndarray:
        """Per-sample score-function gradients ``(num_samples, P)`` in float64, by
        :func:`score_function_jacobians`."""
        with _float64():
            p = jnp.asarray(params, dtype=jnp.float64)
            return np.asarray(score_function_jacobians(self.function, self.build, p, num_samples, seed=seed))


IMPLEMENTATIONS: dict[str, Implementation] = {
    "Normal": Implementation(lambda p: dist.Normal(p[0], p[1]), lambda x: x**2),
    "LogNormal": Implementation(lambda p: dist.LogNormal(p[0], p[1]), lambda x: x),
    "Exponential": Implementation(lambda p: dist.Exponential(p[0]), lambda x: x),
    "Gamma": Implementation(lambda p: dist.Gamma(p[0], p[1]), lambda x: x),
    "Beta": Implementation(lambda p: dist.Beta(p[0], p[1]), lambda x: x),
    "Dirichlet": Implementation(lambda p: dist.Dirichlet(p), lambda x: (x**2).sum(-1)),
    "Poisson": Implementation(lambda p: dist.Poisson(p[0]), lambda x: x),
    "RelaxedBernoulli": Implementation(lambda p: dist.RelaxedBernoulliLogits(p[0], p[1]), rebar_cost),
}
"""Each family NumPyro has, by name."""

MISSING: dict[str, str] = {
    "RelaxedOneHotCategorical": "not in NumPyro 0.22 (no RelaxedOneHotCategorical): no estimate",
    "RelaxedBernoulliStraightThrough":
        "not in NumPyro 0.22 (no straight-through distribution): no estimate",
    "RelaxedOneHotCategoricalStraightThrough":
        "not in NumPyro 0.22 (no RelaxedOneHotCategorical, straight-through or OneHotCategorical): no estimate",
}
"""The families NumPyro lacks, with the reason their rows show."""

NOTES: dict[str, str] = {
    "Beta": "implicit reparameterization of the two Gamma draws it normalises: unbiased, more variance "
            "than the implicit gradient of the Beta CDF (Pyro)",
    "Dirichlet": "implicit reparameterization of the Gamma draws it normalises (Pyro: of the marginal Beta CDFs)",
}
"""Where NumPyro's estimator differs from the one the family's note describes."""

NUMPYRO = Backend("numpyro", IMPLEMENTATIONS, MISSING, NOTES)
"""The NumPyro backend of the study."""
