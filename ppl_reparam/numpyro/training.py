r"""Minibatch SVI training of amortized models in NumPyro, with checkpoints that resume bit for bit:
the NumPyro backend of the ``ppl-reparam vae`` study (:func:`ppl_reparam.training.train_vae`).

A :class:`TrainingRun` is one model/guide pair trained by :class:`numpyro.infer.SVI` with Adam (Kingma
and Ba 2015) and the ELBO of one estimator spec (:func:`make_run_elbo`: every spec of
:mod:`ppl_reparam.specs`, baselines, ``+stl`` and the IWAE bounds included), one ``jax.jit``-compiled
``svi.update`` per minibatch shape. Its state is NumPyro's ``SVIState`` (parameters, Adam's moments
and step, the PRNG key of the ELBO's draws, and a stateful baseline's state as NumPyro mutable state:
:meth:`~ppl_reparam.numpyro.baselines.Baseline.with_state`) and a NumPy ``Generator`` for shuffling and
dynamic binarization, the same stream the Pyro backend draws from, so both backends see the same
minibatches for a given seed. Models and guides take ``(x, num_data=N)`` and scale the plate by N/B.

:func:`evaluate_elbo` estimates the ELBO per datum with many particles and a standard error over
particles; :func:`measure_estimators` measures each estimator's gradient at a run's current
parameters (a :class:`~ppl_reparam.numpyro.VarianceMonitor` of :func:`study_monitor`, which the study
keeps per measured run), aggregated over the encoder's and the
decoder's parameters (:mod:`ppl_reparam.stats`). :class:`VAEStudy` builds its runs with the model
factory it is given (:func:`ppl_reparam.models.numpyro_vae`), so this module never imports the shipped
models; for the discrete VAE it builds each run's model at the run's relaxation temperature (a
temperature is a property of the model object in JAX, and all temperatures share the parameter names).
For ``ppl-reparam compare``: :func:`warm_up_baseline` lets a stateful baseline learn at fixed
parameters, :func:`compiled_gradient_variance` times a measurement without its compilation.

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
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax, random
from numpyro.handlers import seed as seed_handler
from numpyro.handlers import substitute, trace
from numpyro.infer import SVI
from numpyro.infer.elbo import ELBO
from numpyro.optim import Adam

from ..data import Dataset, binarize, minibatches
from ..report import atomic_write_checked, read_checked
from ..specs import EstimatorSpec, RelaxedSpec, RunSpec, parse_run_spec
from ..stats import GradientStats
from ..study import GROUPS, VAEConfig, study_rows
from ..training import CHECKPOINTS, check_complete
from .baselines import LearnedBaseline
from .monitor import VarianceMonitor
from .relax import is_control
from .specs import make_elbo
from .variance import gradient_variance

__all__ = [
    "CHECKPOINT",
    "TrainingRun",
    "VAEStudy",
    "check_applies",
    "compiled_gradient_variance",
    "evaluate_elbo",
    "load_checkpoint",
    "make_run_elbo",
    "measure_estimators",
    "measure_with",
    "run_arrays",
    "save_checkpoint",
    "study_monitor",
    "warm_up_baseline",
]

MAX_ELEMENTS = 2**23
"""Most elements (particles x rows x pixels) in one vectorized evaluation pass."""
CHECKPOINT = CHECKPOINTS["numpyro"]

ModelFactory = Callable[[str, int, Sequence[int], int, "float | None"], Any]
"""``(kind, input_dim, hidden, latent_dim, temperature) -> vae``: the study's VAE ``kind`` ("gaussian" or
"discrete"), an object with ``model``, ``guide`` (callables of ``(x, num_data=None)``), ``encode(params,
x)`` and ``decode(params, z)`` (:func:`ppl_reparam.models.numpyro_vae`)."""


def batch_features(x: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
    """A learned baseline's features for the VAEs: the minibatch ``x`` itself, one row per datum."""
    return x


def make_run_elbo(spec: RunSpec | str) -> ELBO:
    """The training ELBO of an estimator spec: :func:`ppl_reparam.numpyro.specs.make_elbo`, except that
    ``learned`` baselines get a network of the batch ``x`` (:func:`batch_features`) and ``relaxed+t=T:K``
    is the pathwise ELBO with K particles. The same spec gives the same object, so that what ``jax.jit``
    compiled with it as a static argument (the SVI update, :func:`~ppl_reparam.numpyro.gradient_variance`)
    is reused."""
    return _run_elbo(parse_run_spec(spec) if isinstance(spec, str) else spec)


@lru_cache(maxsize=64)
def _run_elbo(spec: RunSpec) -> ELBO:
    if isinstance(spec, RelaxedSpec):
        return make_elbo(f"pathwise:{spec.particles}")
    if spec.baseline == "learned":
        return make_elbo(spec, baseline=LearnedBaseline(batch_features))
    return make_elbo(spec)


def temperature_of(spec: RunSpec | str) -> float | None:
    """The relaxation temperature a spec trains at; None for the discrete (or Gaussian) model."""
    spec = parse_run_spec(spec) if isinstance(spec, str) else spec
    return spec.temperature if isinstance(spec, RelaxedSpec) else None


@lru_cache(maxsize=64)
def with_elbo_state(elbo: ELBO, guide: Callable) -> Callable:
    """``guide`` declaring what ``elbo`` keeps in NumPyro's state: a stateful baseline's state (a mutable
    site that SVI threads through ``svi_state.mutable_state``), a RelaxELBO's controls (params,
    :meth:`~ppl_reparam.numpyro.RelaxELBO.with_controls`); the same object for the same pair, so that
    compiled updates are shared."""
    baseline = getattr(elbo, "baseline", None)
    if baseline is not None:
        guide = baseline.with_state(guide)
    return elbo.with_controls(guide) if getattr(elbo, "estimator", None) == "relax" else guide


@lru_cache(maxsize=64)
def _svi(model: Callable, guide: Callable, elbo: ELBO, lr: float) -> tuple[SVI, Callable]:
    """``SVI`` with Adam(``lr``) and its ``jax.jit``-compiled ``update`` (``num_data`` static), shared by
    runs of equal model, guide, ELBO and rate (state lives in ``SVIState``, not in these objects)."""
    svi = SVI(model, guide, Adam(lr), elbo)
    return svi, jax.jit(svi.update, static_argnames="num_data")


@partial(jax.jit, static_argnames=("model", "guide", "num_particles", "estimator"))
def _particle_elbos(
    key: jax.Array,
    params: dict[str, jax.Array],
    x: jax.Array,
    *,
    model: Callable,
    guide: Callable,
    num_particles: int,
    estimator: str,
) -> jax.Array:
    r""":math:`\sum_i [\log p(x_i, z_i) - \log q(z_i \mid x_i)]` over the rows of ``x``, one value per
    particle, each particle an independent draw :math:`z_i \sim q(z \mid x_i)` for every row."""
    elbo = make_elbo(EstimatorSpec(estimator, num_particles))
    losses, _ = elbo.particle_losses(key, params, model, guide, x)
    return -losses


def evaluate_elbo(
    model: Callable,
    guide: Callable,
    params: Mapping[str, jax.Array],
    x: np.ndarray,
    num_particles: int = 100,
    seed: int = 0,
    estimator: str = "pathwise",
) -> tuple[float, float]:
    r"""ELBO per datum of ``x`` at ``params`` and its standard error, from ``num_particles`` particles
    (the estimator of :func:`ppl_reparam.pyro.training.evaluate_elbo`).

    Particle ``p`` gives :math:`E_p = \frac1n \sum_i [\log p(x_i, z_i) - \log q(z_i \mid x_i)]`; the
    estimate is the mean of the :math:`E_p` and its standard error :math:`\mathrm{sd}(E_p)/\sqrt{P}`
    (particles are i.i.d.; the rows are fixed). Only the value is used, so ``estimator`` matters only
    in that it must apply: ``"score"`` for guides without a reparameterized sampler (the discrete VAE,
    where ``"pathwise"`` raises naming the site). Rows are evaluated in chunks of at most
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
            key, dict(params), x[start : start + rows], model=model, guide=guide, num_particles=num_particles,
            estimator=estimator,
        )
        per_particle += np.asarray(chunk, dtype=np.float64)
    per_particle /= len(x)
    return float(per_particle.mean()), float(per_particle.std(ddof=1) / math.sqrt(num_particles))


class TrainingRun:
    """One model and guide trained with one ELBO; see the module docstring.

    :param name: a label (the estimator spec), used in rows and checkpoints.
    :param model, guide: NumPyro callables taking ``(x, num_data=...)``; the guide declares the state of
        the ELBO's baseline if that has one, a RelaxELBO's controls (:func:`with_elbo_state`).
    :param elbo: the training ELBO, e.g. :func:`make_run_elbo`.
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
        self.guide = with_elbo_state(elbo, guide)
        self.elbo = elbo
        self.svi, self._update = _svi(model, self.guide, elbo, float(lr))
        self.state = self.svi.init(random.PRNGKey(seed), x_init, num_data=num_data)
        self.data_rng = np.random.default_rng(seed)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []

    @property
    def params(self) -> dict[str, jax.Array]:
        """Current (constrained) parameter values."""
        return self.svi.get_params(self.state)

    @property
    def trained_guide(self) -> Callable:
        """The guide with the baseline's state and RELAX's controls as trained so far (what a measurement
        of this run's ELBO uses, at this run's parameters or another's)."""
        data = dict(self.state.mutable_state or {}) | {k: v for k, v in self.params.items() if is_control(k)}
        return self.guide if not data else substitute(self.guide, data=data)

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
        # A weakly typed scalar (Adam's step count) comes back weak, from a Python number: the compiled
        # update is keyed by its arguments' types, so a strong one would compile it all again.
        restored = [
            jnp.asarray(a.item() if getattr(leaf, "weak_type", False) and a.ndim == 0 else a)
            for leaf, a in zip(leaves, saved)
        ]
        self.state = jax.tree.unflatten(treedef, restored)
        self.data_rng.bit_generator.state = meta["data_rng"]
        self.epoch = meta["epoch"]
        self.history = [dict(h) for h in meta["history"]]


def save_checkpoint(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], path: str | os.PathLike[str]) -> None:
    """Write ``meta`` (JSON, NaN allowed) and ``arrays`` to the ``.npz`` at ``path`` atomically (a
    temporary file in the same folder, then ``os.replace``: an interrupted write leaves the previous
    checkpoint intact), behind its SHA-256 digest (:func:`~ppl_reparam.report.atomic_write_checked`)."""
    buffer = io.BytesIO()
    np.savez(buffer, **{"meta.json": np.array(json.dumps(meta))}, **arrays)
    atomic_write_checked(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(meta, arrays)`` from a checkpoint written by :func:`save_checkpoint` (no pickles); a ValueError
    naming the file if it is missing, damaged (its digest does not match) or not a checkpoint of a run."""
    remedy = "give an intact checkpoint, or start the run over (`ppl-reparam vae --overwrite`)"
    payload = read_checked(path, "ppl-reparam checkpoint", remedy)
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        meta = json.loads(arrays.pop("meta.json").item())
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: its digest is right but it is not a checkpoint of a run ({e}); {remedy}") from None
    if not isinstance(meta, dict) or not {"config", "runs"} <= set(meta):
        raise ValueError(f"{path}: not a checkpoint of a `ppl-reparam vae` run (no settings or runs); {remedy}")
    return meta, arrays


def study_monitor(
    targets: Mapping[str, tuple[Callable, Callable, ELBO]], *, num_reps: int, confidence: float = 0.95,
    out: str | os.PathLike[str] | None = None,
) -> VarianceMonitor:
    """The :class:`~ppl_reparam.numpyro.VarianceMonitor` of the VAE study: every named spec in
    ``targets`` (name: its spec) on its own ``(model, guide, elbo)``, the encoder's and the decoder's
    parameters as groups, measuring every step it is asked to with ``num_reps`` repetitions.

    ``targets[name]`` is ``(model, guide, elbo)``: the model and guide at the spec's relaxation
    temperature (they share the parameter names, so the same ``params`` serve all), the guide carrying
    the state of a stateful baseline where it has one (:attr:`TrainingRun.trained_guide`, or
    :func:`with_elbo_state` for the initial state), and the spec's ELBO; the same ELBO objects are
    measured every time, so each compiles once. ``out``: the monitor's live ``variance.csv`` and
    ``variance.png``.
    """
    model, guide, _ = next(iter(targets.values()))
    return VarianceMonitor(model, guide, dict(targets), every=1, num_reps=num_reps,
                           groups={g: [g] for g in GROUPS}, out=out, confidence=confidence)


def measure_with(
    monitor: VarianceMonitor, params: Mapping[str, jax.Array], step: int, x: np.ndarray, num_data: int, seed: int,
    targets: Mapping[str, tuple[Callable, Callable, ELBO]] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One measurement of ``monitor`` (:func:`study_monitor`) at ``params`` on the fixed batch ``x`` (so
    the spread is the estimator's alone, not minibatch noise), recorded at ``step``, each spec under
    ``derived_seed(seed, j)``; ``targets`` replaces the monitor's for this measurement (guides carrying
    baseline states as trained so far). Returns ``(rows, comparisons)`` with the columns of
    :func:`ppl_reparam.pyro.training.measure_with` (:func:`~ppl_reparam.study.study_rows`)."""
    rows = monitor.measure(step, gradient_variance, x, params=params, seed=seed, targets=targets, num_data=num_data)
    return study_rows(monitor, rows, seed)


def measure_estimators(
    targets: Mapping[str, tuple[Callable, Callable, ELBO]],
    params: Mapping[str, jax.Array],
    x: np.ndarray,
    num_data: int,
    *,
    num_reps: int,
    seed: int,
    confidence: float = 0.95,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Gradient variance of every named spec in ``targets`` (name: its spec) at the same ``params``:
    :func:`measure_with` of a fresh :func:`study_monitor` (:func:`~ppl_reparam.numpyro.gradient_variance`
    with ``num_reps`` repetitions, intervals at level ``confidence``)."""
    return measure_with(study_monitor(targets, num_reps=num_reps, confidence=confidence), params, 0, x, num_data,
                        seed)


def check_applies(
    elbo: ELBO, model: Callable, guide: Callable, params: Mapping[str, jax.Array], *args: Any, **kwargs: Any
) -> None:
    """Raise the ELBO's own error if it cannot apply to ``model`` and ``guide`` (e.g. a pathwise
    estimator at a site without a reparameterized sampler names the site): one loss traced abstractly
    (``jax.eval_shape``: nothing is computed or compiled), array arguments traced, the others fixed."""

    def loss(params: dict[str, jax.Array], args: tuple) -> jax.Array:
        return elbo.loss(random.PRNGKey(0), params, model, guide, *args, **kwargs)

    jax.eval_shape(loss, dict(params), args)


def warm_up_baseline(
    elbo: ELBO, model: Callable, guide: Callable, params: Mapping[str, jax.Array], *args: Any, steps: int, seed: int,
    **kwargs: Any,
) -> Callable:
    """``guide`` declaring the state of ``elbo``'s baseline (:func:`with_elbo_state`), that state
    learnt by ``steps`` training-free updates at the fixed ``params`` when the baseline is stateful.

    Each update is a training step of the baseline alone: ``elbo.loss_with_mutable_state`` on the
    arguments (a fresh draw under a key split from ``seed``) returns the state after learning from
    that draw's costs, as in :meth:`numpyro.infer.SVI.update`, while the parameters stay where they are
    (they take no optimizer step). The state starts where a new run's does; the loop runs as one
    compiled ``lax.scan``. The NumPyro twin of ``ppl-reparam compare``'s warm-up in Pyro (``loss_and_grads``
    under ``no_grad``). Returns the guide with the learnt state substituted (what a measurement of the
    baseline's estimator uses).
    """
    stateful = with_elbo_state(elbo, guide)
    baseline = getattr(elbo, "baseline", None)
    if baseline is None or not baseline.stateful or steps < 1:
        return stateful
    key, init_key = random.split(random.PRNGKey(seed))
    params = dict(params)
    init = trace(substitute(seed_handler(stateful, init_key), data=params)).get_trace(*args, **kwargs)
    state = {name: site["value"] for name, site in init.items() if site["type"] == "mutable"}

    def update(state: dict, key: jax.Array) -> tuple[dict, None]:
        out = elbo.loss_with_mutable_state(key, {**params, **state}, model, stateful, *args, **kwargs)
        return out["mutable_state"], None

    state, _ = jax.jit(lambda state, keys: lax.scan(update, state, keys))(state, random.split(key, steps))
    return substitute(stateful, data=state)


def compiled_gradient_variance(
    elbo: ELBO, model: Callable, guide: Callable, *args: Any, **kwargs: Any
) -> GradientStats:
    """:func:`~ppl_reparam.numpyro.gradient_variance` (same arguments) whose ``seconds`` leave out
    compilation: a first call compiles and is dropped; the second, on the same draws, runs the
    compiled function and is the result (its seconds: every repetition in one ``vmap`` pass)."""
    gradient_variance(elbo, model, guide, *args, **kwargs)
    return gradient_variance(elbo, model, guide, *args, **kwargs)


def run_arrays(arrays: Mapping[str, np.ndarray], index: int) -> dict[str, np.ndarray]:
    """Run ``index``'s arrays of a :class:`VAEStudy` checkpoint, keyed as :meth:`TrainingRun.state_dict`
    writes them."""
    prefix = f"runs/{index}/"
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


class VAEStudy:
    """The NumPyro backend of the ``ppl-reparam vae`` study (:class:`ppl_reparam.training.StudyBackend`).

    Each run trains the VAE the factory builds at its spec's temperature (a relaxed spec: the relaxed
    model; every other spec: the discrete or Gaussian one). For the discrete model, as in the Pyro
    backend, every run's test ELBO is the *discrete* ELBO (a score-function estimate of its value:
    the Bernoulli guide has no reparameterized sampler), and relaxed runs also report their own relaxed
    objective; each spec is measured at its own temperature, on the parameters of the run measured
    (the objects of every temperature share their parameter names).

    :param make_model: builds the study's VAE (:data:`ModelFactory`).
    """

    name = "numpyro"
    checkpoint = CHECKPOINT

    def __init__(self, make_model: ModelFactory):
        self.make_model = make_model
        self.vaes: dict[str, Any] = {}
        """Each run's VAE (its networks' ``encode`` and ``decode``), by run name."""
        self.model_at: Callable[[float | None], Any] | None = None
        """The study's VAE at a temperature (None: discrete, or the Gaussian VAE), once runs are built."""

    def build_runs(self, config: VAEConfig, data: Dataset) -> list[TrainingRun]:
        """One run per estimator spec, every one from the same initial weights (``SVI.init`` under
        ``config.seed``; the parameters depend neither on the ELBO nor on the temperature)."""
        x = data.train[: min(config.batch_size, len(data.train))]
        self.model_at = partial(self.make_model, config.model, data.dim, config.hidden, config.latent_dim)
        runs = []
        for spec in config.specs:
            vae = self.vaes[str(spec)] = self.model_at(temperature_of(spec))
            elbo = make_run_elbo(spec)
            runs.append(TrainingRun(str(spec), vae.model, vae.guide, elbo, config.lr, config.seed, x, len(data.train)))
        return runs

    def check(self, runs: Sequence[TrainingRun], config: VAEConfig, x: np.ndarray, num_data: int) -> None:
        """One loss of each spec (trained and measured alike, at its temperature) on two rows
        (:func:`check_applies`): a spec that cannot apply raises the ELBO's own message (e.g. a pathwise
        spec on the discrete model names the site)."""
        for run in runs:
            check_applies(run.elbo, run.model, run.trained_guide, run.params, x[:2], num_data=num_data)

    def test_elbo(self, run: TrainingRun, x_test: np.ndarray, config: VAEConfig, seed: int) -> dict[str, float]:
        """The test ELBO (the same key for every run): of the discrete model for the discrete VAE (score
        function particles), whatever temperature the run trains at, and relaxed runs also get their own
        relaxed objective (pathwise particles, NaN for the others); of the Gaussian VAE by pathwise particles."""
        discrete = config.model == "discrete"
        vae = self.model_at(None)
        test, se = evaluate_elbo(vae.model, vae.guide, run.params, x_test, config.test_particles, seed,
                                 "score" if discrete else "pathwise")
        row = {"test_elbo": test, "test_elbo_se": se}
        if discrete:
            relaxed = se_relaxed = math.nan
            if temperature_of(run.name) is not None:
                own = self.vaes[run.name]
                relaxed, se_relaxed = evaluate_elbo(own.model, own.guide, run.params, x_test, config.test_particles,
                                                    seed)
            row |= {"relaxed_test_elbo": relaxed, "relaxed_test_elbo_se": se_relaxed}
        return row

    def monitor(
        self, run: TrainingRun, runs: Sequence[TrainingRun], config: VAEConfig, out: Path | None
    ) -> VarianceMonitor:
        """:func:`study_monitor` of every spec, each with the model, guide and ELBO of the run trained
        with it (its temperature)."""
        return study_monitor({r.name: (r.model, r.trained_guide, r.elbo) for r in runs},
                             num_reps=config.variance_reps, out=out)

    def measure(
        self, monitor: VarianceMonitor, run: TrainingRun, runs: Sequence[TrainingRun], x: np.ndarray,
        num_data: int, seed: int, epoch: int,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """:func:`measure_with` ``monitor`` at ``run``'s parameters, recorded at ``epoch``, each spec with
        the guide of the run trained with it as trained so far (its baseline's state)."""
        targets = {r.name: (r.model, r.trained_guide, r.elbo) for r in runs}
        return measure_with(monitor, run.params, epoch, x, num_data, seed, targets)

    def save(self, path: Path, meta: dict[str, Any], runs: Sequence[TrainingRun]) -> None:
        meta, arrays = dict(meta, runs=[]), {}
        for i, run in enumerate(runs):
            run_meta, run_arrays = run.state_dict()
            meta["runs"].append(run_meta)
            arrays |= {f"runs/{i}/{k}": v for k, v in run_arrays.items()}
        save_checkpoint(meta, arrays, path)

    def load(self, path: Path, runs: Sequence[TrainingRun]) -> dict[str, Any]:
        meta, arrays = load_checkpoint(path)
        if meta.get("backend") != self.name:
            return meta  # train_vae names the backend it holds
        check_complete(meta, runs, path)
        for i, (run, run_meta) in enumerate(zip(runs, meta["runs"])):
            run.load_state_dict(run_meta, run_arrays(arrays, i))
        return meta

    def images(self, runs: Sequence[TrainingRun], x: np.ndarray, config: VAEConfig) -> list[tuple[str, np.ndarray]]:
        """Rows for the image grid: test images, each run's reconstructions (Bernoulli means at the
        posterior mean, or for binary latents at the posterior mode), each run's prior samples (Bernoulli
        means at z from the prior: N(0, I), or Bernoulli(1/2) bits; the same z for every run)."""
        key, shape = random.PRNGKey(config.seed), (len(x), config.latent_dim)
        discrete = config.model == "discrete"
        z = random.bernoulli(key, 0.5, shape).astype(x.dtype) if discrete else random.normal(key, shape)
        rows = [("test images", np.asarray(x))]
        for run in runs:
            vae = self.vaes[run.name]
            code = vae.encode(run.params, x)
            code = (code > 0).astype(x.dtype) if discrete else code[0]  # the bits' mode, or the Gaussian's loc
            rows.append((f"reconstructed ({run.name})", np.asarray(jax.nn.sigmoid(vae.decode(run.params, code)))))
        for run in runs:
            decoded = self.vaes[run.name].decode(run.params, z)
            rows.append((f"prior samples ({run.name})", np.asarray(jax.nn.sigmoid(decoded))))
        return rows
