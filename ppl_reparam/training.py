r"""The ``ppl-reparam vae`` study's training loop, written once for both backends (framework-free).

:func:`train_vae` trains one run per estimator spec of a :class:`~ppl_reparam.study.VAEConfig`, every
run from the same initial weights, by minibatch SVI (each step's loss estimates the full-data -ELBO:
Hoffman, Blei, Wang and Paisley, "Stochastic Variational Inference", JMLR 2013). Epoch 0 is the
untrained model. After every epoch it estimates each run's test ELBO (the same seed for every run); at
epoch 0, every ``config.variance_every`` epochs and the last, it measures every estimator's gradient
variance at the current parameters of every run (or of ``config.measure_on``) on one fixed batch, each
measured run's by a :class:`~ppl_reparam.monitor.VarianceMonitor` whose ``variance.csv`` and
``variance.png`` in ``live/<run>/`` follow the measurements during training; after every epoch it
writes a checkpoint atomically, from which ``resume=True`` continues exactly as the uninterrupted run would have.

What touches a framework is the backend's :class:`StudyBackend`: building the runs (from the model
factory it was given, so the library never imports the shipped models), the test ELBO, the monitor, a
measurement, the checkpoint's format and the image rows. Both backends' results have the same rows and columns
(:class:`~ppl_reparam.study.VAEResult`), written by the same code.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from .data import Dataset, load_dataset
from .monitor import VarianceMonitor
from .report import check_output_folder, remove_stale_temporaries
from .study import VAEConfig, VAEResult, derived_seed

LIVE = "live"
"""The folder of ``--out`` where each measured run's :class:`~ppl_reparam.monitor.VarianceMonitor` keeps
its ``variance.csv`` and ``variance.png`` up to date during training (``live/<run>/``)."""

CHECKPOINTS = {"pyro": "checkpoint.pt", "numpyro": "checkpoint.npz"}
"""Each backend's checkpoint file in a run's folder."""

IMAGES = 10
"""Test images shown, with their reconstructions and as many prior samples."""


class Run(Protocol):
    """One model and guide trained with one estimator spec (the backend's ``TrainingRun``)."""

    name: str
    epoch: int
    history: list[dict[str, Any]]

    def train_epoch(self, train: np.ndarray, batch_size: int, dynamic: bool = False) -> float:
        """One pass over ``train`` in shuffled minibatches; the training ELBO per datum."""


class StudyBackend(Protocol):
    """What :func:`train_vae` asks of a backend."""

    name: str
    checkpoint: str
    """The checkpoint's file name in the output folder."""

    def build_runs(self, config: VAEConfig, data: Dataset) -> list[Run]:
        """One fresh run per spec of ``config``, all from the initial weights ``config.seed`` gives."""

    def check(self, runs: Sequence[Run], config: VAEConfig, x: np.ndarray, num_data: int) -> None:
        """Raise the ELBO's own ValueError if a spec cannot apply to the model (before any training)."""

    def test_elbo(self, run: Run, x_test: np.ndarray, config: VAEConfig, seed: int) -> dict[str, float]:
        """``test_elbo`` and ``test_elbo_se`` (and model-specific columns) of ``run`` on ``x_test``."""

    def monitor(self, run: Run, runs: Sequence[Run], config: VAEConfig, out: Path | None) -> VarianceMonitor:
        """The backend's :class:`~ppl_reparam.monitor.VarianceMonitor` of every spec (named by it) at
        ``run``'s parameters, its encoder and decoder as groups, writing its live files into ``out``."""

    def measure(
        self, monitor: VarianceMonitor, run: Run, runs: Sequence[Run], x: np.ndarray, num_data: int, seed: int,
        epoch: int,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """One measurement by ``monitor`` of every spec's gradient variance at ``run``'s parameters on the
        batch ``x``, recorded at ``epoch``: rows and comparisons (:func:`~ppl_reparam.study.study_rows`);
        a spec with a stateful baseline is measured with the baseline of the run of ``runs`` trained with it."""

    def save(self, path: Path, meta: dict[str, Any], runs: Sequence[Run]) -> None:
        """Write ``meta`` (JSON-able) and every run's state to ``path`` atomically."""

    def load(self, path: Path, runs: Sequence[Run]) -> dict[str, Any]:
        """Restore every run's state from ``path``; return the saved ``meta``."""

    def images(self, runs: Sequence[Run], x: np.ndarray, config: VAEConfig) -> list[tuple[str, np.ndarray]]:
        """Image-grid rows: ``x``, each run's reconstructions, each run's prior samples (the same z)."""


FORMAT = 2
"""Version of the checkpoint's ``meta``: the settings, the epoch, the measurements, the backend."""


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    """Settings as JSON gives them back (tuples as lists), ``epochs`` aside: what ``--resume`` compares."""
    return {k: v for k, v in json.loads(json.dumps(config)).items() if k != "epochs"}


def _check_resume(meta: dict[str, Any], path: Path, config: VAEConfig, backend: StudyBackend) -> None:
    if meta.get("backend", "pyro") != backend.name:
        raise ValueError(f"--resume: {path} is a checkpoint of the {meta.get('backend')} backend, not {backend.name}")
    saved, wanted = _settings(VAEConfig.key_of_checkpoint(meta["config"])), _settings(config.key())
    if saved != wanted:
        diff = {k: (saved.get(k), v) for k, v in wanted.items() if saved.get(k) != v}
        raise ValueError(f"--resume: {path} was made with other settings (checkpoint, now): {diff}")


def check_complete(meta: dict[str, Any], runs: Sequence[Run], path: Path) -> None:
    """Refuse a checkpoint whose runs are not exactly the runs being resumed (a backend's ``load``
    calls this before restoring any run)."""
    saved = [r.get("name") for r in meta.get("runs", [])] if isinstance(meta, dict) else None
    if saved != [r.name for r in runs]:
        raise ValueError(
            f"--resume: {path} holds the runs {saved}, not the runs {[r.name for r in runs]} these settings train "
            "(an incomplete or foreign checkpoint); run with --overwrite to start over"
        )


def live_name(run: str) -> str:
    """A folder name for a run's spec: characters other than letters, digits and ``.+=-`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9.+=-]", "_", run)


def clear_live(folder: Path, keep: Sequence[str] = ()) -> None:
    """Remove the live monitor files (and temporaries) an earlier run left in ``folder/live/<run>/``, and
    the folders of runs other than ``keep`` (live names) once empty: a fresh start's live set is its own."""
    live = folder / LIVE
    if not live.is_dir():
        return
    for sub in live.iterdir():
        if sub.is_dir():
            remove_stale_temporaries(sub)
            for name in ("variance.csv", "variance.png", "choices.csv"):
                (sub / name).unlink(missing_ok=True)
            if sub.name not in keep and not any(sub.iterdir()):
                sub.rmdir()
    if not any(live.iterdir()):
        live.rmdir()


def train_vae(
    config: VAEConfig,
    out: str | os.PathLike[str],
    backend: StudyBackend,
    resume: bool = False,
    progress: bool | None = None,
    overwrite: bool = False,
) -> VAEResult:
    """Train ``config``'s VAE once per estimator spec with ``backend`` (see the module docstring).

    ``out/<backend.checkpoint>`` is written after every epoch; ``resume=True`` continues from it (a
    ValueError if it is missing, damaged, incomplete, of the other backend, or made with other settings
    than ``config``, ``epochs`` aside). Without ``resume`` a folder that holds a checkpoint is refused
    unless ``overwrite``, and so is one holding the other backend's checkpoint (``overwrite`` replaces
    it: it is removed once this run's first checkpoint is written). A spec that cannot apply to the
    model is a ValueError before any training.
    ``progress``: False for silence; otherwise a progress bar on a terminal, and elsewhere (logs, CI,
    ``| tee``) a line per epoch and per measurement on stderr.
    """
    folder = check_output_folder(out)
    path = folder / backend.checkpoint
    other = next((folder / name for b, name in CHECKPOINTS.items() if b != backend.name and (folder / name).exists()),
                 None)
    if other is not None and not overwrite:
        raise ValueError(
            f"--out {folder} holds a run of the other backend (its checkpoint {other.name}); give another --out, or "
            "--overwrite to replace it"
        )
    if not resume and path.exists() and not overwrite:
        raise ValueError(
            f"--out {folder} holds a run (its checkpoint {path.name}); pass --resume to continue it, --overwrite "
            "to start over (its results are then replaced), or give another --out"
        )
    for stale in (folder, *(p for p in (folder / LIVE).glob("*") if p.is_dir())):
        remove_stale_temporaries(stale)
    terminal = sys.stderr.isatty()

    def say(line: str) -> None:
        """A progress line: above the bar on a terminal, on its own line elsewhere (logs, CI)."""
        if progress is False:
            return
        if terminal:
            tqdm.write(line, file=sys.stderr)
        else:
            print(f"vae ({backend.name}) {line}", file=sys.stderr, flush=True)
    data = load_dataset(config.data, seed=config.seed)
    train = data.train_probs if config.dynamic_binarization else data.train
    num_data = len(train)
    x_fixed = data.train[: min(config.batch_size, num_data)]
    runs = backend.build_runs(config, data)
    measured = [(i, r) for i, r in enumerate(runs) if not config.measure_on or r.name in config.measure_on]
    monitors = {
        run.name: backend.monitor(run, runs, config, folder / LIVE / live_name(run.name))
        for _, run in measured if config.variance_reps
    }
    variance: list[dict[str, Any]] = []
    comparison: list[dict[str, Any]] = []

    def evaluate(run: Run, epoch: int, train_elbo: float, seconds: float) -> None:
        test = backend.test_elbo(run, data.test, config, derived_seed(config.seed, epoch))
        run.history.append({"epoch": epoch, "estimator": run.name, "train_elbo": train_elbo, **test,
                            "seconds": seconds})

    def measure(epoch: int) -> None:
        for i, run in measured:
            say(f"epoch {epoch}: measuring {len(runs)} estimators' gradients on the parameters of {run.name} "
                f"({config.variance_reps} repetitions each)")
            seed = derived_seed(config.seed, epoch, i)
            rows, comparisons = backend.measure(monitors[run.name], run, runs, x_fixed, num_data, seed, epoch)
            variance.extend({"epoch": epoch, "trained_with": run.name, **r} for r in rows)
            comparison.extend({"epoch": epoch, "trained_with": run.name, **c} for c in comparisons)

    def save(epoch: int) -> None:
        meta = {"format": FORMAT, "backend": backend.name, "config": config.key(), "epoch": epoch,
                "variance": variance, "comparison": comparison}
        backend.save(path, meta, runs)

    if resume:
        if not path.is_file():
            raise ValueError(f"--resume: no checkpoint {path}; run without --resume to start")
        meta = backend.load(path, runs)
        _check_resume(meta, path, config, backend)
        variance, comparison = list(meta["variance"]), list(meta["comparison"])
        for name, monitor in monitors.items():  # the live files go on from the measurements made
            monitor.rows = [{"step": r["epoch"], **{k: v for k, v in r.items() if k not in ("epoch", "trained_with")}}
                            for r in variance if r["trained_with"] == name]
    else:
        backend.check(runs, config, x_fixed, num_data)
        clear_live(folder, [live_name(name) for name in monitors])
        for run in runs:
            evaluate(run, 0, math.nan, 0.0)
        if config.variance_reps:
            measure(0)
    start = runs[0].epoch
    if start > config.epochs:
        raise ValueError(f"--resume: {path} is at epoch {start}, past --epochs {config.epochs}")
    if not resume:
        save(0)
        if other is not None:  # --overwrite of the other backend's run, now that this one has a checkpoint
            other.unlink(missing_ok=True)
    bar = tqdm(range(start + 1, config.epochs + 1), desc=f"vae ({backend.name})", unit="epoch",
               disable=progress is False or not terminal)
    for epoch in bar:
        for run in runs:
            began = time.perf_counter()
            train_elbo = run.train_epoch(train, config.batch_size, config.dynamic_binarization)
            evaluate(run, epoch, train_elbo, time.perf_counter() - began)
        if config.variance_reps and (epoch % config.variance_every == 0 or epoch == config.epochs):
            measure(epoch)
        save(epoch)
        bar.set_postfix({f"test ELBO {r.name}": f"{r.history[-1]['test_elbo']:.2f}" for r in runs})
        if not terminal:
            say(f"epoch {epoch}/{config.epochs}: test ELBO " + ", ".join(
                f"{r.name} {r.history[-1]['test_elbo']:.2f}" for r in runs))
    history = [h for epoch in range(config.epochs + 1) for r in runs for h in r.history if h["epoch"] == epoch]
    images = backend.images(runs, data.test[:IMAGES], config)
    return VAEResult(history, variance, comparison, images, runs, num_data, len(data.test))
