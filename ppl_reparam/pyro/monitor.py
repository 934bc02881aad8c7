"""The Pyro backend of :class:`ppl_reparam.monitor.VarianceMonitor`: call it after each ``svi.step``."""

from __future__ import annotations

from typing import Any

from .. import monitor
from .variance import gradient_variance


class VarianceMonitor(monitor.VarianceMonitor):
    """Measure the gradient variance of ``elbos`` on ``model`` and ``guide`` every ``every`` steps of any
    SVI loop, at the parameter values of that moment (the param store's, or the guide module's)::

        monitor = VarianceMonitor(model, guide, {"score": ScoreFunctionELBO(), "pathwise": PathwiseELBO()},
                                  every=100, groups={"encoder": ["encoder"]}, out="results/monitor")
        for step in range(1000):
            svi.step(x)
            monitor(step, x)

    Each measurement is :func:`~ppl_reparam.pyro.gradient_variance` with the monitor's ``num_reps``,
    seeds and ``options`` (``method``, ``threads``, ...): the parameters, their gradients, the param
    store and the caller's RNG state are left as they were, so the loop runs exactly as it would
    without the monitor. Arguments: :class:`ppl_reparam.monitor.VarianceMonitor`.
    """

    def __call__(self, step: int, *args: Any, **kwargs: Any) -> list[dict[str, Any]] | None:
        """At a measuring step, measure each ELBO (``args`` and ``kwargs`` go to the model and guide, as
        for ``svi.step``) and return the new rows; else None."""
        return self.measure(step, gradient_variance, *args, **kwargs)
