"""Build the NumPyro ELBO an estimator spec names (see :mod:`ppl_reparam.specs`)."""

from __future__ import annotations

from typing import Any

from numpyro.infer.elbo import ELBO

from ..specs import ElboClasses, EstimatorSpec, build_elbo
from .elbo import MeasureValuedELBO, PathwiseELBO, RebarELBO, RelaxELBO, ScoreFunctionELBO
from .iwae import IWAE

CLASSES = ElboClasses(ScoreFunctionELBO, PathwiseELBO, IWAE, MeasureValuedELBO, RebarELBO, RelaxELBO)


def make_elbo(spec: EstimatorSpec | str, baseline: Any = None) -> ELBO:
    """The ELBO for ``spec`` (:func:`ppl_reparam.specs.build_elbo`), particles mapped with ``jax.vmap``;
    ``baseline`` replaces the spec's baseline."""
    return build_elbo(spec, CLASSES, baseline=baseline)
