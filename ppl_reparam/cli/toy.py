"""``ppl-reparam toy``: the classic table of gradient mean and variance against sample size N.

For each N and estimator spec (:mod:`ppl_reparam.specs`; the spec's particle count is replaced by N),
:func:`sweep` measures ``reps`` independent N-sample estimates of the gradient in ``theta`` of the toy
problem (:mod:`ppl_reparam.models.toy_gaussian`) and puts them beside the closed forms of
:mod:`ppl_reparam.analytic` where those exist:

- ``score+akl``: score function, closed-form entropy: per-sample gradient x^2 (x - theta), the textbook one;
- ``score``: score function, Monte Carlo entropy (estimator A, what Pyro's Trace_ELBO does);
- ``pathwise+akl`` / ``pathwise``: reparameterized, 2 x either way;
- ``score+akl+b=7``: the optimal constant baseline at theta = 2; ``pathwise+stl``: sticking the landing.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from tqdm.auto import tqdm

from .. import analytic
from ..report import ResultSet, check_output_folder, markdown_table, write_csv, write_json
from ..specs import EstimatorSpec, parse_spec, parse_specs
from ..stats import GradientStats
from .common import SPEC_HELP, HelpFormatter, check_memory, number, text, threads

DEFAULT_SAMPLES = (10, 100, 1000, 10000, 100000)
DEFAULT_SPECS = "score+akl,pathwise+akl"


def closed_form(spec: EstimatorSpec, theta: float) -> analytic.Moments | None:
    """Exact moments of the spec's per-sample gradient, where :mod:`ppl_reparam.analytic` has them. With
    antithetic draws, the N-sample estimate averages N/2 pairs: its mean and twice a pair's variance (so
    that the estimate's variance is variance / N, as for the others); QMC has no closed form. The
    measure-valued estimator's is known coupled, or with the closed-form entropy (fourth moment not
    computed); REBAR and RELAX have no toy (no Bernoulli site: their ELBOs say so)."""
    if spec.is_iwae or isinstance(spec.baseline, str) or spec.noise == "qmc" or spec.base in ("rebar", "relax"):
        return None
    if spec.base == "measure":
        if not (spec.coupling or spec.analytic_kl):
            return None
        return analytic.Moments(2 * theta, analytic.measure_valued_variance(theta, coupling=spec.coupling), math.nan)
    antithetic = spec.noise == "antithetic"
    exact = analytic.gradient_moments(
        spec.base, theta, analytic_kl=spec.analytic_kl, baseline=spec.baseline or 0.0, stl=spec.stl,
        antithetic=antithetic,
    )
    return analytic.Moments(exact.mean, 2 * exact.variance, math.nan) if antithetic else exact


def parse_samples(text: str) -> list[int]:
    """Comma-separated positive sample sizes."""
    try:
        samples = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--samples must be comma-separated integers, got {text!r}") from None
    if not samples or min(samples) < 1:
        raise ValueError(f"--samples must be positive integers, got {text!r}")
    return samples


BACKENDS = ("pyro", "numpyro")


def measure(
    backend: str, theta: float, spec: EstimatorSpec, reps: int, seed: int, confidence: float = 0.95
) -> GradientStats:
    """``reps`` gradient estimates of the toy problem at ``theta`` through ``backend``'s model, guide
    and ELBO for ``spec`` (its ``particles`` samples each)."""
    if backend == "pyro":
        import pyro

        from ..models.toy_gaussian import ToyGaussian
        from ..pyro import gradient_variance
        from ..pyro.specs import make_elbo

        toy = ToyGaussian(theta)
        pyro.clear_param_store()
        elbo = make_elbo(spec, max_plate_nesting=0)
        return gradient_variance(elbo, toy.model, toy.guide, num_reps=reps, seed=seed, confidence=confidence)
    if backend == "numpyro":
        from ..models.toy_gaussian_numpyro import ToyGaussian as NumPyroToy
        from ..numpyro import gradient_variance as numpyro_gradient_variance
        from ..numpyro.specs import make_elbo as make_numpyro_elbo

        toy = NumPyroToy(theta)
        return numpyro_gradient_variance(
            make_numpyro_elbo(spec), toy.model, toy.guide, num_reps=reps, seed=seed, confidence=confidence
        )
    raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")


def sweep(
    theta: float = 2.0,
    samples: Sequence[int] = DEFAULT_SAMPLES,
    reps: int = 100,
    specs: Sequence[EstimatorSpec | str] = tuple(DEFAULT_SPECS.split(",")),
    seed: int = 0,
    progress: bool = True,
    backends: Sequence[str] = ("pyro",),
) -> list[dict[str, Any]]:
    """Measure every (backend, spec, N); one row each, with the closed forms beside the measurements."""
    rows = []
    specs = [parse_spec(spec) if isinstance(spec, str) else spec for spec in specs]
    jobs = [(backend, n, spec) for backend in backends for spec in specs for n in samples]
    for backend, n, spec in tqdm(jobs, desc="toy sweep", disable=not progress):
        spec = replace(spec, particles=n)
        stats = measure(backend, theta, spec, reps, seed)
        s = stats["theta"]
        exact = closed_form(spec, theta) or analytic.Moments(math.nan, math.nan, math.nan)
        low, high = s.variance_ci
        rows.append(
            {
                "backend": backend,
                "estimator": str(replace(spec, particles=1)),
                "N": n,
                "mean": float(s.mean),
                "standard_error": float(s.standard_error),
                "variance": float(s.variance),
                "variance_ci_low": float(low),
                "variance_ci_high": float(high),
                "per_sample_variance": float(s.per_sample_variance),
                "closed_form_mean": exact.mean,
                "closed_form_variance": exact.variance / n,
                "closed_form_per_sample_variance": exact.variance,
                "snr": float(s.snr),
                "seconds": stats.seconds,
            }
        )
    return rows


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """The printed table: N, estimator, mean, variance, 95% CI, closed-form variance."""
    both = len({r["backend"] for r in rows}) > 1
    return markdown_table(
        [
            {
                **({"backend": r["backend"]} if both else {}),
                "N": r["N"],
                "estimator": r["estimator"],
                "mean": f"{r['mean']:.4f} ± {r['standard_error']:.2g}",
                "variance": f"{r['variance']:.4g}",
                "95% CI": f"[{r['variance_ci_low']:.4g}, {r['variance_ci_high']:.4g}]",
                "closed form": f"{r['closed_form_variance']:.4g}",
            }
            for r in rows
        ]
    )


def run(args: argparse.Namespace) -> None:
    try:
        specs = parse_specs(args.estimators)
    except ValueError as e:
        raise ValueError(f"--estimators: {e}") from None
    if any(spec.is_iwae for spec in specs):
        raise ValueError("--estimators: the toy sweep takes score and pathwise specs; compare IWAE with "
                         "`ppl-reparam compare --model toy`")
    learning = [str(s) for s in specs if s.baseline in ("moving_average", "learned")]
    if learning:
        raise ValueError(f"--estimators {learning}: a baseline that learns would be measured untrained here (the "
                         "same numbers as plain score); `ppl-reparam compare --model toy` warms it up first")
    samples = parse_samples(args.samples)
    for n in samples:
        check_memory("--samples", n)
    for spec in specs:
        if min(samples) < spec.min_particles:
            raise ValueError(f"--samples {min(samples)}: {spec} needs N >= {spec.min_particles} samples per estimate")
    out = check_output_folder(args.out)
    backends = BACKENDS if args.backend == "both" else (args.backend,)
    if "pyro" in backends:
        import torch  # noqa: F401  (loaded before the thread policy, so that it reaches torch)
    with threads(args.threads):
        rows = sweep(args.theta, samples, args.reps, specs, args.seed, progress=not args.quiet, backends=backends)
    print(f"Toy problem: d/dtheta E[x^2], x ~ N({args.theta}, 1); {args.reps} repetitions, seed {args.seed}; "
          f"exact gradient {2 * args.theta:g}")
    print(summary_table(rows))
    from ..plots import plot_toy_sweep

    with ResultSet(out, "toy") as results:
        write_csv(rows, results.path("toy.csv"))
        write_json({"theta": args.theta, "reps": args.reps, "seed": args.seed, "rows": rows}, results.path("toy.json"))
        plot_toy_sweep(rows, results.path("toy.png"), theta=args.theta, reps=args.reps)
    print("wrote " + ", ".join(str(f) for f in results.files))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "toy",
        help="the classic toy Gaussian table: gradient mean and variance against N",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
        epilog=SPEC_HELP,
    )
    parser.add_argument("--theta", type=number(-1e3, 1e3), default=2.0, help="mean of the guide N(theta, 1)")
    parser.add_argument("--samples", default=",".join(map(str, DEFAULT_SAMPLES)),
                        help="comma-separated sample sizes N")
    parser.add_argument("--reps", type=number(5, 10**6, integer=True), default=100, help="repetitions per N")
    parser.add_argument("--estimators", default=DEFAULT_SPECS,
                        help="comma-separated estimator specs (below), particles set by N")
    parser.add_argument("--seed", type=number(0, 2**32 - 1, integer=True), default=0)
    parser.add_argument("--backend", choices=[*BACKENDS, "both"], default="pyro",
                        help="Pyro, NumPyro, or both side by side in the table and plot")
    parser.add_argument("--out", type=text("--out"), default="results", help="folder for toy.csv, toy.json and toy.png")
    parser.add_argument("--threads", type=number(1, 1024, integer=True), default=None,
                        help="CPU threads for torch and BLAS (None: one unless an operation is large)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
