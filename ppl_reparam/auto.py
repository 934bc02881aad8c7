r"""``estimator="auto"``: each such site takes the estimator with the lowest work-normalized gradient
variance, measured at the current parameters (framework-free part).

A site asks with ``infer={"estimator": "auto"}`` or :func:`force_estimator(guide, "auto", ...)
<ppl_reparam.pyro.force_estimator>`. The first time an ELBO of this package meets such sites (and, with
``auto_every=k``, every ``k`` training steps after), it measures, site after site in the guide's order,
each applicable estimator (pathwise where the family has ``rsample``, the score function always, the
measure-valued one where the family has a weak derivative here) with the other sites at their
current choice: ``auto_reps`` gradient estimates each (the backend's ``gradient_variance``: the
parameters, the optimizer and the caller's random state are left alone), and keeps the one with the
lowest total variance of the gradient of the site's own parameters (those its distribution depends
on: an encoder's weights for an amortized site; all parameters for a site that has none) times the
runs of guide and model an estimate costs (:func:`ppl_reparam.choice.choose` with the cost counted in
evaluations: a particle is one, and the measure-valued estimator adds its reruns; deterministic for a
seed, where seconds are not). What it chose and why is kept per site
(``elbo.auto_choices``, :class:`~ppl_reparam.choice.Choice`, with ``reason()``) and in
``elbo.auto_log``. A candidate that cannot apply at the site (Gamma's concentration under the
measure-valued estimator) is left out, with its error in the log.

NumPyro's loss is traced under ``jit``, where nothing can be measured: there
:func:`ppl_reparam.numpyro.choose_site_estimators` measures at given parameters and returns the guide
with the choices made. Under any other ELBO an ``"auto"`` site is a ValueError: nothing there would
measure it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import replace
from typing import Any

from .choice import Choice, choose
from .study import measured_rows

CRITERION = "per_sample_variance"
"""Variance times the runs of guide and model an estimate costs (:func:`evaluations`): deterministic
for a seed, where seconds are not."""


class Unchosen(Exception):  # noqa: N818 (a signal, not an error: the ELBO catches it and chooses)
    """Raised by a run that meets an ``"auto"`` site without a choice: the ELBO then chooses
    (:func:`choose_sites`) and runs again."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class Resolution:
    """The estimator of each ``"auto"`` site for one run of a guide: ``chosen[name]``. With
    ``discover`` (a choosing run) every ``"auto"`` site is recorded in :attr:`found` with its
    distribution, in sampling order, and one without a choice takes ``discover(name, fn)``; without,
    a site without a choice raises :class:`Unchosen`."""

    def __init__(self, chosen: Mapping[str, str], discover: Callable[[str, Any], str] | None = None):
        self.chosen, self.discover = chosen, discover
        self.found: dict[str, Any] = {}

    def estimator(self, name: str, fn: Any) -> str:
        if self.discover is not None:
            self.found[name] = fn
            return self.chosen.get(name) or self.discover(name, fn)
        if name not in self.chosen:
            raise Unchosen(name)
        return self.chosen[name]


_RESOLUTION: ContextVar[Resolution | None] = ContextVar("auto_resolution", default=None)


class resolving:  # noqa: N801 (a context manager, used as a function)
    """Resolve ``"auto"`` sites with ``resolution`` inside the block (the ELBOs' guide runs)."""

    __slots__ = ("resolution", "token")

    def __init__(self, resolution: Resolution):
        self.resolution = resolution

    def __enter__(self) -> Resolution:
        self.token = _RESOLUTION.set(self.resolution)
        return self.resolution

    def __exit__(self, *exc: object) -> None:
        _RESOLUTION.reset(self.token)


def resolve(name: str, fn: Any) -> str:
    """The estimator of the ``"auto"`` site ``name`` (distribution ``fn``) in the current run; a
    ValueError outside this package's ELBOs."""
    resolution = _RESOLUTION.get()
    if resolution is None:
        raise ValueError(
            f"site {name!r} asks for estimator 'auto', which only this package's ELBOs resolve (by measuring "
            "each applicable estimator at the current parameters: Pyro's at their first step; in NumPyro, whose "
            "loss is traced under jit, first call ppl_reparam.numpyro.choose_site_estimators(elbo, model, guide, "
            "...) and train its guide); under another ELBO give it 'score' or 'pathwise'"
        )
    return resolution.estimator(name, fn)


def choose_sites(
    found: Mapping[str, Sequence[str]],
    chosen: dict[str, str],
    measure: Callable[[dict[str, str], int], tuple[Any, float]],
    step: int,
    groups: Mapping[str, Sequence[str]] | None = None,
) -> tuple[dict[str, Choice], list[dict[str, Any]]]:
    """Choose each site's estimator in turn, updating ``chosen`` in place.

    :param found: each ``"auto"`` site's candidate estimators, in sampling order.
    :param chosen: the current choices (every site of ``found`` has one: its first candidate at first).
    :param measure: ``measure(resolution, j)``: the backend's ``GradientStats`` of the ELBO with the
        ``"auto"`` sites resolved by ``resolution`` (the ``j``-th measurement of this round, for its seed),
        and the runs of guide and model an estimate costs (:func:`evaluations`); a ValueError where the
        candidate cannot apply.
    :param step: the training step, for the log.
    :param groups: each site's parameters, the group its choice is made on (missing or empty: all).
    :returns: each site's :class:`~ppl_reparam.choice.Choice` and the log rows of this round.
    """
    choices, log, j = {}, [], 0
    for name, candidates in found.items():
        stats, cost, refused = {}, {}, {}
        for candidate in candidates:
            try:
                stats[candidate], cost[candidate] = measure({**chosen, name: candidate}, j)
            except ValueError as e:
                refused[candidate] = str(e)
            j += 1
        if not stats:
            raise ValueError(f"site {name!r}: no estimator applies: {refused}")
        params = list(next(iter(stats.values())))
        group = [p for p in (groups or {}).get(name) or [] if p in params] or params
        label = ", ".join(group)
        rows = measured_rows(stats, {label: group}, 0.95, step, cost)
        choice = replace(choose(rows, label, CRITERION), criterion="variance_x_evaluations")
        chosen[name] = choice.chosen
        choices[name] = choice
        reason = choice.reason() + "".join(f"; {c} not applicable: {e}" for c, e in refused.items())
        log.append({"step": step, "site": name, "chosen": choice.chosen, "reason": reason})
    return choices, log


_MEASUREMENTS: dict[str, Callable[..., Any]] = {}


def register_measurement(backend: str, gradient_variance: Callable[..., Any]) -> None:
    """Give the ELBOs of ``backend`` its ``gradient_variance`` to measure candidates with (registered by
    the backend's variance module, which imports the ELBOs: so that they need not import it)."""
    _MEASUREMENTS[backend] = gradient_variance


def measurement(backend: str) -> Callable[..., Any]:
    """The ``gradient_variance`` :func:`register_measurement` gave for ``backend``."""
    return _MEASUREMENTS[backend]


def candidates(
    name: str, fn: Any, can_rsample: Callable[[Any], bool], check_measure: Callable[[str, Any], None]
) -> list[str]:
    """The estimators that apply at the site ``name`` with distribution ``fn``: pathwise where the
    backend's ``can_rsample`` says so, the score function always, the measure-valued one where the
    backend's ``check_measure`` does not raise. (REBAR is not offered: it needs a model that takes
    relaxed values at the bits, which cannot be checked here; nor RELAX, whose control learns first.)"""
    found = ["pathwise"] if can_rsample(fn) else []
    found.append("score")
    try:
        check_measure(name, fn)
        found.append("measure")
    except ValueError:
        pass
    return found


def evaluations(particles: int, reruns: int) -> int:
    """Runs of guide and model an estimate costs: one per particle, and each measure-valued site's
    reruns (:mod:`ppl_reparam.measure_valued`) on top, per particle."""
    return particles * (1 + reruns)
