r"""Minibatch SVI training of amortized models in Pyro, with checkpoints that resume bit for bit.

A :class:`TrainingRun` is one model/guide pair trained by Pyro's ``SVI`` with Adam and one ELBO
(an estimator spec's, :func:`make_run_elbo`). It owns its parameters (a Pyro param-store scope, so
several runs with the same parameter names live in one process), its optimizer state, the state of
its ELBO's baseline (moving averages, a learned baseline's network and optimizer) and its own random
streams (a torch RNG state for the ELBO's samples; a NumPy ``Generator`` for shuffling and dynamic
binarization). Its :meth:`~TrainingRun.state_dict` holds all of them, so a run restored from it
continues exactly as the uninterrupted run would have. Models and guides take ``(x, num_data=N)``
with a plate built by :func:`~ppl_reparam.pyro.guides.data_plate`, so each step's loss estimates
the full-data -ELBO.

:func:`evaluate_elbo` estimates the ELBO per datum with many particles, with a standard error over
particles. :func:`save_checkpoint` writes atomically. :func:`measure_estimators` measures every
estimator's gradient on one run's current parameters (a :class:`~ppl_reparam.pyro.VarianceMonitor` of
:func:`study_monitor`, which the study keeps per measured run), aggregated over the encoder's and the decoder's
parameters (:mod:`ppl_reparam.stats`). :class:`VAEStudy` is the backend of the ``ppl-reparam vae``
study (:func:`ppl_reparam.training.train_vae`): it builds its runs with the model factory it is given
(:func:`ppl_reparam.models.pyro_vae`), so this module never imports the shipped models.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from pyro.distributions import constraints
from pyro.infer import ELBO, SVI
from pyro.optim import Adam

from ..data import Dataset, binarize, minibatches
from ..report import atomic_write_checked, read_checked
from ..specs import EstimatorSpec, RelaxedSpec, RunSpec, parse_run_spec
from ..study import GROUPS, VAEConfig, study_rows
from ..training import CHECKPOINTS, check_complete
from .baselines import LearnedBaseline
from .monitor import VarianceMonitor
from .specs import make_elbo
from .variance import gradient_variance, isolated_rng

ModelFactory = Callable[[str, int, Sequence[int], int, "float | None"], tuple[Any, Any]]
"""``(kind, input_dim, hidden, latent_dim, temperature) -> (model, guide)``: a fresh pair of the study's
VAE ``kind`` ("gaussian" or "discrete"), weights from torch's RNG (:func:`ppl_reparam.models.pyro_vae`)."""

MAX_ELEMENTS = 2**23
"""Most elements (particles x rows x pixels) in one vectorized evaluation pass."""
CHECKPOINT = CHECKPOINTS["pyro"]
MAX_PLATE_NESTING = 1
"""The VAEs have one plate, over the data."""


def batch_features(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """A learned baseline's features for the VAEs: the minibatch ``x`` itself, one row per datum."""
    return x


def make_run_elbo(spec: RunSpec | str, features: Callable[..., torch.Tensor] | None = batch_features) -> ELBO:
    """The training ELBO of an estimator spec for models with one plate (the data):
    :func:`ppl_reparam.pyro.specs.make_elbo` with ``max_plate_nesting=1``, except that ``learned``
    baselines get a network of ``features`` (default: the batch ``x``; None: a learned constant) and
    ``relaxed+t=T:K`` is the pathwise ELBO with K particles (the model's temperature is set apart,
    :func:`temperature_of`)."""
    spec = parse_run_spec(spec) if isinstance(spec, str) else spec
    if isinstance(spec, RelaxedSpec):
        return make_elbo(EstimatorSpec("pathwise", spec.particles), max_plate_nesting=MAX_PLATE_NESTING)
    if spec.baseline == "learned" and features is not None:
        return make_elbo(spec, MAX_PLATE_NESTING, baseline=LearnedBaseline(features))
    return make_elbo(spec, max_plate_nesting=MAX_PLATE_NESTING)


def temperature_of(spec: RunSpec | str) -> float | None:
    """The relaxation temperature a spec trains at; None for the discrete (or Gaussian) model."""
    spec = parse_run_spec(spec) if isinstance(spec, str) else spec
    return spec.temperature if isinstance(spec, RelaxedSpec) else None


@contextmanager
def relaxation(model: Any, guide: Any, temperature: float | None) -> Iterator[None]:
    """Run the block with ``model`` and ``guide`` at ``temperature`` (None: discrete), then restore
    theirs. A model without a ``temperature`` attribute (the Gaussian VAE) takes only None."""
    if not hasattr(model, "temperature"):
        if temperature is not None:
            raise ValueError(f"{type(model).__name__} has no discrete latent to relax (temperature {temperature})")
        yield
        return
    if temperature is not None and not temperature > 0:
        raise ValueError(f"the relaxation temperature must be positive, got {temperature}")
    saved = model.temperature, guide.temperature
    model.temperature = guide.temperature = None if temperature is None else float(temperature)
    try:
        yield
    finally:
        model.temperature, guide.temperature = saved


def evaluate_elbo(
    model: Callable, guide: Callable, x: torch.Tensor, num_particles: int = 100, seed: int = 0,
    estimator: str = "pathwise",
) -> tuple[float, float]:
    r"""ELBO per datum of ``x`` and its standard error, from ``num_particles`` particles.

    Each particle ``p`` draws an independent :math:`z_i \sim q(z \mid x_i)` for every row and gives
    :math:`E_p = \frac1n \sum_i [\log p(x_i, z_i) - \log q(z_i \mid x_i)]`; the estimate is the mean
    of the :math:`E_p` and its standard error :math:`\mathrm{sd}(E_p)/\sqrt{P}` (particles are
    i.i.d.; the rows are fixed). Only the value is used, so ``estimator`` matters only in that it must
    apply: ``"score"`` for guides without ``rsample`` (the discrete VAE). Rows are evaluated in chunks
    of at most :data:`MAX_ELEMENTS` elements. Seeded by ``seed`` without touching the caller's RNG state.
    """
    if num_particles < 2:
        raise ValueError(f"num_particles must be at least 2 for a standard error, got {num_particles}")
    elbo = make_elbo(EstimatorSpec(estimator, num_particles), max_plate_nesting=MAX_PLATE_NESTING)
    rows = max(1, MAX_ELEMENTS // (num_particles * int(np.prod(x.shape[1:]))))
    per_particle = torch.zeros(num_particles, dtype=torch.float64)
    with isolated_rng(seed), torch.no_grad():
        for chunk in x.split(rows):
            loss, _ = elbo.particle_losses(model, guide, chunk)
            per_particle -= loss.double()
    per_particle /= len(x)
    return per_particle.mean().item(), (per_particle.std() / num_particles**0.5).item()


@contextmanager
def _torch_rng(state: torch.Tensor) -> Iterator[list[torch.Tensor]]:
    """Run the block on the torch RNG ``state``; yields a one-element list holding the state after it.
    The caller's RNG state is restored."""
    outer = torch.random.get_rng_state()
    torch.random.set_rng_state(state)
    after = [state]
    try:
        yield after
    finally:
        after[0] = torch.random.get_rng_state()
        torch.random.set_rng_state(outer)


class TrainingRun:
    """One model and guide trained with one estimator; see the module docstring.

    :param name: a label (e.g. the estimator's name), used in checkpoints.
    :param model, guide: Pyro callables taking ``(x, num_data=...)``; ``PyroModule`` instances keep
        their parameters in this run's param-store scope.
    :param elbo: the training ELBO, e.g. :func:`make_run_elbo`; the state of its baseline, if any
        (:class:`~ppl_reparam.pyro.MovingAverageBaseline`, :class:`~ppl_reparam.pyro.LearnedBaseline`),
        is part of the run's :meth:`state_dict`.
    :param lr: Adam's learning rate (Kingma and Ba 2015).
    :param seed: seeds the run's torch and NumPy streams.

    Parameters enter the run's scope the first time model and guide run inside :meth:`active`; build
    ``model`` and ``guide`` under the same seed to start several runs from the same weights.
    """

    def __init__(self, name: str, model: Callable, guide: Callable, elbo: ELBO, lr: float, seed: int):
        if not lr > 0:
            raise ValueError(f"the learning rate must be positive, got {lr}")
        self.name = name
        self.model = model
        self.guide = guide
        self.elbo = elbo
        self.optim = Adam({"lr": lr})
        self.svi = SVI(model, guide, self.optim, elbo)
        self.scope: dict[str, dict] = {"params": {}, "constraints": {}}
        with isolated_rng(seed):
            self.torch_rng = torch.random.get_rng_state()
        self.data_rng = np.random.default_rng(seed)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []

    @contextmanager
    def active(self) -> Iterator[None]:
        """Make this run's parameters the param store's contents and its torch RNG the global one."""
        with pyro.get_param_store().scope(self.scope) as scope, _torch_rng(self.torch_rng) as rng:
            yield
        self.scope = scope
        self.torch_rng = rng[0]

    def train_epoch(self, train: np.ndarray, batch_size: int, dynamic: bool = False) -> float:
        """One pass over ``train`` (rows: data) in shuffled minibatches; with ``dynamic`` each pixel
        of ``train`` is a probability and the epoch's data are a fresh Bernoulli draw of it.

        Returns the training ELBO per datum: the steps' full-data estimates, each weighted by its
        share of the rows, over the number of rows (parameters move during the epoch).
        """
        with self.active():
            x = binarize(train, self.data_rng) if dynamic else train
            n = len(x)
            loss = 0.0
            for batch in minibatches(x, batch_size, self.data_rng):
                loss += self.svi.step(torch.from_numpy(batch), num_data=n) * len(batch) / n
        self.epoch += 1
        return -loss / n

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: parameters, Adam state, the baseline's state, RNG states,
        epoch, history. Parameters must be unconstrained (as ``nn.Module`` weights are)."""
        with self.active():
            optim_state = self.optim.get_state()
        for name, constraint in self.scope["constraints"].items():
            if not isinstance(constraint, type(constraints.real)):
                raise ValueError(f"parameter {name!r}: checkpoints hold unconstrained parameters, not {constraint}")
        return {
            "name": self.name,
            "params": {k: v.detach().clone() for k, v in self.scope["params"].items()},
            "optim": optim_state,
            "baseline": baseline_state(self.elbo),
            "torch_rng": self.torch_rng.clone(),
            "data_rng": self.data_rng.bit_generator.state,
            "epoch": self.epoch,
            "history": [dict(h) for h in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s contents into this freshly built run."""
        if state["name"] != self.name:
            raise ValueError(f"checkpoint of run {state['name']!r} loaded into run {self.name!r}")
        params = {k: v.clone().requires_grad_(True) for k, v in state["params"].items()}
        # A PyroModule computes with its own nn.Parameters and only mirrors them into the param
        # store, so values go into those tensors, which then stand in the scope themselves.
        for module in (self.model, self.guide):
            if isinstance(module, torch.nn.Module):
                for name, param in module.named_parameters():
                    if name in params:
                        with torch.no_grad():
                            param.copy_(params[name])
                        params[name] = param
        self.scope = {"params": params, "constraints": {k: constraints.real for k in params}}
        self.optim.set_state(state["optim"])
        load_baseline_state(self.elbo, state.get("baseline"))
        self.torch_rng = state["torch_rng"].clone()
        self.data_rng.bit_generator.state = state["data_rng"]
        self.epoch = state["epoch"]
        self.history = [dict(h) for h in state["history"]]


def baseline_state(elbo: ELBO) -> dict[str, Any] | None:
    """The learned state of ``elbo``'s baseline (None if it has none); see ``Baseline.state_dict``."""
    baseline = getattr(elbo, "baseline", None)
    return None if baseline is None else baseline.state_dict()


def load_baseline_state(elbo: ELBO, state: dict[str, Any] | None) -> None:
    """Restore :func:`baseline_state` into ``elbo``'s (fresh) baseline of the same kind."""
    baseline = getattr(elbo, "baseline", None)
    if baseline is not None and state is not None:
        baseline.load_state_dict(state)
    elif state:
        raise ValueError(f"checkpoint: baseline state {sorted(state)} but the ELBO has no baseline")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """``torch.save`` ``state`` to ``path`` atomically (temporary file in the same folder, then
    ``os.replace``: an interrupted write leaves the previous checkpoint intact), behind its SHA-256
    digest (:func:`~ppl_reparam.report.atomic_write_checked`)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_checked(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors and plain Python values only:
    ``weights_only=True``); a ValueError naming the file if it is missing, damaged (its digest does not
    match) or not a checkpoint of this backend."""
    remedy = "give an intact checkpoint, or start the run over (`ppl-reparam vae --overwrite`)"
    payload = read_checked(path, "ppl-reparam checkpoint", remedy)
    try:
        state = torch.load(io.BytesIO(payload), weights_only=True)
    except Exception as e:  # a digest-valid payload torch cannot read: another version's format
        problem = f"its digest is right but torch cannot read it ({type(e).__name__})"
        raise ValueError(f"{path}: {problem}; {remedy}") from None
    if not isinstance(state, dict) or not {"config", "runs"} <= set(state):
        raise ValueError(f"{path}: not a checkpoint of a `ppl-reparam vae` run (no settings or runs); {remedy}")
    return state


# ------------------------------------------------------------------------------------- the VAE study
def at_temperature(fn: Callable, model: Any, guide: Any, temperature: float | None) -> Callable:
    """``fn`` (``model`` or ``guide``) called with both at ``temperature`` (:func:`relaxation`)."""

    def relaxed(*args: Any, **kwargs: Any) -> Any:
        with relaxation(model, guide, temperature):
            return fn(*args, **kwargs)

    return relaxed


def study_monitor(
    run: TrainingRun,
    estimators: Sequence[RunSpec | str],
    *,
    num_reps: int,
    confidence: float = 0.95,
    elbos: Mapping[str, ELBO] | None = None,
    method: str = "auto",
    out: str | os.PathLike[str] | None = None,
) -> VarianceMonitor:
    """The :class:`~ppl_reparam.pyro.VarianceMonitor` of the VAE study on ``run``'s model and guide:
    every estimator spec in ``estimators``, each with the model and guide at the spec's relaxation
    temperature (:func:`temperature_of`) and with the ELBO of ``elbos`` (spec name: ELBO, e.g. a trained
    run's, whose baseline has learned) or a fresh one (:func:`make_run_elbo`); the encoder's and the
    decoder's parameters as groups; measuring every step it is asked to, with ``num_reps`` repetitions
    and ``method``. ``out``: the monitor's live ``variance.csv`` and ``variance.png``."""
    specs = [parse_run_spec(e) if isinstance(e, str) else e for e in estimators]
    model, guide = run.model, run.guide
    targets = {}
    for spec in specs:
        t = temperature_of(spec)
        targets[str(spec)] = (
            at_temperature(model, model, guide, t), at_temperature(guide, model, guide, t),
            (elbos or {}).get(str(spec)) or make_run_elbo(spec),
        )
    return VarianceMonitor(model, guide, targets, every=1, num_reps=num_reps, groups={g: [g] for g in GROUPS},
                           out=out, confidence=confidence, method=method)


def measure_with(
    monitor: VarianceMonitor, run: TrainingRun, step: int, x: torch.Tensor, num_data: int, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One measurement of ``monitor`` (:func:`study_monitor`) at ``run``'s current parameters on the fixed
    batch ``x`` (so the spread is the estimator's alone, not minibatch noise), recorded at ``step``,
    each spec under ``derived_seed(seed, j)`` (independent draws). Returns ``(rows, comparisons)``: a
    row per spec and group (:func:`~ppl_reparam.study.measured_rows`), and :func:`comparison_rows`."""
    with run.active(), _scratch_scope():
        rows = monitor.measure(step, gradient_variance, x, seed=seed, num_data=num_data)
    return study_rows(monitor, rows, seed)


def measure_estimators(
    run: TrainingRun,
    estimators: Sequence[RunSpec | str],
    x: torch.Tensor,
    num_data: int,
    *,
    num_reps: int,
    seed: int,
    confidence: float = 0.95,
    elbos: Mapping[str, ELBO] | None = None,
    method: str = "auto",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Gradient variance of every estimator spec in ``estimators`` at ``run``'s current parameters:
    :func:`measure_with` of a fresh :func:`study_monitor` (:func:`~ppl_reparam.pyro.gradient_variance`
    with ``method`` and ``num_reps`` repetitions, intervals at level ``confidence``)."""
    monitor = study_monitor(run, estimators, num_reps=num_reps, confidence=confidence, elbos=elbos, method=method)
    return measure_with(monitor, run, 0, x, num_data, seed)


@contextmanager
def _scratch_scope() -> Iterator[None]:
    """A copy of the param store's contents (the same tensors) for the block: parameters a spec's ELBO
    registers there (a RELAX control, measured on another run's parameters) are dropped after it."""
    store = pyro.get_param_store()
    with store.scope({part: dict(values) for part, values in store.get_state().items()}):
        yield


class VAEStudy:
    """The Pyro backend of the ``ppl-reparam vae`` study (:class:`ppl_reparam.training.StudyBackend`).

    :param make_model: builds each run's model and guide (:data:`ModelFactory`).
    """

    name = "pyro"
    checkpoint = CHECKPOINT

    def __init__(self, make_model: ModelFactory):
        self.make_model = make_model

    def build_runs(self, config: VAEConfig, data: Dataset) -> list[TrainingRun]:
        """One run per estimator spec, every one from the same initial weights (built under ``config.seed``)."""
        runs = []
        for spec in config.specs:
            with isolated_rng(config.seed):
                model, guide = self.make_model(
                    config.model, data.dim, config.hidden, config.latent_dim, temperature_of(spec)
                )
            runs.append(TrainingRun(str(spec), model, guide, make_run_elbo(spec), config.lr, config.seed))
        return runs

    def check(self, runs: Sequence[TrainingRun], config: VAEConfig, x: np.ndarray, num_data: int) -> None:
        """One loss of each spec (trained and measured alike) on two rows, with fresh ELBOs and the RNG
        state left as it was: a spec that cannot apply raises the ELBO's own message (e.g. a pathwise
        spec on the discrete model names the site)."""
        run = runs[0]
        for spec in config.specs:
            relaxed = relaxation(run.model, run.guide, temperature_of(spec))
            with run.active(), _scratch_scope(), isolated_rng(0), relaxed:
                make_run_elbo(spec).loss(run.model, run.guide, torch.from_numpy(x[:2]), num_data=num_data)

    def test_elbo(self, run: TrainingRun, x_test: np.ndarray, config: VAEConfig, seed: int) -> dict[str, float]:
        """The test ELBO (same seed for every run): of the discrete model for the discrete VAE, whatever
        temperature the run trains at; relaxed runs also get their own relaxed objective."""
        x = torch.from_numpy(x_test)
        discrete = config.model == "discrete"
        with run.active():
            with relaxation(run.model, run.guide, None):
                test, se = evaluate_elbo(run.model, run.guide, x, config.test_particles, seed,
                                         "score" if discrete else "pathwise")
            row = {"test_elbo": test, "test_elbo_se": se}
            if discrete:
                relaxed = se_relaxed = math.nan
                if temperature_of(run.name) is not None:
                    relaxed, se_relaxed = evaluate_elbo(run.model, run.guide, x, config.test_particles, seed)
                row |= {"relaxed_test_elbo": relaxed, "relaxed_test_elbo_se": se_relaxed}
        return row

    def monitor(
        self, run: TrainingRun, runs: Sequence[TrainingRun], config: VAEConfig, out: Path | None
    ) -> VarianceMonitor:
        """:func:`study_monitor` of every spec at ``run``'s parameters, each spec with the ELBO of the run
        trained with it (its baseline as trained so far)."""
        return study_monitor(run, config.specs, num_reps=config.variance_reps, elbos={r.name: r.elbo for r in runs},
                             out=out)

    def measure(
        self, monitor: VarianceMonitor, run: TrainingRun, runs: Sequence[TrainingRun], x: np.ndarray,
        num_data: int, seed: int, epoch: int,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """:func:`measure_with` ``monitor`` at ``run``'s parameters, recorded at ``epoch``."""
        return measure_with(monitor, run, epoch, torch.from_numpy(x), num_data, seed)

    def save(self, path: Path, meta: dict[str, Any], runs: Sequence[TrainingRun]) -> None:
        save_checkpoint({**meta, "runs": [r.state_dict() for r in runs]}, path)

    def load(self, path: Path, runs: Sequence[TrainingRun]) -> dict[str, Any]:
        state = load_checkpoint(path)
        if state.get("backend", "pyro") == self.name:  # else train_vae names the backend it holds
            check_complete(state, runs, path)
            for run, run_state in zip(runs, state["runs"]):
                run.load_state_dict(run_state)
        return state

    def images(self, runs: Sequence[TrainingRun], x: np.ndarray, config: VAEConfig) -> list[tuple[str, np.ndarray]]:
        """Rows for the image grid: test images, each run's reconstructions (Bernoulli means at the
        posterior mean, or for binary latents at the posterior mode), each run's prior samples (Bernoulli
        means at z from the prior; the same z for every run)."""
        x = torch.from_numpy(x)
        with isolated_rng(config.seed):
            if config.model == "discrete":
                z = torch.bernoulli(torch.full((len(x), config.latent_dim), 0.5))
            else:
                z = torch.randn(len(x), config.latent_dim)
        rows = [("test images", x.numpy())]
        with torch.no_grad():
            for run in runs:
                with run.active():
                    code = run.guide.encode(x)  # (loc, scale) of a Gaussian guide, logits of a Bernoulli one
                    code = code[0] if isinstance(code, tuple) else (code > 0).to(x.dtype)
                    rows.append((f"reconstructed ({run.name})", torch.sigmoid(run.model.decoder(code)).numpy()))
            for run in runs:
                with run.active():
                    rows.append((f"prior samples ({run.name})", torch.sigmoid(run.model.decoder(z)).numpy()))
        return rows
