"""The VAE study's settings and bookkeeping, shared by both backends (framework-free): its settings
(:class:`VAEConfig`), parameter groups, derived seeds, the rows of gradient-variance measurements and
comparisons, and the study's result."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from .specs import RelaxedSpec, RunSpec, objective_of, parse_run_spec
from .stats import MIN_REPS, GroupStats, MeanAgreement, variance_ratio

MODELS = ("gaussian", "discrete")
"""The VAEs of the study: Gaussian latents, or Bernoulli latent bits."""
DEFAULT_LATENT_DIM = {"gaussian": 8, "discrete": 16}

GROUPS = ("encoder", "decoder")
"""Parameter groups, by the first component of the param-store name."""


Groups = Mapping[str, Sequence[str]]
"""Parameter groups: group name -> parameter names or name prefixes (``"encoder"`` holds
``"encoder.fc1.weight"``: a name belongs to a prefix it equals or that it starts with, then a dot)."""


def resolve_groups(groups: Groups | None, names: Sequence[str]) -> dict[str, list[str]]:
    """The parameter names of each group; ``None``: one group per parameter. A group that matches no
    parameter is an error naming the parameters there are."""
    if groups is None:
        return {name: [name] for name in names}
    resolved = {}
    for group, prefixes in groups.items():
        prefixes = [prefixes] if isinstance(prefixes, str) else list(prefixes)
        members = [n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes)]
        if not members:
            raise ValueError(
                f"parameter group {group!r} ({prefixes}) matches no parameter; the parameters are {list(names)}"
            )
        resolved[group] = members
    return resolved


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


def measured_rows(
    stats: Mapping[str, Any], groups: Mapping[str, Sequence[str]], confidence: float, seed: int,
    particles: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """:func:`group_rows` of every measured estimator in ``{name: GradientStats}``, each row led by
    ``measured`` (the name); ``particles`` per name (default: each measurement's own). The rows of
    ``ppl-reparam vae``, ``compare`` and :class:`~ppl_reparam.monitor.VarianceMonitor`."""
    return [
        {"measured": name, **row}
        for name, measured in stats.items()
        for row in group_rows(
            measured, groups, (particles or {}).get(name, measured.num_particles), confidence, seed
        )
    ]


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


def study_rows(
    monitor: Any, rows: Sequence[Mapping[str, Any]], seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of a study's measurement by a :class:`~ppl_reparam.monitor.VarianceMonitor` whose ELBOs
    are named by their specs: ``rows`` (the monitor's, without their ``step``) and the
    :func:`comparison_rows` of its last measurement (bootstrap under ``seed``)."""
    stats = monitor.stats
    specs = {name: parse_run_spec(name) for name in stats}
    groups = resolve_groups(monitor.groups, list(next(iter(stats.values()))))
    comparisons = comparison_rows(stats, specs, groups, monitor.confidence, seed)
    return [{k: v for k, v in r.items() if k != "step"} for r in rows], comparisons


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


@dataclass(frozen=True)
class VAEConfig:
    """Settings of a ``vae`` run (the command's options); checked on construction (ValueError).
    ``estimators`` and ``measure_on`` are stored as canonical spec strings."""

    estimators: tuple[str, ...] = ("pathwise",)
    compare: bool = False
    model: str = "gaussian"
    epochs: int = 50
    batch_size: int = 100
    latent_dim: int = 8
    hidden: tuple[int, ...] = (128,)
    lr: float = 1e-3
    data: str = "digits"
    seed: int = 0
    dynamic_binarization: bool = False
    variance_reps: int = 100
    variance_every: int = 5
    test_particles: int = 100
    measure_on: tuple[str, ...] = ()
    """Runs (by spec) whose parameters every estimator is measured on; empty: every run."""

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose from {', '.join(MODELS)}")
        if isinstance(self.estimators, str):
            raise ValueError("estimators must be a sequence of specs, not one string")
        specs = [parse_run_spec(e) for e in self.estimators]
        names = tuple(str(s) for s in specs)
        if not names or len(set(names)) < len(names):
            raise ValueError(f"estimators {list(self.estimators)}: give at least one, each at most once")
        if len(names) > 1 and not self.compare:
            raise ValueError(f"several estimators {list(names)} need --compare")
        for spec in specs:
            if isinstance(spec, RelaxedSpec) and self.model != "discrete":
                raise ValueError(f"{spec}: the Concrete relaxation applies to the discrete model (--model discrete)")
        object.__setattr__(self, "estimators", names)
        measure_on = tuple(str(parse_run_spec(m)) for m in self.measure_on)
        unknown = [m for m in measure_on if m not in names]
        if unknown:
            raise ValueError(f"--measure-on {unknown}: not among the trained estimators {list(names)}")
        object.__setattr__(self, "measure_on", measure_on)
        object.__setattr__(self, "hidden", tuple(self.hidden))
        positive = {
            "epochs": self.epochs, "batch size": self.batch_size, "latent dim": self.latent_dim,
            "variance every": self.variance_every,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden layer sizes must be positive, got {list(self.hidden)}")
        if not self.lr > 0:
            raise ValueError(f"the learning rate must be positive, got {self.lr}")
        if self.variance_reps and self.variance_reps < MIN_REPS:
            raise ValueError(f"variance reps must be 0 (off) or at least {MIN_REPS}, got {self.variance_reps}")
        if self.test_particles < 2:
            raise ValueError(f"test particles must be at least 2, got {self.test_particles}")

    @property
    def specs(self) -> list[RunSpec]:
        return [parse_run_spec(e) for e in self.estimators]

    def key(self) -> dict[str, Any]:
        """The settings as a dict, stored in checkpoints to check ``--resume``."""
        return asdict(self)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Field defaults, for checkpoints written before a field existed."""
        return {f.name: f.default for f in fields(cls)}

    @classmethod
    def key_of_checkpoint(cls, saved: dict[str, Any]) -> dict[str, Any]:
        """A checkpoint's stored settings as :meth:`key` gives them now: missing fields take their
        defaults, and the options of earlier versions (``num_particles``, ``analytic_kl``, before
        they were written into the specs) are folded into ``estimators``."""
        saved = dict(saved)
        particles, analytic_kl = saved.pop("num_particles", 1), saved.pop("analytic_kl", False)
        if particles != 1 or analytic_kl:
            options = {"particles": particles, **({"analytic_kl": True} if analytic_kl else {})}
            specs = [parse_run_spec(e) for e in saved["estimators"]]
            saved["estimators"] = tuple(
                str(s if s.is_iwae or isinstance(s, RelaxedSpec) else replace(s, **options)) for s in specs
            )
        return {**cls.defaults(), **{k: v for k, v in saved.items() if k in cls.defaults()}}

    @property
    def test_elbo_label(self) -> str:
        if self.model == "discrete":
            return f"test_discrete_elbo_{self.test_particles}particles"
        return f"test_elbo_pathwise_{self.test_particles}particles"
