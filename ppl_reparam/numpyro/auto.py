"""``estimator="auto"`` in NumPyro (:mod:`ppl_reparam.auto`): the choice is made before training, at
given parameters, since the ELBO's loss is traced under ``jit`` where nothing can be measured."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import random
from numpyro import handlers
from numpyro.infer.elbo import ELBO

from .. import auto
from ..choice import Choice
from ..study import derived_seed
from .handlers import ForceEstimatorMessenger, can_rsample, check_measure
from .variance import gradient_variance, init_params


class ResolvedGuide:
    """``guide`` with its ``"auto"`` sites taking the estimators of :attr:`estimators` (chosen by
    :func:`choose_site_estimators`, whose reasons are in :attr:`choices` and :attr:`log`); other
    attributes are the wrapped guide's."""

    def __init__(self, guide: Callable, estimators: Mapping[str, str], choices: Mapping[str, Choice] | None = None,
                 log: list[dict[str, Any]] | None = None):
        self.guide, self.estimators = guide, dict(estimators)
        self.choices, self.log = dict(choices or {}), list(log or [])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with auto.resolving(auto.Resolution(self.estimators)):
            return self.guide(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["guide"], name)

    def __repr__(self) -> str:
        return f"ResolvedGuide({self.guide!r}, {self.estimators})"


def candidates(name: str, fn: Any) -> list[str]:
    """The estimators that apply at a site (:func:`ppl_reparam.auto.candidates`)."""
    return auto.candidates(name, fn, can_rsample, check_measure)


def choose_site_estimators(
    elbo: ELBO,
    model: Callable,
    guide: Callable,
    *args: Any,
    params: Mapping[str, jax.Array] | None = None,
    num_reps: int = 20,
    seed: int = 0,
    **kwargs: Any,
) -> ResolvedGuide:
    """Choose the estimator of every ``"auto"`` site of ``guide`` under ``elbo`` at ``params``
    (constrained values, as ``svi.get_params(state)`` returns; missing ones take their initial values):
    each candidate is measured with ``num_reps`` gradient estimates (:func:`gradient_variance`), site
    after site, and the one with the lowest variance of the site's own parameters' gradient times the
    runs of guide and model an estimate costs is kept (:mod:`ppl_reparam.auto`).
    Returns the guide with the choices made, to train with ``SVI(model, resolved, optim, elbo)``."""
    key = random.PRNGKey(seed)
    forced = ForceEstimatorMessenger(getattr(elbo, "estimator", None), getattr(elbo, "sites", None))

    def forced_guide(*a: Any, **k: Any) -> Any:
        with forced:
            return guide(*a, **k)

    with auto.resolving(auto.Resolution({}, discover=lambda name, fn: candidates(name, fn)[0])):
        values, _ = init_params(model, forced_guide, key, *args, params=params, **kwargs)

    def run(values: dict[str, jax.Array]) -> tuple[dict, auto.Resolution]:
        """The guide's trace at ``values``, and the ``"auto"`` sites it met."""
        finding = auto.Resolution({}, discover=lambda name, fn: candidates(name, fn)[0])
        with auto.resolving(finding):
            seeded = handlers.seed(forced_guide, key)
            return handlers.trace(handlers.substitute(seeded, data=values)).get_trace(*args, **kwargs), finding

    def log_probs(values: dict[str, jax.Array]) -> dict[str, jax.Array]:
        tr, finding = run(values)
        return {n: jnp.sum(tr[n]["fn"].log_prob(jax.lax.stop_gradient(tr[n]["value"]))) for n in finding.found}

    discover = run(values)[1]
    found = {name: candidates(name, fn) for name, fn in discover.found.items()}
    groups = {}
    for name in found:
        grads = jax.grad(lambda v, n=name: log_probs(v)[n])(values)
        groups[name] = [p for p, g in grads.items() if np.any(np.asarray(g) != 0)]
    chosen = {name: c[0] for name, c in found.items()}

    def measure(resolution: dict[str, str], j: int) -> tuple[Any, int]:
        trial = ResolvedGuide(guide, resolution)
        stats = gradient_variance(elbo, model, trial, *args, params=values, num_reps=num_reps,
                                  seed=derived_seed(seed, j), **kwargs)
        return stats, auto.evaluations(elbo.num_particles, getattr(elbo, "reruns", 0))

    choices, log = auto.choose_sites(found, chosen, measure, 0, groups)
    return ResolvedGuide(guide, chosen, choices, log)
