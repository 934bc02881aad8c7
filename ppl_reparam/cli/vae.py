r"""``ppl-reparam vae``: train a VAE on binarized digits with each gradient estimator; compare their variance.

Two models (``--model``): ``gaussian`` (default), Kingma and Welling's VAE ("Auto-Encoding Variational
Bayes", ICLR 2014; :mod:`ppl_reparam.models.vae` with :class:`~ppl_reparam.pyro.AmortizedNormal`),
and ``discrete``, a VAE with L independent Bernoulli(1/2) latent bits and an amortized Bernoulli guide
(:mod:`ppl_reparam.models.discrete_vae`). ELBOs are in nats per image: the training ELBO averages the
epoch's minibatch estimates of the run's own objective; the test ELBO is a fresh estimate of the
(true, discrete for ``discrete``) ELBO with ``--test-particles`` particles per image, the same seed
for every run (:func:`~ppl_reparam.pyro.training.evaluate_elbo`).

``--estimator`` takes estimator specs (:mod:`ppl_reparam.specs`), a comma list with ``--compare``:
``pathwise``, ``score``, ``score+rloo:4``, ``score+ma``, ``score+learned`` (a network on the batch
``x``), ``score+b=25``, ``pathwise+stl``, ``iwae:5``, ``iwae-vimco:5``, ``iwae-dreg:5``, ... and, for
the discrete model only, ``relaxed+t=T[:K]``: the Concrete / Gumbel-softmax relaxation at temperature
T (Maddison, Mnih and Teh 2017; Jang, Gu and Poole 2017), trained pathwise on the relaxed ELBO, a
biased surrogate of the discrete one. Runs are named by their canonical spec. The issue's form
``--objective iwae --k K --estimator E`` (E in pathwise, score, vimco, dreg) means the spec
``iwae:K``, ``iwae-vimco:K`` (score and vimco) or ``iwae-dreg:K``. Particles: a spec's ``:K`` is
its particle count; ``--num-particles N`` sets it for specs that give none, and giving both is an
error (so is ``--num-particles`` with ``--objective iwae``: use ``--k``). ``--analytic-kl`` adds
``+akl`` (closed-form KL, estimator B) to every score and pathwise spec.

``--compare`` trains one model per estimator from the same initial weights, and at epoch 0, every
``--variance-every`` epochs and the last it measures every estimator's gradient on the current
parameters of every run (or of the runs named by ``--measure-on``) on one fixed training batch,
``--variance-reps`` repetitions each: total variance and mean SNR of the encoder's and the decoder's
parameters (:mod:`ppl_reparam.stats`), and the ratio of each estimator's per-sample total variance
(variance x particles) to the reference's (``pathwise`` when measured, else ``score``) with a
bootstrap-t interval, and whether their means agree. Estimators of the same objective (the ELBO:
score and pathwise, with any baseline, akl or stl) must agree within standard errors; IWAE bounds
and relaxations are other objectives, so disagreement there measures their bias with respect to the
ELBO's gradient. A spec with a stateful baseline (``ma``, ``learned``) is measured with the baseline
of the run trained with it, as trained so far.

Files in ``--out``: ``history.csv``, ``variance.csv``, ``comparison.csv``, ``results.json``,
``elbo.png``, ``variance.png``, ``summary.png`` (test ELBO curves beside each estimator's per-sample
encoder variance at the last measurement), ``images.png`` and ``checkpoint.pt`` (atomic, every
epoch; ``--resume``); during training each measured run's
:class:`~ppl_reparam.monitor.VarianceMonitor` keeps ``live/<run>/variance.csv`` and ``variance.png``
up to date. For the discrete model, relaxed runs also get the relaxed objective on the test
set (``relaxed_test_elbo``), to set against their discrete ELBO: the gap is the relaxation's bias.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..report import ResultSet, check_output_folder, markdown_table, write_csv, write_json
from ..specs import RelaxedSpec, RunSpec, check_particles, parse_run_spec, parse_spec
from ..stats import MIN_REPS
from ..study import DEFAULT_LATENT_DIM, MODELS, VAEConfig, VAEResult
from .common import (
    SPEC_HELP,
    HelpFormatter,
    check_memory,
    int_list,
    memory_bytes,
    number,
    sigterm_as_interrupt,
    text,
    threads,
)

DEFAULT_ESTIMATORS = {
    ("gaussian", False): "pathwise",
    ("gaussian", True): "pathwise,score",
    ("discrete", False): "score",
    ("discrete", True): "score,score+rloo:4,iwae-vimco:4,relaxed+t=0.5,relaxed+t=1",
}
IWAE_SPELLINGS = {"pathwise": "iwae", "score": "iwae-vimco", "vimco": "iwae-vimco", "dreg": "iwae-dreg"}
"""``--objective iwae --estimator E`` -> the IWAE spec base."""


def _with_particles(spec: RunSpec, particles: int) -> RunSpec:
    return replace(spec, particles=particles)


def resolve_estimators(
    text: str, objective: str = "elbo", k: int | None = None, num_particles: int | None = None,
    analytic_kl: bool = False,
) -> tuple[str, ...]:
    """The canonical specs that the options ``--estimator text --objective ... --k ... --num-particles
    ... --analytic-kl`` name; a ValueError for contradictory ones (see the module docstring)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError("--estimator: no estimator spec given")
    if objective == "iwae":
        if num_particles is not None:
            raise ValueError("--objective iwae takes its sample count from --k, not --num-particles")
        if analytic_kl:
            raise ValueError("--analytic-kl applies to the ELBO, not to --objective iwae")
        unknown = [p for p in parts if p not in IWAE_SPELLINGS]
        if unknown:
            raise ValueError(f"--objective iwae: estimators {unknown}; choose from {', '.join(IWAE_SPELLINGS)}")
        return tuple(str(parse_spec(f"{IWAE_SPELLINGS[p]}:{5 if k is None else k}")) for p in parts)
    if objective != "elbo":
        raise ValueError(f"unknown objective {objective!r}; choose from elbo, iwae")
    if k is not None:
        raise ValueError("--k is the IWAE sample count: give it with --objective iwae (or write iwae:K in a spec)")
    specs = []
    for part in parts:
        spec = parse_run_spec(part)
        if num_particles is not None:
            if ":" in part:
                raise ValueError(f"spec {part!r} gives its particles after ':'; drop --num-particles or the ':K'")
            spec = _with_particles(spec, num_particles)
        if analytic_kl:
            if spec.is_iwae or isinstance(spec, RelaxedSpec):
                raise ValueError(f"--analytic-kl applies to score and pathwise specs, not {spec}")
            spec = replace(spec, analytic_kl=True)
        check_particles(spec)
        specs.append(str(spec))
    return tuple(specs)


def _pixels(data: str) -> int:
    """Pixels per image: 64 for digits, at most 784 (MNIST) for a file."""
    return 64 if data == "digits" else 784


def bytes_per_particle(data: str, batch_size: int, hidden: tuple[int, ...], latent_dim: int) -> int:
    """A rough bound on one particle's memory in a pass of the VAE over a batch: float32 activations of
    the encoder and decoder (pixels in and out, hidden layers both ways, the latent's parameters and
    draws), kept for the backward pass, and their gradients."""
    return 4 * 4 * batch_size * (2 * _pixels(data) + 2 * sum(hidden) + 4 * latent_dim)


def check_network_memory(data: str, hidden: tuple[int, ...], latent_dim: int, runs: int) -> None:
    """Refuse, before any work, networks whose weights (with their gradients and Adam's two moments,
    float32, one copy per run) would take more than a quarter of this machine's memory."""
    sizes = (_pixels(data), *hidden)
    weights = 2 * sum(a * b for a, b in zip(sizes, sizes[1:])) + 3 * hidden[-1] * latent_dim
    need, have = 16 * weights * runs, memory_bytes()
    if need > have // 4:
        raise ValueError(f"--hidden {','.join(map(str, hidden))} --latent-dim {latent_dim}: {runs} run(s) of "
                         f"{weights:,} weights need about {need / 2**30:.0f} GiB with their gradients and optimizer "
                         f"state, more than a quarter of this machine's {have / 2**30:.0f} GiB")


def variance_reps(value: str) -> int:
    """An argument type: 0 (no variance measurement) or at least :data:`~ppl_reparam.stats.MIN_REPS`."""
    reps = number(0, 10**6, integer=True)(value)
    if 0 < reps < MIN_REPS:
        raise argparse.ArgumentTypeError(f"must be 0 (no measurement) or at least {MIN_REPS}, got {value!r}")
    return reps


def config_from_args(args: argparse.Namespace) -> VAEConfig:
    objective = args.objective
    if objective == "iwae":
        default = "vimco" if args.model == "discrete" else "pathwise"
    else:
        default = DEFAULT_ESTIMATORS[args.model, args.compare]
    if args.estimator is not None and not args.estimator.strip(" ,"):
        raise ValueError("--estimator: no estimator spec given (leave the option out for the defaults)")
    estimators = resolve_estimators(args.estimator or default, objective, args.k, args.num_particles,
                                    args.analytic_kl)
    measure_on = tuple(m.strip() for m in (args.measure_on or "").split(",") if m.strip())
    latent_dim = args.latent_dim or DEFAULT_LATENT_DIM[args.model]
    size = bytes_per_particle(args.data, args.batch_size, args.hidden, latent_dim)
    for spec in estimators:
        check_memory(f"--estimator {spec}", parse_run_spec(spec).particles, size)
    check_network_memory(args.data, args.hidden, latent_dim, len(estimators))
    return VAEConfig(
        estimators=estimators, compare=args.compare, model=args.model, epochs=args.epochs,
        batch_size=args.batch_size, latent_dim=latent_dim, hidden=args.hidden, lr=args.lr, data=args.data,
        seed=args.seed, dynamic_binarization=args.dynamic_binarization, variance_reps=args.variance_reps,
        variance_every=args.variance_every, test_particles=args.test_particles, measure_on=measure_on,
    )


def _test_elbo_estimator(config: VAEConfig) -> str:
    if config.model == "discrete":
        return (f"Monte Carlo estimate of the discrete ELBO (ScoreFunctionELBO's loss), {config.test_particles} "
                "particles per image; relaxed runs evaluated with temperature None")
    return f"PathwiseELBO, {config.test_particles} particles per image"


def write_results(result: VAEResult, config: VAEConfig, out: Path) -> list[Path]:
    """history.csv, variance.csv, comparison.csv, results.json and the figures, as one set
    (:class:`~ppl_reparam.report.ResultSet`: staged, moved into place, a manifest written last)."""
    from ..plots import plot_elbo_and_variance, plot_elbo_curves, plot_group_variance, plot_image_grid

    history = []
    for h in result.history:
        row = {"epoch": h["epoch"], "estimator": h["estimator"], "train_elbo": h["train_elbo"],
               config.test_elbo_label: h["test_elbo"], "test_elbo_se": h["test_elbo_se"]}
        if config.model == "discrete":
            row |= {"relaxed_test_elbo": h["relaxed_test_elbo"], "relaxed_test_elbo_se": h["relaxed_test_elbo_se"]}
        history.append(row | {"seconds": h["seconds"]})
    summary = {
        "config": config.key(),
        "elbo_units": "nats per image",
        "test_elbo_estimator": _test_elbo_estimator(config),
        "num_train": result.num_train,
        "num_test": result.num_test,
        "history": history,
        "variance": result.variance,
        "comparison": result.comparison,
    }
    test_label = f"test{' discrete' if config.model == 'discrete' else ''} ELBO ({config.test_particles} particles)"
    with ResultSet(out, "vae") as results:
        write_csv(history, results.path("history.csv"))
        write_json(summary, results.path("results.json"))
        if result.variance:
            write_csv(result.variance, results.path("variance.csv"))
            plot_group_variance(result.variance, results.path("variance.png"))
            plot_elbo_and_variance(result.history, result.variance, results.path("summary.png"), test_label)
        if result.comparison:
            write_csv(result.comparison, results.path("comparison.csv"))
        plot_elbo_curves(result.history, results.path("elbo.png"), test_label)
        plot_image_grid(result.images, results.path("images.png"))
    return results.files


def _last_measured(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the last measured epoch on the first measured run's parameters."""
    if not rows:
        return []
    epoch, trained = rows[-1]["epoch"], rows[0]["trained_with"]
    return [r for r in rows if r["epoch"] == epoch and r["trained_with"] == trained]


def _agreement(c: dict[str, Any]) -> str:
    """Whether two estimators' means agree: the flag printed beside a comparison row."""
    if not c["same_objective"]:
        return "n/a (a different objective: the gap is its bias)"
    return "agree" if c["means_max_abs_z"] <= c["means_bonferroni_z"] else "DISAGREE (beyond the bound)"


def summary(result: VAEResult, config: VAEConfig) -> str:
    """The printed tables: final ELBOs; every estimator's per-sample variance at the last measurement
    (on the first measured run's parameters); the ratios to the reference estimator at the first and
    last measured epochs (every measured epoch is in variance.csv and comparison.csv)."""
    last = [h for h in result.history if h["epoch"] == config.epochs]
    test_column = f"test ELBO ({config.test_particles} particles)"
    rows = []
    for h in last:
        row = {"estimator": h["estimator"], "epoch": h["epoch"], "train objective": f"{h['train_elbo']:.3f}",
               test_column: f"{h['test_elbo']:.3f} ± {h['test_elbo_se']:.3f}"}
        if config.model == "discrete":
            relaxed, se = h["relaxed_test_elbo"], h["relaxed_test_elbo_se"]
            row["relaxed test ELBO"] = "—" if math.isnan(relaxed) else f"{relaxed:.3f} ± {se:.3f}"
        rows.append(row)
    lines = [markdown_table(rows)]
    measured = _last_measured(result.variance)
    if measured:
        lines += [
            "",
            f"Gradient variance at epoch {measured[0]['epoch']} on the parameters of the run trained with "
            f"{measured[0]['trained_with']}, {config.variance_reps} repetitions, 95% bootstrap-t CI; per sample = "
            "total variance x particles:",
            markdown_table([
                {"measured": r["measured"], "group": r["group"], "particles": r["particles"],
                 "per-sample variance": f"{r['per_sample_variance']:.4g}",
                 "95% CI": f"[{r['per_sample_ci_low']:.4g}, {r['per_sample_ci_high']:.4g}]",
                 "mean SNR": f"{r['mean_snr']:.3g}", "ms / estimate": f"{1e3 * r['seconds_per_estimate']:.3g}"}
                for r in measured
            ]),
        ]
    ends = {result.comparison[0]["epoch"], result.comparison[-1]["epoch"]} if result.comparison else set()
    rows = [
        {"epoch": c["epoch"], "trained with": c["trained_with"], "measured": c["measured"],
         "reference": c["reference"], "group": c["group"], "ratio": f"{c['variance_ratio']:.4g}",
         "95% CI": f"[{c['ratio_ci_low']:.4g}, {c['ratio_ci_high']:.4g}]",
         "same objective": "yes" if c["same_objective"] else "no",
         "means: max |z| (Bonferroni bound)": f"{c['means_max_abs_z']:.2f} ({c['means_bonferroni_z']:.2f})",
         "means": _agreement(c)}
        for c in result.comparison if c["epoch"] in ends
    ]
    if rows:
        lines += ["", "Per-sample total gradient variance over the reference estimator's on the same parameters, "
                  f"{config.variance_reps} repetitions each, 95% bootstrap-t CI; means of the same objective "
                  "must agree (max |z| below the bound):", markdown_table(rows)]
        if any(r["means"].startswith("DISAGREE") for r in rows):
            lines.append("DISAGREE: two estimators of the same gradient whose means differ beyond the bound; "
                         "with few repetitions a heavy-tailed estimator can do this by chance, otherwise one is "
                         "biased: rerun with more --variance-reps before trusting the ratios.")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    config = config_from_args(args)
    out = check_output_folder(args.out)
    if args.resume and args.overwrite:
        raise ValueError("--resume continues a run and --overwrite starts one over: give one of them")
    from .. import models
    from ..training import train_vae

    if args.backend == "numpyro":
        from ..numpyro.training import VAEStudy

        backend = VAEStudy(models.numpyro_vae)
    else:
        from ..pyro.training import VAEStudy  # loads torch, so that the thread policy reaches it

        backend = VAEStudy(models.pyro_vae)
    with threads(args.threads), sigterm_as_interrupt():
        result = train_vae(config, out, backend, resume=args.resume, progress=False if args.quiet else None,
                           overwrite=args.overwrite)
    what = "Bernoulli latent bits" if config.model == "discrete" else "Gaussian latents"
    sizes = "-".join(map(str, (result.images[0][1].shape[1], *config.hidden, config.latent_dim)))
    test = ("a Monte Carlo estimate of the discrete ELBO" if config.model == "discrete"
            else "PathwiseELBO")
    print(f"VAE ({what}) on {config.data}: {result.num_train} training / {result.num_test} test images, "
          f"{sizes}; ELBO in nats per image, test ELBO by {test} with {config.test_particles} particles")
    print(summary(result, config))
    files = write_results(result, config, out)
    print("wrote " + ", ".join(str(f) for f in files))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "vae",
        help="train a VAE (Gaussian or binary latents) on binarized digits with estimator specs; compare "
        "their gradient variance",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
        epilog=SPEC_HELP,
    )
    parser.add_argument("--model", choices=MODELS, default="gaussian",
                        help="gaussian: Kingma and Welling's VAE; discrete: Bernoulli latent bits")
    parser.add_argument("--estimator", default=None,
                        help="estimator spec (ppl_reparam.specs; relaxed+t=T for the discrete model); with "
                        "--compare a comma list. None: pathwise (gaussian) or score (discrete); with --compare "
                        + "; ".join(f"{m}: {DEFAULT_ESTIMATORS[m, True]}" for m in MODELS))
    parser.add_argument("--objective", choices=("elbo", "iwae"), default="elbo",
                        help="iwae: --estimator takes pathwise, score, vimco or dreg and means iwae[-vimco|-dreg]:K")
    parser.add_argument("--k", type=number(2, 10**4, integer=True),
                        default=None, help="IWAE samples K with --objective iwae (default 5)")
    parser.add_argument("--compare", action="store_true",
                        help="one model per estimator from the same initial weights; measure every estimator on each")
    parser.add_argument("--measure-on", default=None,
                        help="comma list of trained estimators whose parameters are measured (default: every run)")
    parser.add_argument("--analytic-kl", action="store_true",
                        help="closed-form KL (estimator B) instead of Monte Carlo (A): +akl on every spec")
    parser.add_argument("--epochs", type=number(1, 10**6, integer=True),
                        default=VAEConfig.epochs, help="passes over the data")
    parser.add_argument("--batch-size", type=number(1, 10**6, integer=True),
                        default=VAEConfig.batch_size, help="minibatch size")
    parser.add_argument("--latent-dim", type=number(1, 10**4, integer=True), default=None,
                        help="size of z; None: " + ", ".join(f"{v} ({m})" for m, v in DEFAULT_LATENT_DIM.items()))
    parser.add_argument("--hidden", type=int_list, default=",".join(map(str, VAEConfig.hidden)),
                        help="hidden layer sizes, comma-separated (encoder order; the decoder mirrors them)")
    parser.add_argument("--lr", type=number(0, 10, open_low=True), default=VAEConfig.lr, help="Adam learning rate")
    parser.add_argument("--num-particles", type=number(1, 10**6, integer=True), default=None,
                        help="samples per gradient estimate for specs without ':K' (an error with one that has it)")
    parser.add_argument("--data", type=text("--data"), default=VAEConfig.data,
                        help="digits, or a path to an MNIST IDX or .npz file")
    parser.add_argument("--seed", type=number(0, 2**32 - 1, integer=True), default=VAEConfig.seed,
                        help="seeds the split, the initial weights and every random stream")
    parser.add_argument("--out", type=text("--out"), default="results/vae",
                        help="folder for results, figures and checkpoint")
    parser.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in an --out that holds a run (its checkpoint and results are replaced)")
    parser.add_argument("--variance-reps", type=variance_reps, default=VAEConfig.variance_reps,
                        help=f"gradient estimates per variance measurement (0: none; else at least {MIN_REPS})")
    parser.add_argument("--variance-every", type=number(1, 10**6, integer=True), default=VAEConfig.variance_every,
                        help="epochs between variance measurements (also at epoch 0 and the last)")
    parser.add_argument("--test-particles", type=number(2, 10**5, integer=True), default=VAEConfig.test_particles,
                        help="particles per test image for the test ELBO")
    parser.add_argument("--dynamic-binarization", action="store_true",
                        help="draw fresh Bernoulli training pixels every epoch")
    parser.add_argument("--threads", type=number(1, 1024, integer=True), default=None,
                        help="CPU threads for torch and BLAS (None: one, which small networks run fastest on)")
    parser.add_argument("--backend", choices=("pyro", "numpyro"), default="pyro",
                        help="numpyro: train with JAX/NumPyro (every spec; checkpoint.npz)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    parser.set_defaults(func=run)
