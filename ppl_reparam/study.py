"""The VAE study's bookkeeping, shared by both backends (framework-free): parameter groups, derived
seeds, the rows of gradient-variance measurements and comparisons, and the study's result."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .specs import RunSpec, objective_of
from .stats import GroupStats, MeanAgreement, variance_ratio

GROUPS = ("encoder", "decoder")
"""Parameter groups, by the first component of the param-store name."""


def derived_seed(*keys: int) -> int:
    """A 32-bit seed derived from integer keys (NumPy SeedSequence)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def group_rows(
    stats: Mapping[str, Any], groups: Mapping[str, Sequence[str]], particles: int, confidence: float, seed: int
) -> list[dict[str, Any]]:
    """One row per parameter group of a :class:`~ppl_reparam.stats.GradientStats` measurement:
    total variance of the estimate with its interval, per-sample variance (x ``particles``) with its
    interval, mean SNR, seconds per estimate and the work-normalized variance (variance x seconds)."""
    rows = []
    per_estimate = stats.seconds / stats.num_reps
    for group, names in groups.items():
        g = GroupStats.from_stats(stats, names, confidence, seed=seed)
        rows.append(
            {
                "group": group,
                "particles": particles,
                "total_variance": g.total_variance,
                "ci_low": g.total_variance_ci[0],
                "ci_high": g.total_variance_ci[1],
                "per_sample_variance": g.total_variance * particles,
                "per_sample_ci_low": g.total_variance_ci[0] * particles,
                "per_sample_ci_high": g.total_variance_ci[1] * particles,
                "mean_snr": g.mean_snr,
                "elements": g.num_elements,
                "reps": g.num_reps,
                "seconds": stats.seconds,
                "seconds_per_estimate": per_estimate,
                "variance_x_seconds": g.total_variance * per_estimate,
            }
        )
    return rows


def reference_of(names: Sequence[str]) -> str | None:
    """The estimator others are compared with: ``pathwise`` if measured, else ``score``, else None."""
    return next((r for r in ("pathwise", "score") if r in names), None)


def comparison_rows(
    stats: Mapping[str, Any], specs: Mapping[str, RunSpec], groups: Mapping[str, Sequence[str]],
    confidence: float, seed: int,
) -> list[dict[str, Any]]:
    """Every measured spec against the reference (:func:`reference_of`), per group: the ratio of
    per-sample total variances (variance x particles) with its bootstrap-t interval
    (:func:`~ppl_reparam.stats.variance_ratio`), whether the two estimate the same objective's
    gradient, and the agreement of their means (:class:`~ppl_reparam.stats.MeanAgreement`)."""
    reference = reference_of(list(stats))
    rows = []
    if reference is None:
        return rows
    for name, measured in stats.items():
        if name == reference:
            continue
        scale = specs[name].particles / specs[reference].particles
        for group, names in groups.items():
            ratio, (low, high) = variance_ratio(measured, stats[reference], names, confidence, seed=seed)
            agreement = MeanAgreement.from_stats(measured, stats[reference], names, confidence)
            rows.append(
                {
                    "measured": name,
                    "reference": reference,
                    "group": group,
                    "variance_ratio": ratio * scale,
                    "ratio_ci_low": low * scale,
                    "ratio_ci_high": high * scale,
                    "same_objective": objective_of(specs[name]) == objective_of(specs[reference]),
                    "means_mean_z2": agreement.mean_z2,
                    "means_fraction_outside": agreement.fraction_outside,
                    "means_max_abs_z": agreement.max_abs_z,
                    "means_bonferroni_z": agreement.bonferroni_z,
                    "means_agree": agreement.agrees,
                    "elements": agreement.num_elements,
                }
            )
    return rows


def group_names(names: Sequence[str] | Mapping[str, Any]) -> dict[str, list[str]]:
    """The parameter names of each group in :data:`GROUPS`, by the first component of the name."""
    return {g: [n for n in names if n.split(".")[0] == g] for g in GROUPS}


@dataclass
class VAEResult:
    """What a backend's ``train_vae`` produced: one history row per run and epoch, the gradient-variance
    rows and comparisons per measured epoch, image rows for the figure, the runs, the data sizes."""

    history: list[dict[str, Any]]
    variance: list[dict[str, Any]]
    comparison: list[dict[str, Any]]
    images: list[tuple[str, np.ndarray]]
    runs: list[Any]
    num_train: int
    num_test: int
