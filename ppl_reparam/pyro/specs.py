"""Build the Pyro ELBO an estimator spec names (see :mod:`ppl_reparam.specs`)."""

from __future__ import annotations

from typing import Any

from pyro.infer import ELBO

from ..specs import ElboClasses, EstimatorSpec, build_elbo
from .elbo import MeasureValuedELBO, PathwiseELBO, RebarELBO, RelaxELBO, ScoreFunctionELBO
from .iwae import IWAE

CLASSES = ElboClasses(ScoreFunctionELBO, PathwiseELBO, IWAE, MeasureValuedELBO, RebarELBO, RelaxELBO)


def make_elbo(spec: EstimatorSpec | str, max_plate_nesting: float = float("inf"), baseline: Any = None) -> ELBO:
    """The ELBO for ``spec`` (:func:`ppl_reparam.specs.build_elbo`), with vectorized particles (so that
    measurements batch repetitions); ``baseline`` replaces the spec's baseline."""
    nesting = {"max_plate_nesting": max_plate_nesting}
    return build_elbo(
        spec, CLASSES, baseline=baseline, elbo_options={"vectorize_particles": True, **nesting}, iwae_options=nesting
    )
