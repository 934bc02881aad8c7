"""Estimator specs: one short string names an ELBO and its gradient estimator (framework-free).

Grammar: ``BASE[+OPTION...][:K]``, e.g. ``score``, ``score+rloo:8``, ``pathwise+stl``,
``score+akl``, ``score+b=7``, ``iwae-dreg:5``.

- ``BASE``: ``score`` (score function), ``pathwise`` (reparameterization), ``measure`` (measure-valued,
  :mod:`ppl_reparam.measure_valued`), ``rebar`` (REBAR at Bernoulli sites), ``relax`` (RELAX, a learned
  control, at Bernoulli and categorical sites; Pyro), ``iwae`` (importance-weighted bound, pathwise gradient),
  ``iwae-vimco`` (VIMCO), ``iwae-dreg`` (doubly reparameterized).
- ``OPTION``: ``akl`` (closed-form KL / entropy, estimator B), ``stl`` (sticking the landing,
  pathwise), ``anti`` / ``qmc`` (antithetic pairs / randomized quasi-Monte Carlo draws, pathwise, K >= 2:
  :mod:`ppl_reparam.noise`), ``rloo`` / ``ma`` / ``learned`` (leave-one-out, moving-average, learned
  baseline, score function), ``b=VALUE`` (constant baseline), ``indep`` (independent sides instead of
  common random numbers, measure-valued), ``t=T`` and ``eta=E`` (REBAR's temperature and control
  weight, default 0.5 and 1; RELAX's starting values), ``fit=N`` (RELAX: steps that fit its control at the
  current parameters before the first estimate, default 0).
- ``K``: particles (samples) per estimate; default 1, or 5 for the IWAE bases.

The discrete VAE also takes ``relaxed+t=T[:K]`` (:class:`RelaxedSpec`, :func:`parse_run_spec`): the
Concrete / Gumbel-softmax relaxation at temperature ``T``, trained pathwise on the relaxed objective.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

BASES = ("score", "pathwise", "measure", "rebar", "relax", "iwae", "iwae-vimco", "iwae-dreg")
IWAE_ESTIMATOR = {"iwae": "pathwise", "iwae-vimco": "score", "iwae-dreg": "dreg"}
BASELINE_OPTIONS = {"rloo": "rloo", "ma": "moving_average", "learned": "learned"}
NOISE_OPTIONS = {"anti": "antithetic", "qmc": "qmc"}
OPTIONS = {"akl", "stl", "indep", *NOISE_OPTIONS, *BASELINE_OPTIONS}


@dataclass(frozen=True)
class EstimatorSpec:
    """A parsed spec; ``str(spec)`` gives it back in canonical form."""

    base: str
    particles: int
    analytic_kl: bool = False
    stl: bool = False
    baseline: str | float | None = None
    noise: str | None = None
    coupling: bool = True
    rebar: tuple[float, float] = (0.5, 1.0)
    fit: int = 0

    @property
    def is_iwae(self) -> bool:
        return self.base in IWAE_ESTIMATOR

    @property
    def min_particles(self) -> int:
        """An IWAE bound, the leave-one-out baseline and coupled draws need two particles or more; the
        rest, one."""
        return 2 if self.is_iwae or self.baseline == "rloo" or self.noise else 1

    def __str__(self) -> str:
        flags = (("akl", self.analytic_kl), ("stl", self.stl), ("indep", not self.coupling))
        options = [name for name, on in flags if on]
        if self.noise:
            options.append({v: k for k, v in NOISE_OPTIONS.items()}[self.noise])
        if self.rebar[0] != 0.5:
            options.append(f"t={self.rebar[0]:g}")
        if self.rebar[1] != 1.0:
            options.append(f"eta={self.rebar[1]:g}")
        if self.fit:
            options.append(f"fit={self.fit}")
        if isinstance(self.baseline, float):
            options.append(f"b={self.baseline:g}")
        elif self.baseline is not None:
            options.append({v: k for k, v in BASELINE_OPTIONS.items()}[self.baseline])
        default = 5 if self.is_iwae else 1
        return "+".join([self.base, *options]) + (f":{self.particles}" if self.particles != default else "")


def parse_spec(text: str) -> EstimatorSpec:
    """Parse one spec; a ValueError names what is wrong and lists the choices."""
    body, _, k = text.strip().partition(":")
    base, *options = body.split("+")
    if base not in BASES:
        raise ValueError(f"estimator spec {text!r}: unknown base {base!r}; choose from {', '.join(BASES)}")
    try:
        particles = int(k) if k else (5 if base in IWAE_ESTIMATOR else 1)
    except ValueError:
        raise ValueError(f"estimator spec {text!r}: particles after ':' must be an integer, got {k!r}") from None
    if particles < 1:
        raise ValueError(f"estimator spec {text!r}: particles must be positive")
    fields: dict = {}
    for option in options:
        if (option.startswith("b=") or option in BASELINE_OPTIONS) and "baseline" in fields:
            raise ValueError(f"estimator spec {text!r}: one baseline at most, got {option!r} after another")
        if option.startswith("b="):
            try:
                fields["baseline"] = float(option[2:])
            except ValueError:
                raise ValueError(f"estimator spec {text!r}: constant baseline {option!r} is not a number") from None
            if not math.isfinite(fields["baseline"]):
                raise ValueError(f"estimator spec {text!r}: the constant baseline must be finite, got {option!r}")
        elif option in BASELINE_OPTIONS:
            fields["baseline"] = BASELINE_OPTIONS[option]
        elif option == "akl":
            fields["analytic_kl"] = True
        elif option == "stl":
            fields["stl"] = True
        elif option == "indep":
            fields["coupling"] = False
        elif option.startswith("fit=") and base == "relax":
            try:
                fields["fit"] = int(option[4:])
            except ValueError:
                raise ValueError(f"estimator spec {text!r}: {option!r}: fit takes a number of steps") from None
            if fields["fit"] < 0:
                raise ValueError(f"estimator spec {text!r}: {option!r}: fit takes a number of steps (0 or more)")
        elif option.startswith(("t=", "eta=")) and base in ("rebar", "relax"):
            name, _, number = option.partition("=")
            try:
                value = float(number)
            except ValueError:
                raise ValueError(f"estimator spec {text!r}: {option!r} is not a number") from None
            if not math.isfinite(value) or (name == "t" and value <= 0):
                raise ValueError(f"estimator spec {text!r}: {option!r}: t must be positive, both finite")
            t, eta = fields.get("rebar", (0.5, 1.0))
            fields["rebar"] = (value, eta) if name == "t" else (t, value)
        elif option in NOISE_OPTIONS:
            if "noise" in fields:
                raise ValueError(f"estimator spec {text!r}: anti and qmc both couple the particles; choose one")
            fields["noise"] = NOISE_OPTIONS[option]
        else:
            choices = ", ".join(sorted(OPTIONS))
            raise ValueError(f"estimator spec {text!r}: unknown option {option!r}; choose from {choices}, "
                             "b=VALUE, t=T and eta=E (rebar, relax), fit=N (relax)")
    spec = EstimatorSpec(base, particles, **fields)
    if spec.is_iwae and options:
        raise ValueError(f"estimator spec {text!r}: the IWAE bases take no options, only :K")
    if spec.baseline is not None and base != "score":
        raise ValueError(f"estimator spec {text!r}: baselines apply to the score function only")
    if not spec.coupling and base != "measure":
        raise ValueError(f"estimator spec {text!r}: indep applies to the measure-valued estimator only")
    if spec.stl and base != "pathwise":
        raise ValueError(f"estimator spec {text!r}: stl applies to the pathwise estimator only")
    if spec.noise and base != "pathwise":
        raise ValueError(f"estimator spec {text!r}: anti and qmc apply to the pathwise estimator only")
    if k and particles < spec.min_particles:
        raise ValueError(f"estimator spec {text!r}: {_needs_particles(spec)}")
    if spec.noise == "antithetic" and particles % 2 and k:
        raise ValueError(f"estimator spec {text!r}: antithetic draws come in pairs: K must be even, got {particles}")
    return spec


def _needs_particles(spec: EstimatorSpec) -> str:
    what = (
        "an IWAE bound" if spec.is_iwae
        else "the leave-one-out baseline" if spec.baseline == "rloo"
        else f"{spec.noise} sampling"
    )
    return f"{what} needs K >= {spec.min_particles} particles, got {spec.particles}"


def check_particles(spec: RunSpec) -> None:
    """Refuse a spec with fewer particles than it needs (``score+rloo`` without ``:K``; a spec whose
    ``:K`` is given is checked by :func:`parse_spec`)."""
    if spec.particles < spec.min_particles:
        raise ValueError(f"estimator spec {str(spec)!r}: {_needs_particles(spec)}; write {spec}:K with "
                         f"K >= {spec.min_particles}")


def parse_specs(text: str) -> list[EstimatorSpec]:
    """A comma-separated list of specs."""
    specs = [parse_spec(part) for part in text.split(",") if part.strip()]
    if not specs:
        raise ValueError("no estimator spec given")
    return specs


@dataclass(frozen=True)
class RelaxedSpec:
    """``relaxed+t=T[:K]``: the discrete model's Concrete relaxation at temperature ``T``, trained by
    the pathwise estimator with ``K`` particles (default 1). The same attributes as an
    :class:`~ppl_reparam.specs.EstimatorSpec` where they apply."""

    temperature: float
    particles: int = 1
    base = "relaxed"
    is_iwae = False
    min_particles = 1
    analytic_kl = False
    stl = False
    baseline = None
    coupling = True

    def __str__(self) -> str:
        return f"relaxed+t={self.temperature:g}" + (f":{self.particles}" if self.particles != 1 else "")


RunSpec = EstimatorSpec | RelaxedSpec


def _parse_relaxed(text: str) -> RelaxedSpec:
    body, _, k = text.strip().partition(":")
    _, *options = body.split("+")
    if len(options) != 1 or not options[0].startswith("t="):
        raise ValueError(f"estimator spec {text!r}: the relaxation takes one option, its temperature: relaxed+t=T[:K]")
    try:
        temperature = float(options[0][2:])
    except ValueError:
        raise ValueError(f"estimator spec {text!r}: temperature {options[0][2:]!r} is not a number") from None
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"estimator spec {text!r}: the temperature must be positive and finite")
    try:
        particles = int(k) if k else 1
    except ValueError:
        raise ValueError(f"estimator spec {text!r}: particles after ':' must be an integer, got {k!r}") from None
    if particles < 1:
        raise ValueError(f"estimator spec {text!r}: particles must be positive")
    return RelaxedSpec(temperature, particles)


def parse_run_spec(text: str) -> RunSpec:
    """An estimator spec (:func:`ppl_reparam.specs.parse_spec`) or ``relaxed+t=T[:K]``."""
    if text.strip().split("+")[0].split(":")[0] == "relaxed":
        return _parse_relaxed(text)
    try:
        return parse_spec(text)
    except ValueError as e:
        if "unknown base" in str(e):
            raise ValueError(f"{e}, or relaxed+t=T (discrete model)") from None
        raise


def objective_of(spec: RunSpec) -> str:
    """The objective a spec's gradient estimates: ``elbo`` (score, pathwise, measure, rebar, relax, any baseline, akl,
    stl),
    ``iwae:K`` or ``relaxed:T``. Two specs estimate the same gradient iff their objectives match."""
    if isinstance(spec, RelaxedSpec):
        return f"relaxed:{spec.temperature:g}"
    return f"iwae:{spec.particles}" if spec.is_iwae else "elbo"


@dataclass(frozen=True)
class ElboClasses:
    """A backend's ELBO classes, for :func:`build_elbo`."""

    score: Callable[..., Any]
    pathwise: Callable[..., Any]
    iwae: Callable[..., Any]
    measure: Callable[..., Any]
    rebar: Callable[..., Any]
    relax: Callable[..., Any]


def build_elbo(
    spec: EstimatorSpec | str,
    classes: ElboClasses,
    *,
    baseline: Any = None,
    elbo_options: Mapping[str, Any] | None = None,
    iwae_options: Mapping[str, Any] | None = None,
) -> Any:
    """The ELBO a spec names, built from a backend's ``classes``: ``IWAE(K, estimator, **iwae_options)``
    for the IWAE bases, else the score-function or pathwise ELBO with the spec's particles, closed-form
    KL, baseline (or ``baseline``, an instance that replaces the spec's, e.g. a learned baseline with
    features) and ``stl``, and ``elbo_options`` (the backend's particle layout)."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if spec.is_iwae:
        return classes.iwae(spec.particles, IWAE_ESTIMATOR[spec.base], **(iwae_options or {}))
    cls = {"score": classes.score, "pathwise": classes.pathwise, "measure": classes.measure,
           "rebar": classes.rebar, "relax": classes.relax}[spec.base]
    extra = {} if spec.coupling else {"coupling": False}
    if spec.base in ("rebar", "relax"):
        extra.update(rebar_temperature=spec.rebar[0], rebar_eta=spec.rebar[1])
    if spec.fit:
        extra["relax_fit"] = spec.fit
    return cls(
        num_particles=spec.particles,
        analytic_kl=spec.analytic_kl,
        baseline=spec.baseline if baseline is None else baseline,
        stl=spec.stl,
        antithetic=spec.noise == "antithetic",
        qmc=spec.noise == "qmc",
        **extra,
        **(elbo_options or {}),
    )


def make_baseline(
    spec: Any, kinds: Mapping[str, Callable[[], Any]], constant: Callable[[float], Any], base: type
) -> Any:
    """A backend's baseline from ``spec``: None, an instance of ``base``, a number (``constant(spec)``)
    or a name in ``kinds`` (``kinds[name]()``); a ValueError otherwise."""
    if spec is None or isinstance(spec, base):
        return spec
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        if not math.isfinite(spec):
            raise ValueError(f"a constant baseline must be finite, got {spec!r}")
        return constant(spec)
    if isinstance(spec, str) and BASELINE_OPTIONS.get(spec, spec) in kinds:
        return kinds[BASELINE_OPTIONS.get(spec, spec)]()
    names = sorted({*kinds, *BASELINE_OPTIONS})
    raise ValueError(
        f"unknown baseline {spec!r}; expected one of {names} (the spec names, e.g. 'ma', or the long ones), a "
        "number (a constant baseline), a Baseline instance, or None"
    )
