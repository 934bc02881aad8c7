"""ppl-reparam: choose the score-function or the pathwise gradient estimator per latent site of a Pyro
or NumPyro guide, and measure the difference.

The backends, :mod:`ppl_reparam.pyro` and :mod:`ppl_reparam.numpyro`, export the same names
(:data:`BACKEND_API`); this package itself imports neither framework.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ppl-reparam")
except PackageNotFoundError:  # run from a source tree that is not installed
    __version__ = "0+unknown"

BACKEND_API = (
    "ConstantBaseline",
    "ESTIMATORS",
    "EstimatorDistribution",
    "IWAE",
    "LearnedBaseline",
    "LeaveOneOutBaseline",
    "MeanField",
    "MeasureValuedELBO",
    "MovingAverageBaseline",
    "PathwiseELBO",
    "RebarELBO",
    "RelaxELBO",
    "ScoreFunctionELBO",
    "VarianceMonitor",
    "compare_estimators",
    "force_estimator",
    "gradient_variance",
)
"""The public names of both backends (the Pyro one adds ``AmortizedNormal``, a torch module, and the
``pyro.ops.jit``-compiled ``JitScoreFunctionELBO`` and ``JitPathwiseELBO``: NumPyro's ELBOs run under
``jax.jit`` as they are)."""
