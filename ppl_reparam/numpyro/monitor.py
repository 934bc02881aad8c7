"""The NumPyro backend of :class:`ppl_reparam.monitor.VarianceMonitor`: call it with ``svi.get_params(state)``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

from .. import monitor
from .variance import gradient_variance


class VarianceMonitor(monitor.VarianceMonitor):
    """Measure the gradient variance of ``elbos`` on ``model`` and ``guide`` every ``every`` steps of any
    SVI loop, at the parameter values it is given::

        monitor = VarianceMonitor(model, guide, {"score": ScoreFunctionELBO(), "pathwise": PathwiseELBO()},
                                  every=100, out="results/monitor")
        state = svi.init(random.PRNGKey(0), x)
        for step in range(1000):
            state, loss = svi.update(state, x)
            monitor(step, svi.get_params(state), x)

    Each measurement is :func:`~ppl_reparam.numpyro.gradient_variance` at ``params`` with the monitor's
    ``num_reps``, seeds and ``options`` (``chunk_particles``): a pure function of them, so the SVI state
    and its PRNG key are untouched; the same ELBO objects are measured every time, so each compiles
    once. Arguments: :class:`ppl_reparam.monitor.VarianceMonitor`.
    """

    def __call__(
        self, step: int, params: Mapping[str, jax.Array], *args: Any, **kwargs: Any
    ) -> list[dict[str, Any]] | None:
        """At a measuring step, measure each ELBO at ``params`` (constrained values, as
        ``svi.get_params(state)`` returns; ``args`` and ``kwargs`` go to the model and guide) and return
        the new rows; else None."""
        return self.measure(step, gradient_variance, *args, params=params, **kwargs)
