r"""Bayesian logistic regression on scikit-learn's breast-cancer data (Wisconsin diagnostic, 569
tumours, 30 features; label 1 = benign).

.. math:: w_d \sim \mathcal N(0, 1),\ d = 1..30, \qquad b \sim \mathcal N(0, 1), \qquad
   y_i \mid x_i, w, b \sim \operatorname{Bernoulli}\big(\sigma(x_i^\top w + b)\big).

This is the model of the Bayesian logistic regression experiment of Mohamed, Rosca, Figurnov and
Mnih, "Monte Carlo Gradient Estimation in Machine Learning", JMLR 2020, section 8: pathwise and
score-function gradients, each with and without a control variate (:func:`experiment_elbos`; the
control variates here are this package's: the leave-one-out baseline for the score function, sticking
the landing for the pathwise estimator). There is no closed-form posterior.

Data (:func:`load_data`): ``perm = numpy.random.default_rng(seed).permutation(569)``, the first
``round(569 * test_fraction)`` rows of ``perm`` are the test set, the rest the training set; features
are standardized with the training set's mean and standard deviation.

Held-out evaluation (:func:`evaluate`) uses the posterior predictive of S guide draws
:math:`(w_s, b_s) \sim q`, :math:`\bar p_i = \frac1S \sum_s \sigma(x_i^\top w_s + b_s)`: accuracy of
:math:`[\bar p_i > 1/2]`, and the mean log predictive density
:math:`\frac1n \sum_i \log \frac1S \sum_s p(y_i \mid x_i, w_s, b_s)`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import ELBO
from sklearn.datasets import load_breast_cancer

from ppl_reparam.pyro import PathwiseELBO, ScoreFunctionELBO

__all__ = ["BreastCancer", "HeldOut", "evaluate", "experiment_elbos", "load_data", "model"]


class BreastCancer(NamedTuple):
    """Standardized features (float32) and 0/1 labels of the training and test sets."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


class HeldOut(NamedTuple):
    """Posterior-predictive accuracy and mean log predictive density per test datum."""

    accuracy: float
    log_likelihood: float


def load_data(test_fraction: float = 0.25, seed: int = 0) -> BreastCancer:
    """The seeded split described in the module docstring (427 training, 142 test rows by default)."""
    x, y = load_breast_cancer(return_X_y=True)
    n_test = min(max(round(len(x) * test_fraction), 1), len(x) - 1)
    perm = np.random.default_rng(seed).permutation(len(x))
    test, train = perm[:n_test], perm[n_test:]
    mean, sd = x[train].mean(0), x[train].std(0)

    def tensors(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor((x[rows] - mean) / sd, dtype=torch.float32), torch.tensor(y[rows], dtype=torch.float32)

    return BreastCancer(*tensors(train), *tensors(test))


def model(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Latent sites ``"weights"`` (one event of ``x.shape[-1]``) and ``"bias"``; labels ``"y"`` in the
    plate ``"data"`` (dim -1). Works under vectorized particles (``max_plate_nesting=1``)."""
    weights = pyro.sample("weights", dist.Normal(0.0, 1.0).expand([x.shape[-1]]).to_event(1))
    bias = pyro.sample("bias", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Bernoulli(logits=(x * weights).sum(-1) + bias), obs=y)


def experiment_elbos(num_particles: int = 16) -> dict[str, ELBO]:
    """The four estimators of the experiment, with vectorized particles."""
    options = dict(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    return {
        "score": ScoreFunctionELBO(**options),
        "score + RLOO baseline": ScoreFunctionELBO(**options, baseline="rloo"),
        "pathwise": PathwiseELBO(**options),
        "pathwise + STL": PathwiseELBO(**options, stl=True),
    }


@torch.no_grad()
def evaluate(guide, x: torch.Tensor, y: torch.Tensor, num_samples: int = 1000, seed: int = 0) -> HeldOut:
    """Held-out accuracy and log predictive density of the guide's posterior predictive on ``(x, y)``
    from ``num_samples`` draws, all in one vectorized pass; seeded without touching the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with pyro.plate("posterior_draws", num_samples, dim=-2):
            guide_trace = poutine.trace(guide).get_trace(x)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    likelihood = model_trace.nodes["y"]["fn"]
    probs = likelihood.mean.mean(0)
    log_density = likelihood.log_prob(y).logsumexp(0) - math.log(num_samples)
    accuracy = ((probs > 0.5) == (y > 0.5)).float().mean()
    return HeldOut(accuracy.item(), log_density.mean().item())
