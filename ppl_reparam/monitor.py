r"""Gradient variance and signal-to-noise measured every ``k`` steps of any SVI loop (framework-free part).

A :class:`VarianceMonitor` is called once per step of the user's own loop. At steps ``0, k, 2k, ...`` it
draws ``num_reps`` independent gradient estimates of each ELBO it was given at the parameters of that
moment (the backend's ``gradient_variance``: nothing is updated, the caller's RNG state is restored) and
records, per parameter group :math:`G` with elements :math:`\phi_j`, the total variance of the estimate
:math:`T_G = \sum_{j \in G} \operatorname{Var}[\hat g_j]` with its bootstrap-t interval, the per-sample
variance :math:`T_G \times` particles, the mean signal-to-noise ratio
:math:`\frac{1}{|G|}\sum_{j \in G} |\bar g_j| / s_j` and the work-normalized variance
:math:`T_G \times` seconds per estimate (:func:`~ppl_reparam.study.group_rows`). With ``out`` it rewrites
``variance.csv`` and ``variance.png`` after each measurement, atomically, so the figure follows the run.

The backends (:class:`ppl_reparam.pyro.VarianceMonitor`, :class:`ppl_reparam.numpyro.VarianceMonitor`)
supply the measurement; the schedule, groups, rows and files are here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from . import choice
from .choice import CRITERIA, Choice
from .stats import MIN_REPS
from .study import Groups, derived_seed, measured_rows, resolve_groups

Target = tuple[Callable, Callable, Any]
"""``(model, guide, elbo)``: an ELBO measured on a model and guide of its own."""


def named_elbos(elbos: Any) -> dict[str, Any]:
    """``{name: elbo}`` from a mapping, or from one ELBO named by its class."""
    if isinstance(elbos, Mapping):
        if not elbos:
            raise ValueError("elbos is empty: give an ELBO, or a mapping from names to ELBOs")
        return dict(elbos)
    return {type(elbos).__name__: elbos}


def named_targets(model: Callable, guide: Callable, elbos: Any) -> dict[str, Target]:
    """``{name: (model, guide, elbo)}``: each of :func:`named_elbos` on ``model`` and ``guide``, but a
    ``(model, guide, elbo)`` triple given as a mapping's value, which keeps its own model and guide."""
    return {
        name: tuple(value) if isinstance(value, tuple) else (model, guide, value)
        for name, value in named_elbos(elbos).items()
    }


class VarianceMonitor:
    """Every ``every`` steps, the gradient variance and SNR of each ELBO at the current parameters.

    :param model, guide: as given to SVI.
    :param elbos: the ELBO to measure, or a mapping from names to ELBOs (estimators compared on the same
        parameter values; the one the loop optimises need not be among them) or to ``(model, guide,
        elbo)`` triples, measured on a model and guide of their own that share the parameters (a
        relaxed model at another temperature; a guide carrying a baseline's state).
    :param every: measure at the steps divisible by ``every`` (the caller's step count, from 0).
    :param num_reps: independent gradient estimates per measurement (at least 5).
    :param groups: parameter groups (:data:`Groups`); None: one group per parameter.
    :param out: a folder for ``variance.csv`` and ``variance.png``, rewritten after every measurement;
        None: rows are kept in :attr:`rows` only.
    :param seed: the measurement at step ``s`` of the ``j``-th ELBO draws under ``derived_seed(seed, s, j)``.
    :param confidence: level of the variance intervals.
    :param choose: a parameter group: at every measurement, choose the ELBO with the lowest
        work-normalized variance of that group (:func:`ppl_reparam.choice.choose`, ``criterion``), kept in
        :attr:`choice` and :attr:`choices` (and ``choices.csv`` with ``out``), for a loop that switches to it.
    :param options: further keyword arguments of the backend's ``gradient_variance``.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        elbos: Any,
        *,
        every: int = 100,
        num_reps: int = 100,
        groups: Groups | None = None,
        out: str | os.PathLike[str] | None = None,
        seed: int = 0,
        confidence: float = 0.95,
        choose: str | None = None,
        criterion: str = CRITERIA[0],
        **options: Any,
    ):
        if every < 1:
            raise ValueError(f"every must be a positive number of steps, got {every}")
        if num_reps < MIN_REPS:
            raise ValueError(f"num_reps must be at least {MIN_REPS}, got {num_reps}")
        self.model, self.guide, self.options = model, guide, options
        self.targets = named_targets(model, guide, elbos)
        self.elbos = {name: elbo for name, (_, _, elbo) in self.targets.items()}
        self.every = every
        self.num_reps = num_reps
        self.groups = groups
        self.out = None if out is None else Path(out)
        self.seed = seed
        self.confidence = confidence
        self.choose, self.criterion = choose, choice.check_criterion(criterion)
        self.rows: list[dict[str, Any]] = []
        self.stats: dict[str, Any] = {}
        self.choice: Choice | None = None
        self.choices: list[dict[str, Any]] = []
        if self.out is not None:
            from .report import check_output_folder

            check_output_folder(self.out, "out")

    def due(self, step: int) -> bool:
        """Whether ``step`` is a measuring step."""
        return step % self.every == 0

    def measure(
        self, step: int, gradient_variance: Callable, *args: Any, seed: int | None = None,
        targets: Mapping[str, Target] | None = None, **kwargs: Any,
    ) -> list[dict[str, Any]] | None:
        """At a measuring step, ``gradient_variance`` of each ELBO, then :meth:`record`; else None.

        The ``j``-th ELBO draws under ``derived_seed(seed, step, j)`` and the intervals' bootstrap under
        ``seed``, the monitor's; a ``seed`` given here is the measurement's own (a caller with its own seed
        scheme, as ``ppl-reparam vae``): the ``j``-th ELBO then draws under ``derived_seed(seed, j)``.
        ``targets`` replaces :attr:`targets` for this measurement (the same names: a guide that carries a
        baseline's state as trained so far). ``args`` and ``kwargs`` go to ``gradient_variance`` after the
        monitor's own.
        """
        if not self.due(step):
            return None
        targets = self.targets if targets is None else targets
        if list(targets) != list(self.targets):
            raise ValueError(f"targets must have the monitor's names {list(self.targets)}, got {list(targets)}")
        keys = (self.seed, step) if seed is None else (seed,)
        stats = {
            name: gradient_variance(
                elbo, model, guide, *args, num_reps=self.num_reps, seed=derived_seed(*keys, j),
                confidence=self.confidence, **self.options, **kwargs,
            )
            for j, (name, (model, guide, elbo)) in enumerate(targets.items())
        }
        return self.record(step, stats, seed)

    def record(self, step: int, stats: Mapping[str, Any], seed: int | None = None) -> list[dict[str, Any]]:
        """Add the rows of one measurement (``{elbo name: GradientStats}``, kept in :attr:`stats`; the
        bootstrap under ``seed``, default the monitor's), write the files, return the rows."""
        self.stats = dict(stats)
        first = next(iter(stats.values()))
        groups = resolve_groups(self.groups, list(first))
        seed = self.seed if seed is None else seed
        rows = [{"step": step, **row} for row in measured_rows(stats, groups, self.confidence, seed)]
        self.rows.extend(rows)
        if self.choose is not None:
            self.choice = choice.choose(rows, self.choose, self.criterion)
            self.choices.append({"step": step, "chosen": self.choice.chosen, "reason": self.choice.reason()})
        if self.out is not None:
            self.write()
        return rows

    def write(self) -> None:
        """Write ``variance.csv``, ``variance.png`` (and ``choices.csv``) into :attr:`out`, each atomically."""
        from .plots import plot_group_variance
        from .report import write_csv

        write_csv(self.rows, self.out / "variance.csv")
        if self.choices:
            write_csv(self.choices, self.out / "choices.csv")
        plot_group_variance(self.rows, self.out / "variance.png", x="step")
