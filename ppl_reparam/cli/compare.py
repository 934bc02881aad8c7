r"""``ppl-reparam compare``: every estimator spec's gradient variance and cost on the same parameters.

For one shipped model (``--model``) and a list of estimator specs (:mod:`ppl_reparam.specs`; and
``relaxed+t=T[:K]`` for the discrete model), measure the gradient variance of each spec at the *same*
parameter values, ``--reps`` independent estimates each, through the backend ``--backend`` (``pyro``,
the default: :func:`ppl_reparam.pyro.gradient_variance`, reverse mode, one estimate per pass, as in
training, so that the seconds are comparable; ``numpyro``: :func:`ppl_reparam.numpyro.gradient_variance`,
every repetition in one compiled ``vmap`` pass, timed without its compilation), and report per
parameter group:

- the **per-sample variance**: the total variance over the group's elements of the spec's estimate
  times its particles (so that specs with different particle counts compare per sample drawn), with
  a 95% bootstrap-t interval (:class:`~ppl_reparam.stats.GroupStats`);
- the **variance x cost** (work-normalized variance): the total variance of the estimate times the
  seconds one estimate takes; lower is better at equal computing time (compare seconds within one
  backend: a NumPyro estimate's share of a vectorized pass is not a Pyro pass);
- the mean SNR, and the ratio of each spec's per-sample variance to the reference's (``pathwise`` when
  measured, else ``score``) with the agreement of their means (the same objective must agree; IWAE
  bounds and relaxations are other objectives, so their disagreement is their bias w.r.t. the ELBO's
  gradient).

Models (each backend has its own implementation of each, with the same parameter names):

- ``toy``: the toy Gaussian (:mod:`ppl_reparam.models.toy_gaussian`, ``toy_gaussian_numpyro``) at
  ``--theta`` (default 2): guide N(theta, 1), flat prior and factor -x^2; one parameter, ``theta``.
- ``vae``: the Gaussian VAE (:mod:`ppl_reparam.models.vae`, ``vae_numpyro``; 64-128-8), ``decoder`` and
  ``encoder`` groups;
- ``discrete``: the VAE with 16 Bernoulli latent bits (:mod:`ppl_reparam.models.discrete_vae`,
  ``discrete_vae_numpyro``), each relaxed spec measured on the relaxation at its own temperature;

the VAEs at their initial weights seeded by ``--seed`` (those ``ppl-reparam vae --seed`` starts from in
that backend: torch's and JAX's generators differ), or at a ``ppl-reparam vae`` run's weights with
``--checkpoint DIR [--run SPEC]`` (``checkpoint.pt`` of a Pyro run, ``checkpoint.npz`` of a NumPyro
run: each backend reads its own), on the fixed batch of the first ``--batch-size`` training digits
(the plate scaled to the training set).

A spec with a stateful baseline (``ma``, ``learned``, the latter a network of the batch ``x`` for the
VAEs) first learns at these fixed parameters from ``--warmup`` training-free updates on the batch
(the parameters do not move; in NumPyro the state is NumPyro mutable state,
:func:`ppl_reparam.numpyro.training.warm_up_baseline`); from a checkpoint, the spec the run was
trained with keeps its trained baseline. A spec that cannot apply (``pathwise`` on the discrete model,
a relaxation of the Gaussian one, ...) is an error with the ELBO's own message, before anything is
measured.

Files in ``--out``: ``compare.csv``, ``compare.json``, ``compare.md`` and ``compare.png`` (the two
bar charts, log scale).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..choice import CRITERIA
from ..report import ResultSet, atomic_write_text, check_output_folder, markdown_table, write_csv, write_json
from ..stats import MIN_REPS, GradientStats
from ..study import GROUPS as VAE_GROUPS
from ..threads import auto_threads, limited_threads
from ..training import CHECKPOINTS
from .common import SPEC_HELP, TOY_BYTES_PER_PARTICLE, HelpFormatter, check_memory, number, text

MODELS = ("toy", "vae", "discrete")
GROUPS = {"toy": ("theta",), "vae": VAE_GROUPS, "discrete": VAE_GROUPS}
"""Each model's parameter groups, as the tables show them (``--choose``)."""
BACKENDS = ("pyro", "numpyro")
DEFAULT_ESTIMATORS = {
    "toy": "score,score+rloo:4,score+ma,pathwise,pathwise+stl,iwae:5,iwae-vimco:5,iwae-dreg:5",
    "vae": "pathwise,pathwise+stl,score,score+rloo:4,iwae:5,iwae-dreg:5",
    "discrete": "score,score+rloo:4,score+ma,score+learned,iwae-vimco:4,relaxed+t=0.5,relaxed+t=1",
}
VAE_KIND = {"vae": "gaussian", "discrete": "discrete"}
STATEFUL = ("moving_average", "learned")
"""Baselines that learn, and so warm up before a measurement."""


class Target(Protocol):
    """What is measured, in one backend: the parameters, how each spec is checked and measured at
    them, and the parameter groups."""

    description: str
    timing: str
    """How the seconds were taken, for the printed header."""

    def active(self) -> AbstractContextManager:
        """A context that makes the parameters current while specs are checked and measured."""

    def check(self, spec: Any) -> None:
        """Raise the ELBO's own error if ``spec`` cannot apply to the model."""

    def gradient_stats(self, spec: Any, reps: int, seed: int, warmup: int, warmup_seed: int,
                       confidence: float) -> GradientStats:
        """``reps`` gradient estimates of ``spec`` at the parameters, draws seeded by ``seed``; a stateful
        baseline not trained with the parameters first takes ``warmup`` updates seeded by ``warmup_seed``."""

    def groups(self, names: list[str]) -> dict[str, list[str]]:
        """The parameter groups of the measured parameter names."""


@dataclass
class PyroTarget:
    """Pyro model and guide with their arguments, a context that makes their parameters current, how a
    spec becomes an ELBO and a relaxation, the parameter groups, and the ELBOs of a trained run (by
    spec: their baselines have learned)."""

    description: str
    model: Callable
    guide: Callable
    args: tuple
    kwargs: dict
    active: Callable[[], AbstractContextManager]
    make_elbo: Callable[[Any], Any]
    relaxed: Callable[[Any], AbstractContextManager]
    groups: Callable[[list[str]], dict[str, list[str]]]
    trained: dict[str, Any] = field(default_factory=dict)
    timing: str = "reverse mode, one estimate per pass"

    def check(self, spec: Any) -> None:
        import torch

        from ..pyro.variance import isolated_rng

        with self.relaxed(spec), isolated_rng(0), torch.no_grad():
            self.make_elbo(spec).loss(self.model, self.guide, *self.args, **self.kwargs)

    def gradient_stats(self, spec: Any, reps: int, seed: int, warmup: int, warmup_seed: int,
                       confidence: float) -> GradientStats:
        import torch

        from ..pyro.variance import gradient_variance, isolated_rng

        name = str(spec)
        elbo = self.trained.get(name) or self.make_elbo(spec)
        with self.relaxed(spec):
            if spec.baseline in STATEFUL and name not in self.trained and warmup:
                # the baseline learns the cost at these parameters; loss_and_grads under no_grad
                # updates it and leaves the parameters and their .grad alone
                with isolated_rng(warmup_seed), torch.no_grad():
                    for _ in range(warmup):
                        elbo.loss_and_grads(self.model, self.guide, *self.args, **self.kwargs)
            return gradient_variance(elbo, self.model, self.guide, *self.args, num_reps=reps, seed=seed,
                                     method="loop", confidence=confidence, **self.kwargs)


@dataclass
class NumPyroTarget:
    """NumPyro parameter values, the model and guide each spec is measured on (``at``: at its relaxation
    temperature), their arguments, how a spec becomes an ELBO, the parameter groups, and a trained run's
    ELBO with the guide that carries its baseline's trained state (by spec)."""

    description: str
    at: Callable[[Any], tuple[Callable, Callable]]
    params: dict[str, Any]
    args: tuple
    kwargs: dict
    make_elbo: Callable[[Any], Any]
    groups: Callable[[list[str]], dict[str, list[str]]]
    trained: dict[str, tuple[Any, Callable]] = field(default_factory=dict)
    timing: str = "NumPyro: every repetition in one compiled vmap pass, compilation excluded"

    def active(self) -> AbstractContextManager:
        return nullcontext()  # the parameters are passed explicitly

    def check(self, spec: Any) -> None:
        from ..numpyro.training import check_applies, with_elbo_state

        model, guide = self.at(spec)
        elbo = self.make_elbo(spec)
        check_applies(elbo, model, with_elbo_state(elbo, guide), self.params, *self.args, **self.kwargs)

    def gradient_stats(self, spec: Any, reps: int, seed: int, warmup: int, warmup_seed: int,
                       confidence: float) -> GradientStats:
        from ..numpyro.training import compiled_gradient_variance, warm_up_baseline

        model, guide = self.at(spec)
        name = str(spec)
        if name in self.trained:
            elbo, guide = self.trained[name]
        else:
            elbo = self.make_elbo(spec)
            guide = warm_up_baseline(elbo, model, guide, self.params, *self.args, steps=warmup, seed=warmup_seed,
                                     **self.kwargs)
        return compiled_gradient_variance(elbo, model, guide, *self.args, params=self.params, num_reps=reps,
                                          seed=seed, confidence=confidence, **self.kwargs)


def parse_estimators(text: str, model: str) -> list:
    """The specs of ``--estimators``, checked against the model (relaxations: discrete only)."""
    from ..specs import RelaxedSpec, check_particles, parse_run_spec

    specs = [parse_run_spec(part) for part in text.split(",") if part.strip()]
    if not specs:
        raise ValueError("--estimators: no estimator spec given")
    names = [str(s) for s in specs]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"--estimators: {duplicated} given twice")
    for spec in specs:
        if isinstance(spec, RelaxedSpec) and model != "discrete":
            raise ValueError(f"{spec}: the Concrete relaxation applies to the discrete model (--model discrete)")
        check_particles(spec)
    return specs


def check_specs_memory(specs: list, model: str, batch_size: int, checkpoint: str | None) -> None:
    """Refuse, before any work, a spec whose particles would not fit in memory (a rough bound: the
    toy's, or the VAE's at the default layers, for MNIST-sized images when a checkpoint is measured)."""
    from ..study import DEFAULT_LATENT_DIM, VAEConfig
    from .vae import bytes_per_particle

    if model == "toy":
        size = TOY_BYTES_PER_PARTICLE
    else:
        data = "digits" if checkpoint is None else "a file"
        latent_dim = DEFAULT_LATENT_DIM["discrete" if model == "discrete" else "gaussian"]
        size = bytes_per_particle(data, batch_size, VAEConfig.hidden, latent_dim)
    for spec in specs:
        check_memory(f"--estimators {spec}", spec.particles, size)


def checkpoint_file(checkpoint: str, backend: str) -> Path:
    """The ``backend``'s checkpoint that ``--checkpoint`` names (a file, or the folder of a ``vae`` run);
    an error naming both backends when it is the other backend's."""
    path = Path(checkpoint)
    if path.is_dir():
        own = path / CHECKPOINTS[backend]
        others = [b for b in BACKENDS if b != backend and (path / CHECKPOINTS[b]).is_file()]
        if not own.is_file() and others:
            path = path / CHECKPOINTS[others[0]]
        else:
            path = own
    other = next((b for b in BACKENDS if b != backend and path.name.endswith(Path(CHECKPOINTS[b]).suffix)), None)
    if other is not None:
        raise ValueError(f"--checkpoint {path} is a {CHECKPOINTS[other]} of the {other} backend; give --backend "
                         f"{other} to measure it there (the {backend} backend reads its own {CHECKPOINTS[backend]})")
    if not path.is_file():
        raise FileNotFoundError(f"--checkpoint {path}: no such file (a `ppl-reparam vae --backend {backend}` run's "
                                f"{CHECKPOINTS[backend]})")
    return path


def checkpoint_run(
    path: Path, saved_config: dict[str, Any], names: list[str], kind: str, run_name: str | None
) -> tuple[Any, int]:
    """``(config, index)`` of the run ``run_name`` (None: the first) among a checkpoint's runs ``names``,
    checked against the VAE ``kind`` asked for."""
    from ..specs import parse_run_spec
    from ..study import VAEConfig

    config = VAEConfig(**VAEConfig.key_of_checkpoint(saved_config))
    if config.model != kind:
        raise ValueError(f"--checkpoint {path} holds the {config.model} VAE; give --model "
                         f"{'discrete' if config.model == 'discrete' else 'vae'}")
    name = str(parse_run_spec(run_name)) if run_name else names[0]
    if name not in names:
        raise ValueError(f"--run {name!r}: the checkpoint's runs are {names}")
    return config, names.index(name)


def _toy_target(theta: float) -> PyroTarget:
    import pyro

    from ..models.toy_gaussian import ToyGaussian
    from ..pyro.specs import make_elbo

    toy = ToyGaussian(theta)

    @contextmanager
    def nothing(spec: Any) -> Iterator[None]:
        yield

    return PyroTarget(
        description=f"toy Gaussian at theta = {theta:g} (guide N(theta, 1), factor -x^2)",
        model=toy.model, guide=toy.guide, args=(), kwargs={},
        active=lambda: pyro.get_param_store().scope(),
        make_elbo=lambda spec: make_elbo(spec, max_plate_nesting=0),
        relaxed=nothing,
        groups=lambda names: {"theta": names},
    )


def _numpyro_toy_target(theta: float) -> NumPyroTarget:
    from jax import random

    from ..models.toy_gaussian_numpyro import ToyGaussian
    from ..numpyro.specs import make_elbo
    from ..numpyro.variance import init_params

    toy = ToyGaussian(theta)
    params, _ = init_params(toy.model, toy.guide, random.PRNGKey(0))
    return NumPyroTarget(
        description=f"toy Gaussian at theta = {theta:g} (guide N(theta, 1), factor -x^2)",
        at=lambda spec: (toy.model, toy.guide), params=params, args=(), kwargs={},
        make_elbo=make_elbo, groups=lambda names: {"theta": names},
    )


def _initial_description(kind: str, dim: int, latent_dim: int, seed: int) -> str:
    return f"{kind} VAE {dim}-128-{latent_dim} at its initial weights (seed {seed})"


def _trained_description(kind: str, config: Any, dim: int, name: str, path: Path, epoch: int) -> str:
    return (f"{kind} VAE {dim}-{'-'.join(map(str, config.hidden))}-{config.latent_dim}, "
            f"run {name} of {path} at epoch {epoch}")


def _vae_target(model: str, seed: int, batch_size: int, checkpoint: str | None, run_name: str | None) -> PyroTarget:
    import torch

    from .. import models
    from ..data import load_dataset
    from ..pyro.training import TrainingRun, VAEStudy, load_checkpoint, make_run_elbo, relaxation, temperature_of
    from ..pyro.variance import isolated_rng
    from ..study import DEFAULT_LATENT_DIM, group_names

    kind = VAE_KIND[model]
    trained = {}
    if checkpoint is not None:
        path = checkpoint_file(checkpoint, "pyro")
        state = load_checkpoint(path)
        config, index = checkpoint_run(path, state["config"], [r["name"] for r in state["runs"]], kind, run_name)
        data = load_dataset(config.data, seed=config.seed)
        run = VAEStudy(models.pyro_vae).build_runs(config, data)[index]
        run.load_state_dict(state["runs"][index])
        trained = {run.name: run.elbo}
        description = _trained_description(kind, config, data.dim, run.name, path, run.epoch)
    else:
        if run_name is not None:
            raise ValueError("--run picks a run of --checkpoint; give --checkpoint too")
        data = load_dataset("digits", seed=seed)
        latent_dim = DEFAULT_LATENT_DIM[kind]
        with isolated_rng(seed):
            vae_model, guide = models.pyro_vae(kind, data.dim, (128,), latent_dim)
        run = TrainingRun("initial", vae_model, guide, make_run_elbo("score"), lr=1e-3, seed=seed)
        description = _initial_description(kind, data.dim, latent_dim, seed)
    x = torch.from_numpy(data.train[: min(batch_size, len(data.train))])
    description += f"; fixed batch of the first {len(x)} of {len(data.train)} training digits"
    return PyroTarget(
        description=description, model=run.model, guide=run.guide, args=(x,),
        kwargs={"num_data": len(data.train)}, active=run.active, make_elbo=make_run_elbo,
        relaxed=lambda spec: relaxation(run.model, run.guide, temperature_of(spec)),
        groups=group_names,
        trained=trained,
    )


def _numpyro_vae_target(
    model: str, seed: int, batch_size: int, checkpoint: str | None, run_name: str | None
) -> NumPyroTarget:
    from .. import models
    from ..data import load_dataset
    from ..numpyro.training import VAEStudy, load_checkpoint, make_run_elbo, run_arrays, temperature_of
    from ..study import DEFAULT_LATENT_DIM, VAEConfig, group_names

    kind = VAE_KIND[model]
    study = VAEStudy(models.numpyro_vae)
    trained = {}
    if checkpoint is not None:
        path = checkpoint_file(checkpoint, "numpyro")
        meta, arrays = load_checkpoint(path)
        config, index = checkpoint_run(path, meta["config"], [r["name"] for r in meta["runs"]], kind, run_name)
        data = load_dataset(config.data, seed=config.seed)
        run = study.build_runs(config, data)[index]
        run.load_state_dict(meta["runs"][index], run_arrays(arrays, index))
        trained = {run.name: (run.elbo, run.trained_guide)}
        description = _trained_description(kind, config, data.dim, run.name, path, run.epoch)
    else:
        if run_name is not None:
            raise ValueError("--run picks a run of --checkpoint; give --checkpoint too")
        data = load_dataset("digits", seed=seed)
        config = VAEConfig(model=kind, estimators=("score",), latent_dim=DEFAULT_LATENT_DIM[kind], seed=seed)
        run = study.build_runs(config, data)[0]  # the weights `vae --backend numpyro --seed` starts from
        description = _initial_description(kind, data.dim, config.latent_dim, seed)
    x = data.train[: min(batch_size, len(data.train))]
    description += f"; fixed batch of the first {len(x)} of {len(data.train)} training digits"

    def at(spec: Any) -> tuple[Callable, Callable]:
        vae = study.model_at(temperature_of(spec))
        return vae.model, vae.guide

    return NumPyroTarget(
        description=description, at=at, params=run.params, args=(x,), kwargs={"num_data": len(data.train)},
        make_elbo=make_run_elbo, groups=group_names, trained=trained,
    )


def target_of(backend: str, model: str, seed: int, batch_size: int, theta: float, checkpoint: str | None,
              run_name: str | None) -> Target:
    """The :class:`Target` of ``--backend`` and ``--model`` (the options of the same names)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if model == "toy":
        return _toy_target(theta) if backend == "pyro" else _numpyro_toy_target(theta)
    make = _vae_target if backend == "pyro" else _numpyro_vae_target
    return make(model, seed, batch_size, checkpoint, run_name)


def measure(
    target: Target, specs: list, reps: int, seed: int, warmup: int = 1000, confidence: float = 0.95,
    progress: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows per spec and parameter group (:func:`~ppl_reparam.study.measured_rows`) and the comparisons
    with the reference (:func:`~ppl_reparam.study.comparison_rows`), every spec at the same parameters
    of ``target`` (either backend's), spec ``j`` seeded by ``(seed, j)`` and its warm-up by ``(seed, j,
    1)``. Every spec is checked before any is measured."""
    from tqdm.auto import tqdm

    from ..study import comparison_rows, derived_seed, measured_rows

    names = {str(s): s for s in specs}
    stats = {}
    with target.active():
        for spec in names.values():  # every spec applies, or the ELBO's error before any work
            target.check(spec)
        for j, (name, spec) in enumerate(tqdm(names.items(), desc="compare", disable=not progress)):
            stats[name] = target.gradient_stats(spec, reps, derived_seed(seed, j), warmup, derived_seed(seed, j, 1),
                                                confidence)
    groups = target.groups(list(next(iter(stats.values()))))
    rows = measured_rows(stats, groups, confidence, seed, {name: spec.particles for name, spec in names.items()})
    return rows, comparison_rows(stats, names, groups, confidence, seed)


def summary_table(rows: list[dict[str, Any]], comparison: list[dict[str, Any]]) -> str:
    """The printed table: one line per spec and group."""
    ratios = {(c["measured"], c["group"]): c for c in comparison}
    lines = []
    for r in rows:
        c = ratios.get((r["measured"], r["group"]))
        ratio = "reference" if c is None and comparison and comparison[0]["reference"] == r["measured"] else "—"
        if c is not None:
            ratio = f"{c['variance_ratio']:.3g} [{c['ratio_ci_low']:.3g}, {c['ratio_ci_high']:.3g}]"
            ratio += "" if c["same_objective"] else " (other objective)"
        lines.append(
            {
                "estimator": r["measured"],
                "group": r["group"],
                "particles": r["particles"],
                "per-sample variance [95% CI]": (f"{r['per_sample_variance']:.4g} "
                                                 f"[{r['per_sample_ci_low']:.4g}, {r['per_sample_ci_high']:.4g}]"),
                "ms / estimate": f"{1e3 * r['seconds_per_estimate']:.3g}",
                "variance x seconds": f"{r['variance_x_seconds']:.4g}",
                "mean SNR": f"{r['mean_snr']:.3g}",
                "per-sample ratio to reference [95% CI]": ratio,
            }
        )
    return markdown_table(lines)


def run(args: argparse.Namespace) -> None:
    if args.estimators is not None and not args.estimators.strip(" ,"):
        raise ValueError("--estimators: no estimator spec given (leave the option out for the defaults)")
    specs = parse_estimators(args.estimators or DEFAULT_ESTIMATORS[args.model], args.model)
    check_specs_memory(specs, args.model, args.batch_size, args.checkpoint)
    if args.model == "toy" and (args.checkpoint or args.run):
        raise ValueError("--checkpoint and --run apply to the VAEs (--model vae or discrete), not the toy")
    if args.choose is not None and args.choose not in GROUPS[args.model]:
        raise ValueError(f"--choose: the {args.model} model's parameter groups are {', '.join(GROUPS[args.model])}, "
                         f"not {args.choose!r}")
    out = check_output_folder(args.out)
    if args.backend == "pyro":
        import torch  # noqa: F401  (loaded before the thread policy, so that it reaches torch)
    n_threads = auto_threads(None, args.threads)
    with limited_threads(n_threads):
        began = time.perf_counter()
        target = target_of(args.backend, args.model, args.seed, args.batch_size, args.theta, args.checkpoint, args.run)
        rows, comparison = measure(target, specs, args.reps, args.seed, args.warmup, progress=not args.quiet)
        seconds = time.perf_counter() - began
    header = (f"Gradient variance on {target.description} ({args.backend}): {args.reps} repetitions per estimator, "
              f"seed {args.seed}; per-sample variance = total variance over the group's elements x particles (95% "
              "bootstrap-t CI); variance x seconds = total variance x seconds per estimate "
              f"({target.timing}, {n_threads} thread(s)).")
    table = summary_table(rows, comparison)
    print(header)
    print(table)
    choice = None
    if args.choose is not None:
        from ..choice import choose
        from ..specs import objective_of

        choice = choose(rows, args.choose, args.criterion, {str(s): objective_of(s) for s in specs})
        print(f"chosen: {choice.reason()}")
    from ..plots import plot_compare

    with ResultSet(out, "compare") as results:
        if choice is not None:
            write_json({"chosen": choice.chosen, "group": choice.group, "criterion": choice.criterion,
                        "reason": choice.reason(), "distinguished": choice.distinguished,
                        "ranking": choice.ranking}, results.path("choice.json"))
        write_csv(rows, results.path("compare.csv"))
        write_json({"model": args.model, "backend": args.backend, "parameters": target.description,
                    "reps": args.reps, "seed": args.seed, "warmup": args.warmup, "threads": n_threads,
                    "seconds": seconds, "rows": rows, "comparison": comparison}, results.path("compare.json"))
        atomic_write_text(results.path("compare.md"), f"{header}\n\n{table}\n")
        plot_compare(rows, results.path("compare.png"),
                     f"{target.description} ({args.backend})\n{args.reps} repetitions per estimator")
    print("wrote " + ", ".join(str(f) for f in results.files))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="gradient variance and cost of estimator specs on the same parameters of a shipped model",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
        epilog=SPEC_HELP,
    )
    parser.add_argument("--model", choices=MODELS, required=True,
                        help="toy: the toy Gaussian; vae: the Gaussian VAE; discrete: the VAE with binary latents")
    parser.add_argument("--estimators", default=None,
                        help="comma-separated estimator specs (ppl_reparam.specs; relaxed+t=T for discrete). "
                        "None: " + "; ".join(f"{m}: {v}" for m, v in DEFAULT_ESTIMATORS.items()))
    parser.add_argument("--reps", type=number(MIN_REPS, 10**6, integer=True), default=100,
                        help="gradient estimates per spec")
    parser.add_argument("--seed", type=number(0, 2**32 - 1, integer=True), default=0,
                        help="seeds the draws and the VAEs' initial weights")
    parser.add_argument("--out", type=text("--out"), default="results/compare",
                        help="folder for compare.csv/.json/.md/.png")
    parser.add_argument("--threads", type=number(1, 1024, integer=True), default=None,
                        help="CPU threads for torch and BLAS (None: one, which these small operations run fastest on)")
    parser.add_argument("--theta", type=number(-1e3, 1e3), default=2.0, help="the toy guide's mean")
    parser.add_argument("--backend", choices=BACKENDS, default="pyro",
                        help="measure through Pyro (torch) or NumPyro (JAX): each has its own models")
    parser.add_argument("--checkpoint", type=text("--checkpoint"), default=None,
                        help="a `ppl-reparam vae` run's checkpoint (or its folder) of the same --backend: "
                        "checkpoint.pt (pyro) or checkpoint.npz (numpyro); measure at its weights")
    parser.add_argument("--run", default=None, help="which run of --checkpoint, by its spec (None: the first)")
    parser.add_argument("--batch-size", type=number(1, 10**6, integer=True), default=100,
                        help="rows of the fixed batch (VAEs)")
    parser.add_argument("--warmup", type=number(0, 10**7, integer=True), default=1000,
                        help="training-free updates of a ma or learned baseline before it is measured")
    parser.add_argument("--choose", default=None, choices=sorted({g for gs in GROUPS.values() for g in gs}),
                        help="choose the spec with the lowest work-normalized variance of this parameter group "
                        "(ppl_reparam.choice); written to choice.json")
    parser.add_argument("--criterion", choices=CRITERIA, default=CRITERIA[0],
                        help="per_sample_variance: variance x particles (deterministic); variance_x_seconds: "
                        "variance x measured seconds per estimate")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
