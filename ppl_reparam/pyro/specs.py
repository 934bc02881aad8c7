"""Build the Pyro ELBO an estimator spec names (see :mod:`ppl_reparam.specs`)."""

from __future__ import annotations

from pyro.infer import ELBO

from ..specs import IWAE_ESTIMATOR, EstimatorSpec, parse_spec
from .elbo import PathwiseELBO, ScoreFunctionELBO
from .iwae import IWAE


def make_elbo(spec: EstimatorSpec | str, max_plate_nesting: float = float("inf")) -> ELBO:
    """The ELBO for ``spec``, with vectorized particles (so that measurements batch repetitions)."""
    if isinstance(spec, str):
        spec = parse_spec(spec)
    if spec.is_iwae:
        return IWAE(spec.particles, IWAE_ESTIMATOR[spec.base], max_plate_nesting=max_plate_nesting)
    cls = ScoreFunctionELBO if spec.base == "score" else PathwiseELBO
    return cls(
        num_particles=spec.particles,
        vectorize_particles=True,
        max_plate_nesting=max_plate_nesting,
        analytic_kl=spec.analytic_kl,
        baseline=spec.baseline,
        stl=spec.stl,
    )
