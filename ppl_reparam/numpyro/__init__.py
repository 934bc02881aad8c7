"""NumPyro backend: per-site estimator control, ELBO variants and gradient-variance measurement.

The same public names as :mod:`ppl_reparam.pyro` (but ``AmortizedNormal``, a torch module). Imports
JAX and NumPyro only (never torch or Pyro).
"""

from .. import BACKEND_API
from ..forcing import ESTIMATORS
from .auto import ResolvedGuide, choose_site_estimators
from .baselines import ConstantBaseline, LearnedBaseline, LeaveOneOutBaseline, MovingAverageBaseline
from .elbo import MeasureValuedELBO, PathwiseELBO, RebarELBO, RelaxELBO, ScoreFunctionELBO
from .guides import MeanField
from .handlers import EstimatorDistribution, force_estimator
from .iwae import IWAE
from .monitor import VarianceMonitor
from .variance import compare_estimators, gradient_variance

# the imports above re-export these (tests/test_imports.py)
__all__ = ["ResolvedGuide", "choose_site_estimators", *BACKEND_API]
