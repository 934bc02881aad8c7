r"""Minibatch SVI training of the digits VAE in NumPyro, with checkpoints that resume bit for bit: the
``ppl-reparam vae --backend numpyro`` counterpart of :mod:`ppl_reparam.pyro.training`.

A :class:`TrainingRun` is one model/guide pair trained by :class:`numpyro.infer.SVI` with Adam (Kingma
and Ba 2015) and :class:`~ppl_reparam.numpyro.PathwiseELBO` or
:class:`~ppl_reparam.numpyro.ScoreFunctionELBO`, one ``jax.jit``-compiled ``svi.update`` per minibatch
shape. Its state is NumPyro's ``SVIState`` (parameters, Adam's moments and step, the PRNG key of the
ELBO's draws) and a NumPy ``Generator`` for shuffling and dynamic binarization, the same stream the
Pyro backend draws from, so both backends see the same minibatches for a given seed. Models and guides
take ``(x, num_data=N)`` and scale the plate by N/B, so each step's loss estimates the full-data -ELBO
(Hoffman, Blei, Wang and Paisley, "Stochastic Variational Inference", JMLR 2013).

:func:`evaluate_elbo` estimates the ELBO per datum with many pathwise particles and a standard error
over particles; :func:`measure_estimators` measures each estimator's gradient at a run's current
parameters (:func:`~ppl_reparam.numpyro.gradient_variance`), aggregated over the encoder's and the
decoder's parameters (:mod:`ppl_reparam.stats`); :func:`train_vae_numpyro` is the ``vae`` study. Its
rows (history, variance, comparison) and images have the Pyro study's columns, so
:func:`ppl_reparam.cli.vae.write_results` writes the same CSV, JSON and figures.

The checkpoint ``checkpoint.npz`` is written atomically after every epoch
(:func:`~ppl_reparam.report.atomic_write_bytes`) and loaded with ``allow_pickle=False``: per run the
leaves of its ``SVIState`` (``runs/<i>/state/<k>``), its parameters by name (``runs/<i>/params/<name>``,
for readers of the file) and, as JSON (``meta.json``), the settings, epoch, the data stream's state,
history and measurements. Imports JAX and NumPyro only (never torch or Pyro).
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax import random
from numpyro.infer import SVI
from numpyro.infer.elbo import ELBO
from numpyro.optim import Adam
from tqdm.auto import tqdm

from ..data import binarize, load_dataset, minibatches
from ..models.vae_numpyro import VAE, make_vae
from ..report import atomic_write_bytes
from ..specs import EstimatorSpec, parse_spec
from ..study import VAEResult, comparison_rows, derived_seed, group_names, group_rows
from .elbo import PathwiseELBO, ScoreFunctionELBO
from .variance import gradient_variance

__all__ = [
    "CHECKPOINT",
    "TrainingRun",
    "VAEResult",
    "evaluate_elbo",
    "load_checkpoint",
    "make_elbo",
    "measure_estimators",
    "save_checkpoint",
    "train_vae_numpyro",
]

ELBOS: dict[str, type[PathwiseELBO | ScoreFunctionELBO]] = {"pathwise": PathwiseELBO, "score": ScoreFunctionELBO}
MAX_ELEMENTS = 2**23
"""Most elements (particles x rows x pixels) in one vectorized evaluation pass."""
CHECKPOINT = "checkpoint.npz"
FORMAT = 1
"""Version of the checkpoint layout."""
IMAGES = 10
"""Test images shown, with their reconstructions and as many prior samples."""


class VAESettings(Protocol):
    """What :func:`train_vae_numpyro` reads from its settings: the attributes of
    :class:`ppl_reparam.study.VAEConfig` (``estimators`` and ``measure_on`` as spec strings)."""

    estimators: tuple[str, ...]
    model: str
    epochs: int
    batch_size: int
    latent_dim: int
    hidden: tuple[int, ...]
    lr: float
    data: str
    seed: int
    dynamic_binarization: bool
    variance_reps: int
    variance_every: int
    test_particles: int
    measure_on: tuple[str, ...]

    def key(self) -> dict[str, Any]: ...


def make_elbo(spec: str | EstimatorSpec) -> PathwiseELBO | ScoreFunctionELBO:
    """The ELBO of an estimator spec (:mod:`ppl_reparam.specs`) that this backend has: ``pathwise`` or
    ``score``, with ``:K`` particles (vectorized with ``jax.vmap``) and ``+akl`` (closed-form KL). Other
    specs (baselines, ``stl``, IWAE) raise a ValueError naming the Pyro backend, which has them.

    The same spec gives the same (stateless) object, so that what ``jax.jit`` compiled with it as a
    static argument (:func:`~ppl_reparam.numpyro.gradient_variance`, the SVI update) is reused.
    """
    return _elbo(parse_spec(spec) if isinstance(spec, str) else spec)


@lru_cache(maxsize=64)
def _elbo(spec: EstimatorSpec) -> PathwiseELBO | ScoreFunctionELBO:
    if spec.base not in ELBOS or spec.stl or spec.baseline is not None:
        raise ValueError(
            f"estimator {spec}: the NumPyro backend trains pathwise and score (with :K particles and +akl); "
            "baselines, +stl and the IWAE bounds are in the Pyro backend (--backend pyro)"
        )
    return ELBOS[spec.base](num_particles=spec.particles, analytic_kl=spec.analytic_kl)


@lru_cache(maxsize=64)
def _svi(model: Callable, guide: Callable, elbo: ELBO, lr: float) -> tuple[SVI, Callable]:
    """``SVI`` with Adam(``lr``) and its ``jax.jit``-compiled ``update`` (``num_data`` static), shared by
    runs of equal model, guide, ELBO and rate (state lives in ``SVIState``, not in these objects)."""
    svi = SVI(model, guide, Adam(lr), elbo)
    return svi, jax.jit(svi.update, static_argnames="num_data")


@partial(jax.jit, static_argnames=("model", "guide", "num_particles"))
def _particle_elbos(
    key: jax.Array,
    params: dict[str, jax.Array],
    x: jax.Array,
    *,
    model: Callable,
    guide: Callable,
    num_particles: int,
) -> jax.Array:
    r""":math:`\sum_i [\log p(x_i, z_i) - \log q(z_i \mid x_i)]` over the rows of ``x``, one value per
    particle, each particle an independent draw :math:`z_i \sim q(z \mid x_i)` for every row."""
    losses, _ = PathwiseELBO(num_particles=num_particles).particle_losses(key, params, model, guide, x)
    return -losses


def evaluate_elbo(
    model: Callable,
    guide: Callable,
    params: Mapping[str, jax.Array],
    x: np.ndarray,
    num_particles: int = 100,
    seed: int = 0,
) -> tuple[float, float]:
    r"""ELBO per datum of ``x`` at ``params`` and its standard error, from ``num_particles`` pathwise
    particles (the estimator of :func:`ppl_reparam.pyro.training.evaluate_elbo`).

    Particle ``p`` gives :math:`E_p = \frac1n \sum_i [\log p(x_i, z_i) - \log q(z_i \mid x_i)]`; the
    estimate is the mean of the :math:`E_p` and its standard error :math:`\mathrm{sd}(E_p)/\sqrt{P}`
    (particles are i.i.d.; the rows are fixed). Rows are evaluated in chunks of at most
    :data:`MAX_ELEMENTS` elements, each chunk under its own key split from ``seed``. ``model`` and
    ``guide`` take ``(x)`` without ``num_data`` (no scaling).
    """
    if num_particles < 2:
        raise ValueError(f"num_particles must be at least 2 for a standard error, got {num_particles}")
    x = np.asarray(x)
    rows = max(1, MAX_ELEMENTS // (num_particles * int(np.prod(x.shape[1:]))))
    starts = range(0, len(x), rows)
    per_particle = np.zeros(num_particles)
    for key, start in zip(random.split(random.PRNGKey(seed), len(starts)), starts):
        chunk = _particle_elbos(
            key, dict(params), x[start : start + rows], model=model, guide=guide, num_particles=num_particles
        )
        per_particle += np.asarray(chunk, dtype=np.float64)
    per_particle /= len(x)
    return float(per_particle.mean()), float(per_particle.std(ddof=1) / math.sqrt(num_particles))


class TrainingRun:
    """One model and guide trained with one ELBO; see the module docstring.

    :param name: a label (the estimator spec), used in rows and checkpoints.
    :param model, guide: NumPyro callables taking ``(x, num_data=...)``.
    :param elbo: the training ELBO, e.g. :func:`make_elbo`.
    :param lr: Adam's learning rate.
    :param seed: the key of ``SVI.init`` (initial weights: runs with the same seed start from the same
        weights) and of the run's NumPy stream.
    :param x_init, num_data: a batch and the data size to initialise the parameters with (only shapes
        matter).
    """

    def __init__(
        self,
        name: str,
        model: Callable,
        guide: Callable,
        elbo: ELBO,
        lr: float,
        seed: int,
        x_init: np.ndarray,
        num_data: int,
    ):
        if not lr > 0:
            raise ValueError(f"the learning rate must be positive, got {lr}")
        self.name = name
        self.model = model
        self.guide = guide
        self.elbo = elbo
        self.svi, self._update = _svi(model, guide, elbo, float(lr))
        self.state = self.svi.init(random.PRNGKey(seed), x_init, num_data=num_data)
        self.data_rng = np.random.default_rng(seed)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []

    @property
    def params(self) -> dict[str, jax.Array]:
        """Current (constrained) parameter values."""
        return self.svi.get_params(self.state)

    def train_epoch(self, train: np.ndarray, batch_size: int, dynamic: bool = False) -> float:
        """One pass over ``train`` (rows: data) in shuffled minibatches; with ``dynamic`` each pixel of
        ``train`` is a probability and the epoch's data are a fresh Bernoulli draw of it.

        Returns the training ELBO per datum: the steps' full-data estimates, each weighted by its
        share of the rows, over the number of rows (parameters move during the epoch).
        """
        x = binarize(train, self.data_rng) if dynamic else train
        n = len(x)
        losses, sizes = [], []
        for batch in minibatches(x, batch_size, self.data_rng):
            self.state, loss = self._update(self.state, batch, num_data=n)
            losses.append(loss)
            sizes.append(len(batch))
        self.epoch += 1
        return -float(np.dot(jax.device_get(losses), sizes)) / n**2

    def state_dict(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Everything needed to continue, as ``(meta, arrays)``: JSON-able values (name, epoch, the data
        stream's state, history), and arrays ``state/<k>``, the leaves of the ``SVIState`` (parameters,
        Adam's step and moments, PRNG key) in ``jax.tree`` order, and ``params/<name>``."""
        meta = {
            "name": self.name,
            "epoch": self.epoch,
            "data_rng": self.data_rng.bit_generator.state,
            "history": [dict(h) for h in self.history],
        }
        arrays = {f"state/{k:04d}": np.asarray(leaf) for k, leaf in enumerate(jax.tree.leaves(self.state))}
        arrays |= {f"params/{name}": np.asarray(value) for name, value in self.params.items()}
        return meta, arrays

    def load_state_dict(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        """Restore :meth:`state_dict`'s contents into this freshly built run (same model and ELBO)."""
        if meta["name"] != self.name:
            raise ValueError(f"checkpoint of run {meta['name']!r} loaded into run {self.name!r}")
        leaves, treedef = jax.tree.flatten(self.state)
        saved = [arrays[f"state/{k:04d}"] for k in range(sum(key.startswith("state/") for key in arrays))]
        layout = [(np.shape(leaf), jnp.result_type(leaf)) for leaf in leaves]
        if [(a.shape, a.dtype) for a in saved] != layout:
            raise ValueError(f"run {self.name!r}: the checkpoint's SVI state does not fit this model and optimizer")
        self.state = jax.tree.unflatten(treedef, [jnp.asarray(a) for a in saved])
        self.data_rng.bit_generator.state = meta["data_rng"]
        self.epoch = meta["epoch"]
        self.history = [dict(h) for h in meta["history"]]


def save_checkpoint(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], path: str | os.PathLike[str]) -> None:
    """Write ``meta`` (JSON, NaN allowed) and ``arrays`` to the ``.npz`` at ``path`` atomically (a
    temporary file in the same folder, then ``os.replace``): an interrupted write leaves the previous
    checkpoint intact."""
    buffer = io.BytesIO()
    np.savez(buffer, **{"meta.json": np.array(json.dumps(meta))}, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(meta, arrays)`` from a checkpoint written by :func:`save_checkpoint` (no pickles)."""
    with np.load(io.BytesIO(Path(path).read_bytes()), allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    return json.loads(arrays.pop("meta.json").item()), arrays


def measure_estimators(
    model: Callable,
    guide: Callable,
    params: Mapping[str, jax.Array],
    elbos: Mapping[str, ELBO],
    x: np.ndarray,
    num_data: int,
    *,
    num_reps: int,
    seed: int,
    confidence: float = 0.95,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Gradient variance of every named ELBO in ``elbos`` (name: its spec) at ``params``.

    Each gets :func:`~ppl_reparam.numpyro.gradient_variance` with ``num_reps`` repetitions on the fixed
    batch ``x`` (so the spread is the estimator's alone, not minibatch noise), under its own seed; pass
    the same ELBO objects every time to reuse the compiled function. Returns ``(rows, comparisons)``
    with the columns of :func:`ppl_reparam.pyro.training.measure_estimators`: a row per estimator and
    group (:class:`~ppl_reparam.stats.GroupStats`; ``per_sample_*`` = total variance x particles), and a
    row per other estimator and group against the reference (``pathwise`` if measured, else ``score``,
    else none): the ratio of per-sample total variances (:func:`~ppl_reparam.stats.variance_ratio` x the
    particles' ratio) and the agreement of the means (:class:`~ppl_reparam.stats.MeanAgreement`; every
    ELBO here estimates the same gradient, so ``same_objective`` is True).
    """
    stats = {}
    for j, (name, elbo) in enumerate(elbos.items()):
        stats[name] = gradient_variance(
            elbo,
            model,
            guide,
            x,
            params=params,
            num_reps=num_reps,
            seed=derived_seed(seed, j),
            confidence=confidence,
            num_data=num_data,
        )
    groups = group_names(next(iter(stats.values())))
    specs = {name: parse_spec(name) for name in stats}
    rows = [
        {"measured": name, **row}
        for name, measured in stats.items()
        for row in group_rows(measured, groups, measured.num_particles, confidence, seed)
    ]
    return rows, comparison_rows(stats, specs, groups, confidence, seed)


def _check_resume(path: Path, config: VAESettings) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The checkpoint at ``path``; a ValueError if there is none, or it is not this backend's, or it was
    made with other settings than ``config`` (``epochs`` aside)."""
    if not path.is_file():
        raise ValueError(f"--resume: no checkpoint {path}; run without --resume to start")
    meta, arrays = load_checkpoint(path)
    if meta.get("format") != FORMAT or meta.get("backend") != "numpyro":
        raise ValueError(f"--resume: {path} is not a checkpoint of this version of the NumPyro backend")
    saved = {k: v for k, v in meta["config"].items() if k != "epochs"}
    wanted = {k: v for k, v in json.loads(json.dumps(config.key())).items() if k != "epochs"}  # tuples as lists
    if saved != wanted:
        diff = {k: (saved.get(k), v) for k, v in wanted.items() if saved.get(k) != v}
        raise ValueError(f"--resume: {path} was made with other settings (checkpoint, now): {diff}")
    return meta, arrays


def _check_config(config: VAESettings) -> dict[str, ELBO]:
    """One ELBO per estimator of ``config``; a ValueError for what this backend does not train."""
    if config.model != "gaussian":
        raise ValueError(f"--model {config.model}: the NumPyro backend trains the gaussian VAE (--backend pyro)")
    return {name: make_elbo(name) for name in config.estimators}


def _images(vae: VAE, runs: Sequence[TrainingRun], x: np.ndarray, seed: int) -> list[tuple[str, np.ndarray]]:
    """Rows for the image grid: test images, each run's reconstructions (Bernoulli means at the
    posterior mean), each run's prior samples (Bernoulli means at z ~ N(0, I))."""
    z = random.normal(random.PRNGKey(seed), (len(x), vae.latent_dim))
    rows = [("test images", np.asarray(x))]
    for run in runs:
        loc, _ = vae.encode(run.params, x)
        rows.append((f"reconstructed ({run.name})", np.asarray(jax.nn.sigmoid(vae.decode(run.params, loc)))))
    for run in runs:
        rows.append((f"prior samples ({run.name})", np.asarray(jax.nn.sigmoid(vae.decode(run.params, z)))))
    return rows


def train_vae_numpyro(
    config: VAESettings, out: str | os.PathLike[str], resume: bool = False, progress: bool | None = None
) -> VAEResult:
    """Train the digits VAE (:mod:`ppl_reparam.models.vae_numpyro`) once per estimator in ``config``,
    as :func:`ppl_reparam.pyro.training.train_vae` does in Pyro.

    Every run starts from the same weights (``SVI.init`` under ``config.seed``) and shuffles with the
    same stream as the Pyro study. Epoch 0 is the untrained model. After every epoch each run's test
    ELBO is estimated (:func:`evaluate_elbo`, ``config.test_particles`` pathwise particles, the same key
    for every run); at epoch 0, every ``config.variance_every`` epochs and the last, every estimator's
    gradient variance is measured at the current parameters of every run (or those of
    ``config.measure_on``) on the first ``batch_size`` training images (:func:`measure_estimators`,
    skipped when ``config.variance_reps`` is 0). ``out/checkpoint.npz`` is written atomically after
    each epoch; ``resume=True`` continues from it, with the same results as an uninterrupted run (a
    ValueError if it is missing or was made with other settings than ``config``, ``epochs`` aside).
    History rows hold ``epoch``, ``estimator``, ``train_elbo``, ``test_elbo``, ``test_elbo_se`` and
    ``seconds`` (the epoch's training and test ELBO; in the first epoch a process trains, it includes
    compiling the step, a few seconds). Unsupported settings (another model, or specs beyond pathwise
    and score with ``:K`` and ``+akl``) raise a ValueError before any training.
    """
    elbos = _check_config(config)
    path = Path(out) / CHECKPOINT
    data = load_dataset(config.data, seed=config.seed)
    train = data.train_probs if config.dynamic_binarization else data.train
    num_data = len(train)
    x_fixed = data.train[: min(config.batch_size, num_data)]
    vae = make_vae(data.dim, config.hidden, config.latent_dim)
    runs = [
        TrainingRun(name, vae.model, vae.guide, elbo, config.lr, config.seed, x_fixed, num_data)
        for name, elbo in elbos.items()
    ]
    measured = [(i, r) for i, r in enumerate(runs) if not config.measure_on or r.name in config.measure_on]
    variance: list[dict[str, Any]] = []
    comparison: list[dict[str, Any]] = []

    def evaluate(run: TrainingRun, epoch: int, train_elbo: float, seconds: float) -> None:
        test, se = evaluate_elbo(
            vae.model, vae.guide, run.params, data.test, config.test_particles, derived_seed(config.seed, epoch)
        )
        run.history.append(
            {
                "epoch": epoch,
                "estimator": run.name,
                "train_elbo": train_elbo,
                "test_elbo": test,
                "test_elbo_se": se,
                "seconds": seconds,
            }
        )

    def measure(epoch: int) -> None:
        for i, run in measured:
            rows, comparisons = measure_estimators(
                vae.model,
                vae.guide,
                run.params,
                elbos,
                x_fixed,
                num_data,
                num_reps=config.variance_reps,
                seed=derived_seed(config.seed, epoch, i),
            )
            variance.extend({"epoch": epoch, "trained_with": run.name, **r} for r in rows)
            comparison.extend({"epoch": epoch, "trained_with": run.name, **c} for c in comparisons)

    def save(epoch: int) -> None:
        meta: dict[str, Any] = {
            "format": FORMAT,
            "backend": "numpyro",
            "config": config.key(),
            "epoch": epoch,
            "variance": variance,
            "comparison": comparison,
            "runs": [],
        }
        arrays = {}
        for i, run in enumerate(runs):
            run_meta, run_arrays = run.state_dict()
            meta["runs"].append(run_meta)
            arrays |= {f"runs/{i}/{k}": v for k, v in run_arrays.items()}
        save_checkpoint(meta, arrays, path)

    if resume:
        meta, arrays = _check_resume(path, config)
        for i, (run, run_meta) in enumerate(zip(runs, meta["runs"])):
            prefix = f"runs/{i}/"
            run.load_state_dict(run_meta, {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)})
        variance, comparison = meta["variance"], meta["comparison"]
    else:
        for run in runs:
            evaluate(run, 0, float("nan"), 0.0)
        if config.variance_reps:
            measure(0)
    start = runs[0].epoch
    if start > config.epochs:
        raise ValueError(f"--resume: {path} is at epoch {start}, past --epochs {config.epochs}")
    if not resume:
        save(0)
    bar = tqdm(
        range(start + 1, config.epochs + 1),
        desc="vae (numpyro)",
        unit="epoch",
        disable=None if progress is None else not progress,
    )
    for epoch in bar:
        for run in runs:
            began = time.perf_counter()
            train_elbo = run.train_epoch(train, config.batch_size, config.dynamic_binarization)
            evaluate(run, epoch, train_elbo, time.perf_counter() - began)
        if config.variance_reps and (epoch % config.variance_every == 0 or epoch == config.epochs):
            measure(epoch)
        save(epoch)
        bar.set_postfix({f"test ELBO {r.name}": f"{r.history[-1]['test_elbo']:.2f}" for r in runs})
    history = [h for epoch in range(config.epochs + 1) for r in runs for h in r.history if h["epoch"] == epoch]
    images = _images(vae, runs, data.test[:IMAGES], config.seed)
    return VAEResult(history, variance, comparison, images, runs, num_data, len(data.test))
