"""Pyro backend: per-site estimator control, ELBO variants and gradient-variance measurement."""

from ..forcing import ESTIMATORS
from .baselines import ConstantBaseline, LearnedBaseline, LeaveOneOutBaseline, MovingAverageBaseline
from .elbo import PathwiseELBO, ScoreFunctionELBO
from .guides import AmortizedNormal, MeanField
from .handlers import EstimatorDistribution, force_estimator
from .iwae import IWAE
from .variance import compare_estimators, gradient_variance

__all__ = [
    "AmortizedNormal",
    "ConstantBaseline",
    "ESTIMATORS",
    "EstimatorDistribution",
    "IWAE",
    "LearnedBaseline",
    "LeaveOneOutBaseline",
    "MeanField",
    "MovingAverageBaseline",
    "PathwiseELBO",
    "ScoreFunctionELBO",
    "compare_estimators",
    "force_estimator",
    "gradient_variance",
]
