"""Pyro backend: per-site estimator control, ELBO variants and gradient-variance measurement."""

from .. import BACKEND_API
from ..forcing import ESTIMATORS
from .baselines import ConstantBaseline, LearnedBaseline, LeaveOneOutBaseline, MovingAverageBaseline
from .elbo import (
    JitPathwiseELBO,
    JitScoreFunctionELBO,
    MeasureValuedELBO,
    PathwiseELBO,
    RebarELBO,
    RelaxELBO,
    ScoreFunctionELBO,
)
from .guides import AmortizedNormal, MeanField
from .handlers import EstimatorDistribution, force_estimator
from .iwae import IWAE
from .monitor import VarianceMonitor
from .variance import compare_estimators, gradient_variance

# the imports above re-export these (tests/test_imports.py)
__all__ = ["AmortizedNormal", "JitPathwiseELBO", "JitScoreFunctionELBO", *BACKEND_API]
