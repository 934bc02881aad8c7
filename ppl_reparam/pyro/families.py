"""``ppl-reparam families`` on the Pyro backend: each family of :data:`ppl_reparam.families.FAMILIES`
as a torch distribution builder and test function, measured by :mod:`ppl_reparam.pyro.mc_gradients`
in float64. The study itself (exact gradients, notes, rows, table) is :mod:`ppl_reparam.families`.

Pyro has every family: Gamma, Beta and Dirichlet by torch's implicit reparameterization, the
relaxations and their straight-through variants from ``pyro.distributions``; the straight-through
rows' score column is the score function of Bernoulli and OneHotCategorical.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyro.distributions as dist
import torch

from ..families import TEMPERATURE, Backend, rebar_cost
from .mc_gradients import DistBuilder, Function, pathwise_jacobians, score_function_jacobians


def _tensor(params: tuple[float, ...]) -> torch.Tensor:
    """The parameters as a float64 tensor (P,)."""
    return torch.tensor(params, dtype=torch.float64)


@dataclass(frozen=True)
class Implementation:
    """One family in torch (an :class:`ppl_reparam.families.Implementation`)."""

    build: DistBuilder
    """Parameter rows ``(..., P)`` -> a distribution of batch shape ``(...)``, for the pathwise estimator."""
    function: Function
    """Samples ``(N, *event_shape)`` -> ``f`` per sample, ``(N,)``."""
    score_build: DistBuilder | None = None
    """Straight-through rows: the discrete distribution whose score function estimates the discrete
    objective without bias; None: ``build`` serves both estimators."""

    def pathwise(self, params: tuple[float, ...], num_samples: int, seed: int) -> np.ndarray:
        """Per-sample pathwise gradients ``(num_samples, P)``, by :func:`pathwise_jacobians`."""
        return pathwise_jacobians(self.function, self.build, _tensor(params), num_samples, seed=seed).numpy()

    def score(self, params: tuple[float, ...], num_samples: int, seed: int) -> np.ndarray:
        """Per-sample score-function gradients ``(num_samples, P)`` of ``score_build`` (else ``build``)."""
        build = self.score_build or self.build
        return score_function_jacobians(self.function, build, _tensor(params), num_samples, seed=seed).numpy()


def _fixed(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64)


IMPLEMENTATIONS: dict[str, Implementation] = {
    "Normal": Implementation(lambda p: dist.Normal(p[..., 0], p[..., 1]), lambda x: x**2),
    "LogNormal": Implementation(lambda p: dist.LogNormal(p[..., 0], p[..., 1]), lambda x: x),
    "Exponential": Implementation(lambda p: dist.Exponential(p[..., 0]), lambda x: x),
    "Gamma": Implementation(lambda p: dist.Gamma(p[..., 0], p[..., 1]), lambda x: x),
    "Beta": Implementation(lambda p: dist.Beta(p[..., 0], p[..., 1]), lambda x: x),
    "Dirichlet": Implementation(lambda p: dist.Dirichlet(p), lambda x: (x**2).sum(-1)),
    "Poisson": Implementation(lambda p: dist.Poisson(p[..., 0]), lambda x: x),
    "RelaxedBernoulli": Implementation(lambda p: dist.RelaxedBernoulli(p[..., 0], logits=p[..., 1]), rebar_cost),
    "RelaxedOneHotCategorical": Implementation(
        lambda p: dist.RelaxedOneHotCategorical(_fixed(TEMPERATURE), logits=p), lambda x: rebar_cost(x[..., 1])),
    "RelaxedBernoulliStraightThrough": Implementation(
        lambda p: dist.RelaxedBernoulliStraightThrough(_fixed(TEMPERATURE), logits=p[..., 0]), rebar_cost,
        score_build=lambda p: dist.Bernoulli(logits=p[..., 0])),
    "RelaxedOneHotCategoricalStraightThrough": Implementation(
        lambda p: dist.RelaxedOneHotCategoricalStraightThrough(_fixed(TEMPERATURE), logits=p),
        lambda z: rebar_cost(z[..., 1]), score_build=lambda p: dist.OneHotCategorical(logits=p)),
}
"""Each family by name, in torch."""

PYRO = Backend("pyro", IMPLEMENTATIONS)
"""The Pyro backend of the study: every family."""
