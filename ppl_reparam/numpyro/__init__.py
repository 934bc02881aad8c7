"""NumPyro backend: per-site estimator control, ELBO variants and gradient-variance measurement.

Imports JAX and NumPyro only (never torch or Pyro).
"""

from .elbo import PathwiseELBO, ScoreFunctionELBO
from .handlers import ESTIMATORS, EstimatorDistribution, force_estimator
from .variance import compare_estimators, gradient_variance

__all__ = [
    "ESTIMATORS",
    "EstimatorDistribution",
    "PathwiseELBO",
    "ScoreFunctionELBO",
    "compare_estimators",
    "force_estimator",
    "gradient_variance",
]
