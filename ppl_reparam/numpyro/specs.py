"""Build the NumPyro ELBO an estimator spec names (see :mod:`ppl_reparam.specs`)."""

from __future__ import annotations

from numpyro.infer.elbo import ELBO

from ..specs import IWAE_ESTIMATOR, EstimatorSpec, parse_spec
from .elbo import PathwiseELBO, ScoreFunctionELBO


def make_elbo(spec: EstimatorSpec | str) -> ELBO:
    """The ELBO for ``spec``, with vectorized particles."""
    if isinstance(spec, str):
        spec = parse_spec(spec)
    if spec.is_iwae:
        from .iwae import IWAE

        return IWAE(spec.particles, IWAE_ESTIMATOR[spec.base])
    options = {"baseline": spec.baseline} if spec.baseline is not None else {}
    if spec.stl:
        options["stl"] = True
    cls = ScoreFunctionELBO if spec.base == "score" else PathwiseELBO
    return cls(num_particles=spec.particles, analytic_kl=spec.analytic_kl, **options)
