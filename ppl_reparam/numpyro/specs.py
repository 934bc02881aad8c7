"""Build the NumPyro ELBO an estimator spec names (see :mod:`ppl_reparam.specs`)."""

from __future__ import annotations

from typing import Any

from numpyro.infer.elbo import ELBO

from ..specs import ElboClasses, EstimatorSpec, build_elbo
from .elbo import MeasureValuedELBO, PathwiseELBO, RebarELBO, ScoreFunctionELBO
from .iwae import IWAE


def _no_relax(**options: Any) -> ELBO:
    raise ValueError(
        "estimator spec relax: RELAX (a control that learns by a second derivative of the estimate inside the "
        "training step) is built for the Pyro backend only; use --backend pyro, or rebar here"
    )


CLASSES = ElboClasses(ScoreFunctionELBO, PathwiseELBO, IWAE, MeasureValuedELBO, RebarELBO, _no_relax)


def make_elbo(spec: EstimatorSpec | str, baseline: Any = None) -> ELBO:
    """The ELBO for ``spec`` (:func:`ppl_reparam.specs.build_elbo`), particles mapped with ``jax.vmap``;
    ``baseline`` replaces the spec's baseline."""
    return build_elbo(spec, CLASSES, baseline=baseline)
