r"""Choosing an estimator by measurement: the lowest work-normalized variance among candidate specs
(framework-free part).

Each candidate estimator spec is measured at the same parameters (``gradient_variance``, the same
number of repetitions, independent draws) and scored on one parameter group :math:`G` by

- ``"per_sample_variance"`` (default): :math:`T_G \times K`, the total variance of the estimate times its
  particles, i.e. variance times the number of model evaluations an estimate costs (Glynn and Whitt's
  work-normalized variance with the cost counted in evaluations): deterministic for a seed;
- ``"variance_x_seconds"``: :math:`T_G \times` the measured seconds per estimate, which counts what an
  evaluation costs on this machine (a baseline network, VIMCO's K-fold bound) but varies from run to
  run.

The lowest score is chosen. The choice says why: every candidate's score with its 95% interval and its
ratio to the chosen one, and whether the runner-up's interval overlaps the chosen one's (then the two
are not told apart at this number of repetitions, and the choice between them is a coin toss: measure
with more). A candidate that estimates another objective's gradient (the IWAE bases) is marked so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .specs import RunSpec, objective_of, parse_run_spec
from .study import measured_rows, resolve_groups

CRITERIA = ("per_sample_variance", "variance_x_seconds")


def check_criterion(criterion: str) -> str:
    """``criterion`` if it is one of :data:`CRITERIA`, else a ValueError listing them (before any work)."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose from {', '.join(CRITERIA)}")
    return criterion


@dataclass(frozen=True)
class Choice:
    """The chosen spec, the group and criterion it was chosen on, and the candidates ranked (rows with
    ``spec``, ``score``, ``ci_low``, ``ci_high``, ``ratio_to_chosen``, ``objective``)."""

    chosen: str
    group: str
    criterion: str
    ranking: list[dict[str, Any]]

    @property
    def distinguished(self) -> bool:
        """Whether the runner-up's interval lies above the chosen one's."""
        return len(self.ranking) < 2 or self.ranking[1]["ci_low"] > self.ranking[0]["ci_high"]

    def reason(self) -> str:
        """One sentence: what was chosen, on what, against what."""
        best = self.ranking[0]
        what = self.criterion.replace("_", " ")
        text = (f"{self.chosen}: the lowest {what} of {self.group} among {len(self.ranking)} candidates, "
                f"{best['score']:.4g} [{best['ci_low']:.4g}, {best['ci_high']:.4g}]")
        if best["objective"] not in ("", "elbo"):
            text += f" (the gradient of another objective, {best['objective']})"
        if len(self.ranking) > 1:
            second = self.ranking[1]
            text += f"; next {second['spec']}, {second['ratio_to_chosen']:.3g}x"
            if not self.distinguished:
                text += " (their intervals overlap: measure with more repetitions to tell them apart)"
        return text


def choose(rows: Sequence[dict[str, Any]], group: str, criterion: str = CRITERIA[0],
           objectives: dict[str, str] | None = None) -> Choice:
    """The candidate with the lowest ``criterion`` on ``group``, from the rows of
    :func:`ppl_reparam.study.group_rows` with a ``measured`` column (one per spec and group);
    ``objectives`` maps a spec to the objective its gradient estimates (shown in the ranking)."""
    check_criterion(criterion)
    mine = [r for r in rows if r["group"] == group]
    if not mine:
        groups = sorted({r["group"] for r in rows})
        raise ValueError(f"no measurement of the parameter group {group!r}; the groups are {groups}")
    scale = {
        "per_sample_variance": lambda r: r["particles"],
        "variance_x_seconds": lambda r: r["seconds_per_estimate"],
    }[criterion]
    ranked = sorted(mine, key=lambda r: r["total_variance"] * scale(r))
    best = ranked[0]["total_variance"] * scale(ranked[0])
    ranking = [
        {
            "spec": r["measured"],
            "score": r["total_variance"] * scale(r),
            "ci_low": r["ci_low"] * scale(r),
            "ci_high": r["ci_high"] * scale(r),
            "ratio_to_chosen": _ratio(r["total_variance"] * scale(r), best),
            "objective": (objectives or {}).get(r["measured"], ""),
        }
        for r in ranked
    ]
    return Choice(ranking[0]["spec"], group, criterion, ranking)


def _ratio(score: float, best: float) -> float:
    if best > 0:
        return score / best
    return 1.0 if score == 0 else float("inf")


def choose_from_stats(
    stats: Mapping[str, Any],
    group: Sequence[str] | str | None = None,
    criterion: str = CRITERIA[0],
    confidence: float = 0.95,
    seed: int = 0,
) -> Choice:
    """:func:`choose` on ``{spec: GradientStats}`` measured at the same parameters; ``group`` names the
    parameters (or name prefixes, as :data:`ppl_reparam.study.Groups`) the choice is made on (None:
    all of them)."""
    specs: dict[str, RunSpec] = {name: parse_run_spec(name) for name in stats}
    measured = sorted(name for name, spec in specs.items() if spec.base == "measure")
    if measured and criterion == "per_sample_variance":
        raise ValueError(
            f"{measured}: the measure-valued estimator costs reruns of guide and model beside its particles, which "
            "per_sample_variance (variance x particles) does not count; choose with criterion='variance_x_seconds' "
            "(--criterion variance_x_seconds)"
        )
    names = list(next(iter(stats.values())))
    label = "all parameters" if group is None else group if isinstance(group, str) else ", ".join(group)
    members = {label: names} if group is None else resolve_groups({label: group}, names)
    rows = measured_rows(stats, members, confidence, seed, {name: spec.particles for name, spec in specs.items()})
    return choose(rows, label, criterion, {name: objective_of(spec) for name, spec in specs.items()})


def measure_and_choose(
    compare_estimators: Callable[..., Mapping[str, Any]],
    make_elbo: Callable[[str], Any],
    model: Callable,
    guide: Callable,
    candidates: Sequence[str],
    args: tuple,
    kwargs: dict,
    group: Sequence[str] | str | None,
    criterion: str,
    num_reps: int,
    seed: int,
) -> Choice:
    """A backend's ``choose_estimator``: its ``compare_estimators`` of the candidates' ELBOs (its
    ``make_elbo``), then :func:`choose_from_stats`."""
    check_criterion(criterion)
    elbos = {str(parse_run_spec(c)): make_elbo(c) for c in candidates}
    if not elbos:
        raise ValueError("candidates is empty: give the estimator specs to choose from")
    stats = compare_estimators(model, guide, elbos, *args, num_reps=num_reps, seed=seed, **kwargs)
    return choose_from_stats(stats, group, criterion, seed=seed)
